"""LLM-Adapters commonsense format: prompts, label masking, both evaluators on hand-computed fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybridsearch.data import commonsense as cs
from hybridsearch.data.tokenizers import ByteTokenizer
from hybridsearch.errors import DataError


def _rec(instruction: str, answer: str) -> dict:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


BOOLQ = [
    _rec("Please answer the following question with true or false, question: is the sky blue?\n\n"
         "Answer format: true/false", "true"),
    _rec("Please answer the following question with true or false, question: is water dry?\n\n"
         "Answer format: true/false", "true"),
    _rec("Please answer the following question with true or false, question: do fish fly?\n\n"
         "Answer format: true/false", "false"),
]
PIQA = [
    _rec("Please choose the correct solution to the question: To dry wet shoes\n\n"
         "Solution1: stuff them with newspaper\n\nSolution2: fill them with water\n\n"
         "Answer format: solution1/solution2", "solution1"),
    _rec("Please choose the correct solution to the question: To cool soup\n\n"
         "Solution1: heat it\n\nSolution2: let it stand\n\nAnswer format: solution1/solution2", "solution2"),
]
SIQA = [
    _rec("Please choose the correct answer to the question: Cameron threw a party. How would others feel?\n\n"
         "Answer1: bored\n\nAnswer2: tired\n\nAnswer3: happy\n\nAnswer format: answer1/answer2/answer3",
         "answer3"),
]
HELLASWAG = [
    _rec("Please choose the correct ending to complete the given sentence: Removing ice from car: the man\n\n"
         "Ending1: eats it.\n\nEnding2: sings.\n\nEnding3: sleeps.\n\nEnding4: scrapes the window.\n\n"
         "Answer format: ending1/ending2/ending3/ending4", "ending4"),
]
WINOGRANDE = [
    _rec("Please choose the correct answer to fill in the blank to complete the given sentence: "
         "Sarah was a better surgeon than Maria so _ got the harder cases.\n\n"
         "Option1: Sarah\n\nOption2: Maria\n\nAnswer format: option1/option2", "option1"),
]
ARC = [
    _rec("Please choose the correct answer to the question: Which is a source of energy for plants?\n\n"
         "Answer1: sunlight\n\nAnswer2: rocks\n\nAnswer3: sand\n\nAnswer4: glass\n\n"
         "Answer format: answer1/answer2/answer3/answer4", "answer1"),
]


@pytest.fixture
def llm_adapters_tree(tmp_path: Path) -> Path:
    sets = {"boolq": BOOLQ, "piqa": PIQA, "social_i_qa": SIQA, "hellaswag": HELLASWAG,
            "winogrande": WINOGRANDE, "ARC-Challenge": ARC, "ARC-Easy": ARC, "openbookqa": ARC}
    for name, records in sets.items():
        (tmp_path / "dataset" / name).mkdir(parents=True)
        (tmp_path / "dataset" / name / "test.json").write_text(json.dumps(records, indent=4))
    train = [r for records in sets.values() for r in records]
    (tmp_path / "ft-training_set").mkdir()
    (tmp_path / "ft-training_set" / "commonsense_170k.json").write_text(json.dumps(train, indent=2))
    return tmp_path


def test_loading_real_layout(llm_adapters_tree: Path):
    train = cs.load_records(llm_adapters_tree / "ft-training_set" / "commonsense_170k.json")
    assert len(train) == 3 + 2 + 1 + 1 + 1 + 3
    assert train[0] == cs.CommonsenseRecord(BOOLQ[0]["instruction"], "", "the correct answer is true", "true")
    for task in cs.TASKS:
        assert cs.load_test(llm_adapters_tree, task)
    assert cs.load_test(llm_adapters_tree / "dataset", "arc_easy")[0].answer == "answer1"  # alias, dataset dir
    assert cs.check_records(train) == []
    tr, va = cs.split_train_val(train, val_size=3, seed=42)
    assert len(tr) == 8 and len(va) == 3 and sorted(map(id, tr + va)) == sorted(map(id, train))
    assert cs.split_train_val(train, 3)[1] == va  # seeded


def test_loading_errors(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"instruction": "x",\n   "output": }\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: invalid JSON"):
        cs.load_records(bad)
    bad.write_text(json.dumps([{"instruction": "x", "input": "", "output": "y"}]))
    with pytest.raises(DataError, match=r"record 0: missing field 'answer'"):
        cs.load_records(bad)
    bad.write_text(json.dumps(BOOLQ[0]) + "\n" + json.dumps(BOOLQ[1]))  # JSONL is not the format
    with pytest.raises(DataError, match="invalid JSON"):
        cs.load_records(bad)
    with pytest.raises(DataError, match="not found"):
        cs.load_test(tmp_path, "boolq")
    with pytest.raises(DataError, match="unknown commonsense task"):
        cs.canonical_task("mmlu")
    wrong = [cs.CommonsenseRecord(BOOLQ[0]["instruction"], "", "the correct answer is maybe", "maybe")]
    assert len(cs.check_records(wrong)) == 1


def test_prompt_and_label_set():
    prompt = cs.build_prompt("Say hi.")
    assert prompt == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )
    rec = cs.CommonsenseRecord(**BOOLQ[0])
    assert cs.build_text(rec) == cs.build_prompt(rec.instruction) + "the correct answer is true"
    assert "### Input:\nctx\n\n### Response:\n" in cs.build_prompt("q", "ctx")
    assert cs.parse_label_set(BOOLQ[0]["instruction"]) == ("true", "false")
    assert cs.parse_label_set(SIQA[0]["instruction"]) == ("answer1", "answer2", "answer3")
    assert cs.parse_label_set(HELLASWAG[0]["instruction"])[-1] == "ending4"
    assert cs.parse_label_set("no format here") == ()


def test_extract_answer_first_match_case_and_no_match():
    assert cs.extract_answer("boolq", "false. Also true") == "false"
    assert cs.extract_answer("boolq", "True") == ""  # LLM-Adapters is case-sensitive
    assert cs.extract_answer("boolq", "True", ignore_case=True) == "true"
    assert cs.extract_answer("piqa", "I pick solution2") == "solution2"
    assert cs.extract_answer("social_i_qa", "answer5") == "answer5"
    assert cs.extract_answer("hellaswag", "ending5 then ending3") == "ending3"
    assert cs.extract_answer("winogrande", "no idea") == ""
    p = cs.build_prompt("q")
    assert cs.response_text(p, "solution2\n\n### Response:\nsolution1") == "solution2"
    assert cs.response_text(p, p + " answer2 ") == "answer2"  # generate may echo the prompt


def test_generation_evaluator_hand_computed():
    records = [cs.CommonsenseRecord(**r) for r in BOOLQ]
    outputs = {
        cs.build_prompt(records[0].instruction): "the correct answer is true",  # right
        cs.build_prompt(records[1].instruction): "the correct answer is True",  # "" -> wrong (case)
        cs.build_prompt(records[2].instruction): "false, not true",  # first match false -> right
    }
    result = cs.evaluate_generation(records, "boolq", outputs.__getitem__)
    assert [p.prediction for p in result.predictions] == ["true", "", "false"]
    assert (result.correct, result.total, result.accuracy) == (2, 3, pytest.approx(2 / 3))
    assert cs.evaluate_generation(records, "boolq", outputs.__getitem__, ignore_case=True).correct == 3

    piqa = [cs.CommonsenseRecord(**r) for r in PIQA]
    full_echo = {cs.build_prompt(r.instruction): cs.build_prompt(r.instruction) + "solution1" for r in piqa}
    res = cs.evaluate_generation(piqa, "piqa", full_echo.__getitem__)
    assert [p.correct for p in res.predictions] == [True, False] and res.accuracy == 0.5


def test_likelihood_evaluator_hand_computed():
    records = [cs.CommonsenseRecord(**r) for r in SIQA + ARC]
    calls: list[tuple[str, str]] = []
    preferred = {records[0].instruction: "answer3", records[1].instruction: "answer2"}

    def score(prompt: str, continuation: str) -> float:
        calls.append((prompt, continuation))
        instruction = prompt.split("### Instruction:\n")[1].split("\n\n### Response:")[0]
        return 0.0 if continuation.endswith(preferred[instruction]) else -5.0

    result = cs.evaluate_likelihood(records, score, "ARC-Easy")
    assert [p.prediction for p in result.predictions] == ["answer3", "answer2"]
    assert result.correct == 1 and result.mode == "likelihood"
    # SIQA has 3 labels, ARC 4: one call per label, the right prompt and continuation.
    assert len(calls) == 3 + 4
    assert calls[0] == (cs.build_prompt(records[0].instruction), "the correct answer is answer1")
    assert json.loads(result.predictions[0].raw) == {"answer1": -5.0, "answer2": -5.0, "answer3": 0.0}
    tie = cs.evaluate_likelihood(records[:1], lambda p, c: 1.0)
    assert tie.predictions[0].prediction == "answer1"  # ties -> first label
    bare = [cs.CommonsenseRecord("true or false?", "", "the correct answer is false", "false")]
    assert cs.evaluate_likelihood(bare, lambda p, c: -len(c), "boolq").predictions[0].prediction == "true"
    with pytest.raises(DataError, match="Answer format"):
        cs.evaluate_likelihood(bare, lambda p, c: 0.0)


def test_tokenize_masking_cutoff_and_collate():
    tok = ByteTokenizer()
    rec = cs.CommonsenseRecord(**BOOLQ[0])
    n_prompt = len(cs.build_prompt(rec.instruction).encode())
    n_full = len(cs.build_text(rec).encode())
    ex = cs.tokenize_example(rec, tok, cutoff_len=1024)
    assert len(ex.input_ids) == n_full + 1 and ex.input_ids[-1] == tok.eos_id
    assert ex.labels == ex.input_ids  # loss on all tokens (train_on_inputs=True, as MambaPEFT)
    masked = cs.tokenize_example(rec, tok, cutoff_len=1024, train_on_inputs=False)
    assert masked.labels[:n_prompt] == [cs.IGNORE_INDEX] * n_prompt
    assert masked.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert tok.decode(masked.labels[n_prompt:-1]) == "the correct answer is true"
    cut = cs.tokenize_example(rec, tok, cutoff_len=50, train_on_inputs=False)
    assert len(cut.input_ids) == 50 and cut.input_ids[-1] != tok.eos_id  # no room for EOS
    assert cut.labels == [cs.IGNORE_INDEX] * 50

    batch = cs.collate([cut, cs.TokenizedExample([5, 6, 7], [-100, 6, 7])], pad_id=tok.pad_id)
    assert batch["input_ids"].shape == (2, 56)  # padded to a multiple of 8
    assert batch["input_ids"][1, -3:].tolist() == [5, 6, 7]  # left padding
    assert (batch["input_ids"][1, :-3] == tok.pad_id).all() and (batch["labels"][1, :-3] == -100).all()
    assert batch["attention_mask"].sum(1).tolist() == [50, 3]
    right = cs.collate([cs.TokenizedExample([1], [1])], pad_id=0, padding_side="right", pad_to_multiple_of=None)
    assert torch.equal(right["input_ids"], torch.tensor([[1]]))
