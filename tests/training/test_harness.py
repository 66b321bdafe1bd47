"""lm-evaluation-harness with the real lm_eval (no mocks), offline, on mamba-proxy: our model class gives our own
scorer's numbers, lm-eval's rolling and generation semantics, the bundled local tasks, and lm-eval's own command
line through ``python -m hybridsearch.training.harness`` (with and without adapters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
from conftest import perturb_trainable  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from hybridsearch import apply_peft, save_adapters  # noqa: E402
from hybridsearch.data import commonsense as cs  # noqa: E402
from hybridsearch.errors import ConfigError, DataError  # noqa: E402
from hybridsearch.training import harness  # noqa: E402
from hybridsearch.training.lm_eval import evaluate_tasks, greedy_generate, score_candidates  # noqa: E402
from hybridsearch.training.lm_loading import load_lm  # noqa: E402

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
CONTEXTS = ['Question: is "gladly" an adverb?\nAnswer:', "A noun names a thing; a verb", "x"]
CONTS = [" yes", " no", " names an action.", "y"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def proxy() -> tuple:
    return load_lm("mamba-proxy")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny hybrid moved off its zero init, so the adapters change every score."""
    model, _ = load_lm("mamba-proxy")
    apply_peft(model, {"methods": {"lora_X": {"rank": 2}, "additional_scan": {"states": 2}}})
    perturb_trainable(model, std=0.2)
    return save_adapters(model, tmp_path_factory.mktemp("adapters") / "ad")


def _ll(ctx: str, cont: str) -> Instance:
    return Instance("loglikelihood", {}, (ctx, cont), 0)


def test_loglikelihood_equals_our_scorer_batched(proxy: tuple) -> None:
    model, tok = proxy
    pairs = [(c, t) for c in CONTEXTS for t in CONTS] + [("", "the correct answer is true")]
    ours = [o[0] for o in score_candidates(model, tok, [(c, [t]) for c, t in pairs], batch_size=16)]
    same_batches = harness.harness_model(pretrained=model, batch_size=16).loglikelihood([_ll(*p) for p in pairs])
    assert [g for g, _ in same_batches] == ours  # bit for bit: the same pass, the same sums
    lm = harness.harness_model(pretrained=model, batch_size=3)  # other batches pad to other lengths: float noise
    assert [g for g, _ in lm.loglikelihood([_ll(*p) for p in pairs])] == pytest.approx(ours, abs=1e-5)
    # is_greedy: true exactly for the model's own greedy continuation
    greedy = greedy_generate(model, tok, [CONTEXTS[1]], max_new_tokens=6)[0]
    flags = [g for _, g in lm.loglikelihood([_ll(CONTEXTS[1], greedy), _ll(CONTEXTS[1], greedy[:-1] + "\x00")])]
    assert flags == [True, False]


def test_trailing_whitespace_moves_to_the_continuation_as_in_lm_eval(proxy: tuple) -> None:
    model, tok = proxy
    lm = harness.harness_model(pretrained=model)
    (got, _), = lm.loglikelihood([_ll("Answer: ", "yes")])
    assert got == pytest.approx(score_candidates(model, tok, [("Answer:", [" yes"])])[0][0], abs=1e-4)


def test_loglikelihood_rolling_windows(proxy: tuple) -> None:
    model, tok = proxy
    text = "abcdefghij" * 4  # no whitespace: each window's strings split where its tokens do
    full = harness.harness_model(pretrained=model).loglikelihood_rolling([Instance("loglikelihood_rolling", {},
                                                                                   (text,), 0)])
    assert full[0] == pytest.approx(score_candidates(model, tok, [("", [text])])[0][0], abs=1e-4)
    # max_length 16: lm-eval's disjoint windows, every byte predicted once; a full window has one byte of context,
    # the last one the whole 16-byte input
    small = harness.harness_model(pretrained=model, max_length=16)
    rolled = small.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    windows = [("", text[:16]), (text[15:16], text[16:32]), (text[23:32], text[32:40])]
    direct = harness.harness_model(pretrained=model).loglikelihood([_ll(c, t) for c, t in windows])
    assert rolled == pytest.approx(sum(v for v, _ in direct), abs=1e-4)
    assert rolled != pytest.approx(full[0], abs=1e-3)


def test_generate_until_greedy_with_stop_sequences(proxy: tuple) -> None:
    model, tok = proxy
    lm = harness.harness_model(pretrained=model, batch_size=2)
    plain = greedy_generate(model, tok, CONTEXTS, max_new_tokens=12)
    stop = plain[0][3:5]  # a stop string that the first generation contains
    reqs = [Instance("generate_until", {}, (c, {"until": [stop], "max_gen_toks": 12, "do_sample": False}), 0)
            for c in CONTEXTS]
    assert lm.generate_until(reqs) == [p.split(stop)[0] for p in plain]
    with pytest.raises(ConfigError, match="greedily"):
        lm.generate_until([Instance("generate_until", {}, ("x", {"until": ["\n"], "do_sample": True}), 0)])


def test_model_args_and_registration() -> None:
    harness.register()
    harness.register()  # idempotent
    cls = get_model("hybridsearch")
    assert cls.__name__ == "HybridSearchLM" and get_model("hf").__name__ == "HFLM"  # lm-eval's own names stay
    lm = cls.create_from_arg_string("pretrained=mamba-proxy,batch_size=4", {"device": "cpu", "batch_size": None})
    assert lm.batch_size == 4 and lm.get_model_info()["model_name"] == "mamba-proxy"
    with pytest.raises(ConfigError, match="unknown model_args peft_weights"):
        cls.create_from_arg_string("pretrained=mamba-proxy,peft_weights=x")
    with pytest.raises(ConfigError, match="max_length"):
        cls(pretrained="mamba-proxy", max_length="0")


def test_commonsense_doc_parses_the_llm_adapters_instruction() -> None:
    docs = {t: harness.commonsense_doc(cs.load_test(cs.BUNDLED_ROOT, t)[0], t) for t in ("boolq", "piqa", "winogrande")}
    assert docs["boolq"]["question"] == 'is "inevitably" an adverb?'
    assert (docs["boolq"]["options"], docs["boolq"]["option_label"]) == (["no", "yes"], 1)
    assert docs["boolq"]["answers"] == ["the correct answer is true", "the correct answer is false"]
    assert (docs["piqa"]["options"], docs["piqa"]["label"]) == (["verify", "conformable"], 0)
    assert docs["winogrande"]["question"] == "he spoke" and docs["winogrande"]["option_label"] == 1
    bad = cs.CommonsenseRecord("Pick: x\n\nOption1: a\n\nAnswer format: option1/option2", "", "", "option2")
    with pytest.raises(DataError, match="1 options in the instruction for 2 labels"):
        harness.commonsense_doc(bad, "winogrande", "f.json: record 0")


def _acc(summary: dict, prefix: str = "commonsense_proxy_") -> dict[str, float]:
    return {n.removeprefix(prefix): b["metrics"]["acc"]["value"] for n, b in summary["tasks"].items()}


@pytest.mark.parametrize("with_adapters", [False, True])
def test_bundled_tasks_give_our_scorers_accuracy(with_adapters: bool, adapters: Path) -> None:
    ad = adapters if with_adapters else None
    lm = harness.harness_model(pretrained="mamba-proxy", adapters=ad, batch_size=16)
    summary = harness.summarize(harness.run_tasks(lm, ["commonsense_proxy"], limit=6))
    model, tok = load_lm("mamba-proxy", adapters=ad)
    ours = evaluate_tasks(model, tok, limit=6)
    names = {"arc_easy": "ARC-Easy"}
    assert {names.get(k, k): v for k, v in _acc(summary).items()} == {t: r.accuracy for t, r in ours.results.items()}
    assert summary["groups"]["commonsense_proxy"]["metrics"]["acc"]["value"] == pytest.approx(ours.average)
    assert all(b["samples"] == 6 for b in summary["tasks"].values())


def test_adapters_change_the_harness_scores(adapters: Path) -> None:
    req = [_ll(CONTEXTS[0], CONTS[0])]
    base = harness.harness_model(pretrained="mamba-proxy").loglikelihood(req)[0][0]
    tuned = harness.harness_model(pretrained="mamba-proxy", adapters=adapters).loglikelihood(req)[0][0]
    assert abs(base - tuned) > 1e-3


def test_lm_eval_command_line_through_the_module(tmp_path: Path, adapters: Path) -> None:
    """lm-eval's own CLI (``python -m hybridsearch.training.harness`` = ``lm_eval`` + our registration), with
    adapters, on a bundled task in each prompt format; its results file agrees with the in-process run."""
    tasks = "commonsense_proxy_boolq,commonsense_proxy_piqa_lmeval"
    cmd = [sys.executable, "-m", "hybridsearch.training.harness", "--model", "hybridsearch", "--model_args",
           f"pretrained=mamba-proxy,adapters={adapters}", "--tasks", tasks, "--limit", "4", "--device", "cpu",
           "--batch_size", "8", "--output_path", str(tmp_path / "out")]
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "commonsense_proxy_piqa_lmeval" in proc.stdout and "acc_norm" in proc.stdout  # lm-eval's table
    files = list((tmp_path / "out").rglob("results_*.json"))
    assert len(files) == 1
    cli = harness.summarize(json.loads(files[0].read_text()))
    lm = harness.harness_model(pretrained="mamba-proxy", adapters=adapters, batch_size=8)
    here = harness.summarize(harness.run_tasks(lm, tasks.split(","), limit=4))
    assert _acc(cli) == _acc(here) and set(_acc(cli)) == {"boolq", "piqa_lmeval"}
    norm = cli["tasks"]["commonsense_proxy_piqa_lmeval"]["metrics"]["acc_norm"]["value"]
    assert norm == here["tasks"]["commonsense_proxy_piqa_lmeval"]["metrics"]["acc_norm"]["value"]


def test_run_tasks_bad_input(tmp_path: Path, proxy: tuple) -> None:
    lm = harness.harness_model(pretrained=proxy[0])
    with pytest.raises(ConfigError, match="task folder"):
        harness.run_tasks(lm, ["commonsense_proxy_boolq"], include=[tmp_path / "missing"])
    with pytest.raises(ConfigError, match="limit 0"):
        harness.run_tasks(lm, ["commonsense_proxy_boolq"], limit=0)
    with pytest.raises(DataError, match="test.json not found"):
        harness.run_tasks(lm, ["commonsense_proxy_boolq"], commonsense_root=tmp_path)


def test_lm_eval_stays_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    code = ("import sys, hybridsearch, hybridsearch.training.harness, hybridsearch.commands.evaluate; "
            "assert 'lm_eval' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed: the import fails
    with pytest.raises(ConfigError, match=r"pip install 'hybridsearch\[harness\]'"):
        harness.harness_model(pretrained="mamba-proxy")
