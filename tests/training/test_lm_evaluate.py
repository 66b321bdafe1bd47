"""Commonsense evaluators end to end: a scripted stub LM with hand-checkable answers, and exact batching on a
tiny random Mamba LM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hybridsearch.data import commonsense as cs
from hybridsearch.data.tokenizers import ByteTokenizer
from hybridsearch.models import MambaConfig, build
from hybridsearch.training.lm_eval import (
    evaluate_generation,
    evaluate_likelihood,
    evaluate_tasks,
    greedy_generate,
    score_candidates,
)

TOK = ByteTokenizer()
MARKER = list(cs.RESPONSE_MARKER.encode() + b"\n")


class ScriptedLM(nn.Module):
    """After "### Response:\\n" it predicts, byte by byte, "the correct answer is <the LAST label of the
    Answer format line>" then EOS (log-prob 0 for the scripted byte, about -20 for every other)."""

    kind = "lm"

    def __init__(self) -> None:
        super().__init__()
        self.lm_head = nn.Identity()
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the evaluators a device

    def forward_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*ids.shape, 264)
        for b, row in enumerate(ids.tolist()):
            text = bytes(t for t in row if t < 256).decode()
            labels = cs.parse_label_set(text.split(cs.RESPONSE_MARKER)[0])
            start = next((i + len(MARKER) for i in range(len(row)) if row[i : i + len(MARKER)] == MARKER), None)
            if start is None or not labels:
                continue
            script = list(cs.ANSWER_TEMPLATE.format(label=labels[-1]).encode()) + [TOK.eos_id]
            for pos in range(start - 1, len(row)):
                k = pos - (start - 1)
                if k < len(script):
                    out[b, pos, script[k]] = 20.0
        return out


def _rec(instruction: str, answer: str) -> dict:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


FAKE = {  # the stub always answers the last label: boolq false, piqa solution2, ARC answer4
    "boolq": [_rec("Q: is it? \n\nAnswer format: true/false", "false"),
              _rec("Q: is it not?\n\nAnswer format: true/false", "true")],
    "piqa": [_rec("Goal\n\nSolution1: a\n\nSolution2: b\n\nAnswer format: solution1/solution2", "solution2")] * 3,
    "ARC-Easy": [_rec("Which?\n\nAnswer1: a\n\nAnswer2: b\n\nAnswer3: c\n\nAnswer4: d\n\n"
                      "Answer format: answer1/answer2/answer3/answer4", a) for a in ("answer4", "answer1", "answer2",
                                                                                     "answer4")],
}
EXPECTED = {"boolq": 0.5, "piqa": 1.0, "ARC-Easy": 0.5}


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    for task, records in FAKE.items():
        d = tmp_path / "dataset" / task
        d.mkdir(parents=True)
        (d / "test.json").write_text(json.dumps(records))
    return tmp_path


@pytest.mark.parametrize("evaluator", ["likelihood", "generation"])
def test_evaluate_tasks_on_scripted_model(fake_root: Path, evaluator: str) -> None:
    scores = evaluate_tasks(ScriptedLM(), TOK, fake_root, evaluator=evaluator, batch_size=2)
    assert list(scores.results) == ["boolq", "piqa", "ARC-Easy"]  # canonical order, only tasks present
    assert {t: r.accuracy for t, r in scores.results.items()} == EXPECTED
    assert scores.average == pytest.approx(sum(EXPECTED.values()) / 3)
    d = scores.to_dict()
    assert d["tasks"]["ARC-Easy"] == {"accuracy": 0.5, "correct": 2, "total": 4} and d["evaluator"] == evaluator
    limited = evaluate_tasks(ScriptedLM(), TOK, fake_root, tasks=["arc_easy"], evaluator=evaluator, limit=1)
    assert list(limited.results) == ["ARC-Easy"] and limited.results["ARC-Easy"].total == 1


def test_scripted_generation_and_scores_are_hand_checkable() -> None:
    prompt = cs.build_prompt(FAKE["boolq"][0]["instruction"])
    assert greedy_generate(ScriptedLM(), TOK, [prompt, prompt[:-1] + "\n"], batch_size=2) == [
        "the correct answer is false"] * 2
    (true, false), = score_candidates(ScriptedLM(), TOK, [(prompt, ["the correct answer is true",
                                                                    "the correct answer is false"])])
    assert false == pytest.approx(0.0, abs=1e-4) and true < -19  # one wrong byte ("t") costs ~20 nats
    res = evaluate_likelihood(ScriptedLM(), TOK, FAKE["boolq"], "boolq")
    assert [p.prediction for p in res.predictions] == ["false", "false"]
    assert json.loads(res.predictions[0].raw)["false"] == pytest.approx(0.0, abs=1e-4)
    gen = evaluate_generation(ScriptedLM(), TOK, FAKE["piqa"][:1], "piqa")
    assert gen.predictions[0].raw == "the correct answer is solution2" and gen.accuracy == 1.0


def _naive_score(model: nn.Module, prompt: str, cont: str) -> float:
    ctx, c = TOK.encode(prompt), TOK.encode(cont)
    ids = torch.tensor([ctx + c])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids)[0].float(), -1)
    return sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(c))


def test_batched_scores_match_one_sequence_at_a_time() -> None:
    """Right padding, the shared-prefix shortcut and batching change nothing (up to float rounding)."""
    torch.manual_seed(0)
    model = build(MambaConfig(d_model=16, n_layer=2, vocab_size=258, d_state=4))
    requests = [
        ("Q: pick one.\n### Response:\n", ["the correct answer is answer1", "the correct answer is answer2"]),
        ("A longer prompt, so the batch needs padding.\n### Response:\n", ["the correct answer is true",
                                                                           "the correct answer is false"]),
        ("x", ["yes"]),
    ]
    got = score_candidates(model, TOK, requests, batch_size=2)
    for (prompt, conts), scores in zip(requests, got):
        for c, s in zip(conts, scores):
            assert math.isclose(s, _naive_score(model, prompt, c), rel_tol=1e-4, abs_tol=1e-4)


def test_greedy_generation_matches_unbatched() -> None:
    torch.manual_seed(1)
    model = build(MambaConfig(d_model=16, n_layer=2, vocab_size=258, d_state=4))
    prompts = ["short", "a somewhat longer prompt"]
    together = greedy_generate(model, TOK, prompts, max_new_tokens=5, batch_size=2)
    alone = [greedy_generate(model, TOK, [p], max_new_tokens=5)[0] for p in prompts]
    assert together == alone and all(len(g.encode("utf-8", "replace")) <= 5 * 3 for g in together)
