"""``hybridsearch finetune``: fine-tune a Mamba LM (+ a PEFT config) on LLM-Adapters records with the reference
recipe, save the adapters (or the full checkpoint) and optionally evaluate on the test tasks."""

from __future__ import annotations

import argparse

NAME = "finetune"
HELP = ("fine-tune a Mamba LM with a PEFT config (omit --peft: full fine-tuning) on LLM-Adapters records, save "
        "the adapters, optionally --eval on the test tasks")


def configure(p: argparse.ArgumentParser) -> None:
    from ..lm.finetune import add_arguments

    add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..lm.finetune import run as finetune

    return finetune(args)
