"""``hybridsearch evaluate --harness``: lm-evaluation-harness tasks in-process (the real lm_eval, offline, on
mamba-proxy), its accuracy against our own evaluator's on the same records, and bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridsearch.cli import main
from hybridsearch.data import commonsense as cs

pytest.importorskip("lm_eval")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _json(capsys: pytest.CaptureFixture) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1  # one JSON document on stdout; lm-eval's progress goes to stderr
    return json.loads(lines[0])


def test_harness_accuracy_equals_our_evaluator(capsys: pytest.CaptureFixture) -> None:
    base = ["evaluate", "--model", "mamba-proxy", "--limit", "5", "--json"]
    assert main([*base, "--harness", "commonsense_proxy_boolq,commonsense_proxy_arc_easy_lmeval,"
                 "commonsense_proxy_arc_easy"]) == 0
    out = _json(capsys)
    tasks = out["tasks"]
    assert out["harness"][0] == "commonsense_proxy_boolq" and out["lm_eval"] and out["groups"] == {}
    assert set(tasks["commonsense_proxy_arc_easy_lmeval"]["metrics"]) == {"acc", "acc_norm"}
    assert all(t["samples"] == 5 for t in tasks.values())
    assert main([*base, "--tasks", "boolq,arc_easy"]) == 0
    ours = _json(capsys)["tasks"]
    assert tasks["commonsense_proxy_boolq"]["metrics"]["acc"]["value"] == ours["boolq"]["accuracy"]
    assert tasks["commonsense_proxy_arc_easy"]["metrics"]["acc"]["value"] == ours["ARC-Easy"]["accuracy"]
    stderr = tasks["commonsense_proxy_boolq"]["metrics"]["acc"]["stderr"]
    assert stderr is not None and stderr > 0


def test_harness_table_and_data_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--data-root feeds the bundled tasks (two records written here); the table lists each metric and the group."""
    records = [r.__dict__ for r in cs.load_test(cs.BUNDLED_ROOT, "piqa")[:2]]
    (tmp_path / "dataset" / "piqa").mkdir(parents=True)
    (tmp_path / "dataset" / "piqa" / "test.json").write_text(json.dumps(records))
    args = ["evaluate", "--model", "mamba-proxy", "--harness", "commonsense_proxy_piqa", "--data-root", str(tmp_path)]
    assert main([*args, "--json"]) == 0
    assert _json(capsys)["tasks"]["commonsense_proxy_piqa"]["samples"] == 2
    assert main(["evaluate", "--model", "mamba-proxy", "--harness", "commonsense_proxy", "--limit", "2"]) == 0
    table = capsys.readouterr().out
    assert "lm-evaluation-harness" in table and "acc_norm" in table and "± " in table
    assert "commonsense_proxy_winogrande" in table and "commonsense_proxy " in table  # a task and the group


@pytest.mark.parametrize("extra, message", [
    (["--harness", "commonsense_proxy_boolq", "--tasks", "boolq"], "--tasks names our evaluator's tasks"),
    (["--harness", "commonsense_proxy_boolq", "--harness-tasks-dir", "/nonexistent/tasks"],
     "task folder /nonexistent/tasks not found"),
    (["--harness", "commonsense_proxy_boolq", "--limit", "0"], "limit 0"),
    (["--harness", " , "], "no lm-eval task given"),
    (["--harness", "commonsense_proxy_nosuch"], "unknown lm-eval task commonsense_proxy_nosuch"),
])
def test_harness_bad_input_is_one_line(extra: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--model", "mamba-proxy", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("hybridsearch evaluate: error:")


def test_harness_tasks_dir_adds_a_task_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hybridsearch.training.harness import TASKS_DIR

    yaml = f"task: my_boolq\ninclude: {TASKS_DIR / '_alpaca.yaml'}\ndataset_kwargs:\n  commonsense_task: boolq\n"
    (tmp_path / "mine.yaml").write_text(yaml)
    args = ["evaluate", "--model", "mamba-proxy", "--harness", "my_boolq", "--harness-tasks-dir", str(tmp_path),
            "--limit", "3", "--json"]
    assert main(args) == 0
    assert _json(capsys)["tasks"]["my_boolq"]["samples"] == 3
