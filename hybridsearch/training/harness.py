"""lm-evaluation-harness for our language models: the registration, the bundled local tasks, an in-process run.

lm-eval is optional (``pip install 'hybridsearch[harness]'``) and imported only inside these functions.

* ``register()`` adds the model name ``hybridsearch`` (class ``harness_lm.HybridSearchLM``) to lm-eval's
  registry. lm-eval 0.4.13 reads no entry points and imports no outside module, so its own ``lm_eval`` command
  cannot know the name; ``python -m hybridsearch.training.harness ARGS`` is that same command with the name
  registered and the bundled tasks on ``--include_path``.
* ``TASKS_DIR`` holds lm-eval task YAMLs over the bundled commonsense files (or any LLM-Adapters root given as
  metadata ``commonsense_root``), read through ``commonsense_docs`` with nothing downloaded:
  ``commonsense_proxy_<task>`` in the LLM-Adapters prompt our likelihood evaluator scores (so the harness's
  ``acc`` equals its accuracy) and ``commonsense_proxy_<task>_lmeval`` in the prompt of lm-eval's own task of
  that name; groups ``commonsense_proxy`` and ``commonsense_proxy_lmeval``.
* ``run_tasks`` runs ``lm_eval.simple_evaluate`` in-process; ``summarize`` flattens its results.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import commonsense as cs
from ..errors import ConfigError, DataError, HybridSearchError

MODEL_NAME = "hybridsearch"
MODEL_CLASS = "hybridsearch.training.harness_lm:HybridSearchLM"
TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'hybridsearch[harness]'"
_OPTION = re.compile(r"(?:Solution|Ending|Option|Answer)\d+:\s*(.*)", re.DOTALL)


def lm_eval_version() -> str:
    """The installed lm-eval version; a one-line install hint (ConfigError) without it."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return str(getattr(lm_eval, "__version__", "?"))


def register() -> None:
    """Make ``--model hybridsearch`` known to lm-eval in this process (idempotent)."""
    lm_eval_version()
    import lm_eval.models  # noqa: F401  (its own names first: get_model() fills an empty registry only)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_CLASS)  # a lazy path: the class loads on first use


def harness_model(**model_args: Any) -> Any:
    """A ``HybridSearchLM`` (``pretrained``, ``adapters``, ``tokenizer``, ``device``, ``batch_size``, ...)."""
    lm_eval_version()
    from .harness_lm import HybridSearchLM

    return HybridSearchLM(**model_args)


# ------------------------------------------------------------------------------------------- local tasks


def commonsense_doc(record: cs.CommonsenseRecord, task: str, where: str = "") -> dict[str, Any]:
    """One LLM-Adapters record as a harness document: ``prompt`` / ``answers`` / ``label`` (the Alpaca prompt and
    "the correct answer is <label>" for every label, as our likelihood evaluator scores them) and ``question`` /
    ``options`` / ``option_label`` (the question and option texts parsed from the instruction, for lm-eval's
    own prompt of the task)."""
    name = cs.canonical_task(task)
    labels = cs.parse_label_set(record.instruction) or tuple(cs.ANSWER_PATTERNS[name].split("|"))
    if record.answer not in labels:
        raise DataError(f"{where}: answer {record.answer!r} not among the labels {'/'.join(labels)}")
    parts = [p.strip() for p in record.instruction.split("\n\n")]
    question = parts[0].partition(": ")[2].strip() or parts[0]
    options = [m.group(1).strip() for p in parts[1:] if (m := _OPTION.fullmatch(p))]
    label = labels.index(record.answer)
    if name == "boolq":  # lm-eval's boolq: " no" / " yes" after "Question: ...\nAnswer:"
        options, option_label = ["no", "yes"], int(record.answer == "true")
    else:
        if len(options) != len(labels):
            raise DataError(f"{where}: {len(options)} options in the instruction for {len(labels)} labels")
        option_label = label
    if name == "winogrande":  # the sentence up to the blank, completed by each option
        question = question.split("_")[0].rstrip()
    return {"prompt": cs.build_prompt(record.instruction, record.input),
            "answers": [cs.ANSWER_TEMPLATE.format(label=lab) for lab in labels], "label": label,
            "question": question, "options": options, "option_label": option_label}


def commonsense_docs(commonsense_task: str, commonsense_root: str | os.PathLike[str] | None = None,
                     **_: Any) -> Any:
    """The task YAMLs' ``custom_dataset``: ``{"test": Dataset}`` from ``<root>/dataset/<task>/test.json``
    (default root: the bundled proxy set). lm-eval passes every metadata and model_args key; only these two
    matter."""
    import datasets

    root = Path(commonsense_root) if commonsense_root else cs.BUNDLED_ROOT
    path = cs.eval_file(root, commonsense_task)
    docs = [commonsense_doc(r, commonsense_task, f"{path}: record {i}")
            for i, r in enumerate(cs.load_records(path))]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


# -------------------------------------------------------------------------------------------- running


def _task_manager(names: Sequence[str], include: list[str], metadata: dict[str, Any]) -> Any:
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's ~15,000 own task files takes seconds; skip it when the local folders hold every name.
    local = TaskManager(include_path=include, include_defaults=False, metadata=metadata)
    if all(n in local.all_tasks for n in names):
        return local
    full = TaskManager(include_path=include, metadata=metadata)
    unknown = [n for n in names if n not in full.all_tasks]
    if unknown:
        raise ConfigError(f"unknown lm-eval task {', '.join(unknown)}; bundled: "
                          f"{', '.join(sorted(local.all_tasks))}; lm-eval's own: `lm-eval ls tasks`")
    return full


def run_tasks(lm: Any, tasks: Sequence[str], *, include: Sequence[str | os.PathLike[str]] = (),
              limit: int | None = None, num_fewshot: int | None = None,
              commonsense_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``lm`` (a ``harness_model``), with the bundled task folder and ``include``
    on the task path; returns lm-eval's results dict."""
    lm_eval_version()
    import lm_eval

    names = [t for t in tasks if t]
    if not names:
        raise ConfigError("no lm-eval task given")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit {limit}: expected a positive number of documents per task")
    folders = [str(TASKS_DIR)]
    for p in include:
        if not Path(p).is_dir():
            raise ConfigError(f"lm-eval task folder {p} not found")
        folders.append(str(p))
    metadata = {"commonsense_root": str(commonsense_root)} if commonsense_root else {}
    manager = _task_manager(names, folders, metadata)
    return lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                   num_fewshot=num_fewshot, log_samples=False)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """``{"tasks": {name: {"samples": n, "metrics": {metric: {"value", "stderr"}}}}, "groups": {...}}`` from
    lm-eval's results (a metric of a filter other than ``none`` is named ``metric,filter``)."""
    samples = results.get("n-samples", {})

    def block(name: str, values: dict[str, Any]) -> dict[str, Any]:
        metrics: dict[str, dict[str, float | None]] = {}
        for key, value in values.items():
            metric, sep, filt = key.partition(",")
            if not sep or metric.endswith("_stderr"):
                continue
            label = metric if filt == "none" else key
            stderr = values.get(f"{metric}_stderr,{filt}")
            metrics[label] = {"value": _number(value), "stderr": _number(stderr)}
        n = samples.get(name, {}).get("effective")
        return {"samples": n, "metrics": metrics}

    groups = results.get("groups", {})
    return {"tasks": {n: block(n, v) for n, v in results.get("results", {}).items() if n not in groups},
            "groups": {n: block(n, v) for n, v in groups.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    """``lm_eval``'s own command line with ``--model hybridsearch`` registered and, unless ``--include_path`` is
    given, the bundled tasks on the task path."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        register()
        if args and not {"-h", "--help"} & set(args) and not any(a.startswith("--include_path") for a in args):
            args += ["--include_path", str(TASKS_DIR)]
        from lm_eval.__main__ import cli_evaluate

        sys.argv = ["lm-eval", *args]
        cli_evaluate()
    except HybridSearchError as e:
        print(f"hybridsearch harness: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
