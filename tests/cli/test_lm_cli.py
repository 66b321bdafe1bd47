"""``hybridsearch evaluate`` on a tiny slice, ``hybridsearch finetune`` into it, and the pretrain
command's targets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hybridsearch.cli import build_parser, main


def _json_out(capsys: pytest.CaptureFixture) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluate_cli_on_a_tiny_slice(capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--model", "mamba-proxy", "--tasks", "boolq,arc_easy", "--limit", "4", "--json"]) == 0
    out = _json_out(capsys)
    assert out["evaluator"] == "likelihood" and list(out["tasks"]) == ["boolq", "ARC-Easy"]
    assert all(t["total"] == 4 for t in out["tasks"].values())
    assert out["average"] == pytest.approx(sum(t["accuracy"] for t in out["tasks"].values()) / 2)
    assert main(["evaluate", "--model", "mamba-proxy", "--tasks", "piqa", "--limit", "1"]) == 0
    assert "average" in capsys.readouterr().out  # the table


def test_finetune_then_evaluate_with_adapters(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lora"
    rc = main(["finetune", "--model", "mamba-proxy", "--peft", '{"methods": {"lora_X": {"rank": 2}}}', "--limit-train",
                        "4", "--max-steps", "1", "--recipe", '{"batch_size": 4, "micro_batch_size": 4}', "--out",
                        str(out)])
    assert rc == 0 and (out / "adapter_model.safetensors").is_file()
    assert re.search(r"^step 1/1: loss \d+\.\d{4} \(\d+ s\)$", capsys.readouterr().out, re.M)
    info = json.loads((out / "finetune.json").read_text())
    assert info["steps"] == 1 and info["recipe"]["lr"] == 1e-3  # LoRAp(X)'s reference lr
    capsys.readouterr()
    args = ["evaluate", "--model", "mamba-proxy", "--adapters", str(out), "--tasks", "winogrande", "--limit", "4"]
    assert main([*args, "--json"]) == 0
    assert _json_out(capsys)["tasks"]["winogrande"]["total"] == 4


def test_evaluate_cli_errors_are_reported(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["evaluate", "--model", "mamba-proxy", "--data-root", str(tmp_path)]) == 2
    assert "no dataset/<task>/test.json" in capsys.readouterr().err
    assert main(["evaluate", "--model", "vim-proxy", "--limit", "1"]) == 2


def test_pretrain_command_targets() -> None:
    parser = build_parser()
    for target in ("vim-proxy", "mamba-proxy", "commonsense-proxy"):
        args = parser.parse_args(["pretrain", target, "--wordnet", "/nowhere", "--steps", "3"])
        assert args.model == target and args.out is None  # each target has its own bundled default


def test_finetune_command_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``hybridsearch finetune``: one step on 4 records, adapters saved, --eval on a 2-item slice."""
    out = tmp_path / "affix"
    rc = main(["finetune", "--peft", '{"methods": {"affix": {}}}', "--limit-train", "4", "--max-steps", "1",
               "--recipe", '{"batch_size": 4, "micro_batch_size": 2, "train_on_inputs": false}', "--out", str(out),
               "--eval", "--eval-limit", "2"])
    assert rc == 0 and (out / "adapter_model.safetensors").is_file()
    info = json.loads((out / "finetune.json").read_text())
    assert info["steps"] == 1 and info["recipe"]["lr"] == 1e-4 and info["recipe"]["train_on_inputs"] is False
    assert info["eval"]["evaluator"] == "likelihood" and all(t["total"] == 2 for t in info["eval"]["tasks"].values())
    assert info["tokens"] > 0 and info["counts"]["trainable"] > 0
    capsys.readouterr()


@pytest.mark.parametrize(("args", "message"), [
    (["--peft", "{methods: {nope: {}}}"], "nope"),
    (["--peft", "[1, 2]"], "neither an existing file nor a mapping"),
    (["--recipe", "{batch: 3}"], "--recipe: not JSON"),
    (["--recipe", '{"batchsize": 3}'], "unknown key(s) batchsize"),
    (["--train", "/nowhere/train.json"], "/nowhere/train.json"),
    (["--max-steps", "0"], "--max-steps must be positive"),
], ids=["method", "peft-list", "recipe-json", "recipe-key", "train-file", "steps"])
def test_finetune_command_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                    message: str) -> None:
    assert main(["finetune", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hybridsearch finetune: error:") and message in err, err
    assert not (tmp_path / "x").exists()
