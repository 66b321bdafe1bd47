"""LM fine-tuning: prompt + label masking, micro-batch invariance, loss goes down, every LM method trains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hybridsearch import METHODS, PeftConfig, apply_peft
from hybridsearch.data import commonsense as cs
from hybridsearch.data.tokenizers import ByteTokenizer
from hybridsearch.errors import TrialFailure
from hybridsearch.models import Mamba2Config, MambaConfig, build
from hybridsearch.training.lm import LMRecipe, _step, _tokenize, cutoff_for, lm_loss_sum, reference_lr, train_lm

TOK = ByteTokenizer()
TINY_LM = MambaConfig(d_model=16, n_layer=2, vocab_size=ByteTokenizer.VOCAB_SIZE, d_state=4)


def _rec(q: str, answer: str) -> cs.CommonsenseRecord:
    return cs.CommonsenseRecord(f"{q}\n\nAnswer format: true/false", "", f"the correct answer is {answer}", answer)


RECORDS = [_rec("is fire hot?", "true"), _rec("is ice hot?", "false"), _rec("is snow cold?", "true"),
           _rec("is tea dry?", "false")]
FAST = {"batch_size": 4, "micro_batch_size": 2, "warmup_steps": 0, "cutoff_len": 512, "schedule": "constant"}


def tiny_lm(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(TINY_LM)


def test_prompt_masking_and_eos_on_fixture() -> None:
    r = RECORDS[0]
    prompt = cs.build_prompt(r.instruction)
    assert prompt.endswith("### Response:\n") and "is fire hot?" in prompt
    full = _tokenize([r], TOK, LMRecipe(cutoff_len=512))[0]
    masked = _tokenize([r], TOK, LMRecipe(cutoff_len=512, train_on_inputs=False))[0]
    n_prompt = len(prompt.encode())
    assert full.input_ids == list((prompt + r.output).encode()) + [TOK.eos_id]
    assert full.labels == full.input_ids  # loss on every token by default (train_on_inputs=True)
    assert masked.labels[:n_prompt] == [cs.IGNORE_INDEX] * n_prompt
    assert masked.labels[n_prompt:] == full.input_ids[n_prompt:]  # response + EOS stay labelled
    batch = cs.collate([full, masked], TOK.pad_id)  # left padding to a multiple of 8
    _, count = lm_loss_sum(tiny_lm(), batch)
    # both rows are left-padded (206 -> 208), so even the first real token is a target (predicted from a pad,
    # as with HF's DataCollatorForSeq2Seq); the masked row counts only the response and EOS
    assert batch["input_ids"].shape[1] == 208 and (batch["input_ids"][:, 0] == TOK.pad_id).all()
    assert count == len(full.labels) + len(r.output.encode()) + 1


def test_cutoff_truncates_and_skips_eos() -> None:
    ex = _tokenize(RECORDS[:1], TOK, LMRecipe(cutoff_len=40))[0]
    assert len(ex.input_ids) == 40 and ex.input_ids[-1] != TOK.eos_id
    # default: the reference's 256 tokens are ~1,000 bytes, so the byte tokenizer gets 1024
    assert cutoff_for(TOK, LMRecipe()) == 1024 and cutoff_for(TOK, LMRecipe(cutoff_len=64)) == 64
    res = train_lm(tiny_lm(), TOK, RECORDS, LMRecipe(**{**FAST, "cutoff_len": 40, "max_steps": 1}))
    assert res.truncated == len(RECORDS)


def test_effective_batch_loss_independent_of_micro_batches() -> None:
    """Token-weighted accumulation: micro-batches of 1 or 4 give the same loss and gradients."""
    examples = _tokenize(RECORDS, TOK, LMRecipe(cutoff_len=512))
    grads = []
    for micro in (1, 4):
        model = tiny_lm()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD([{"params": params, "initial_lr": 0.0}], lr=0.0)
        r = LMRecipe(**{**FAST, "micro_batch_size": micro, "padding_side": "right", "grad_clip": None})
        loss = _step(model, opt, examples, TOK.pad_id, r, 1.0, params)
        grads.append((loss, torch.cat([p.grad.flatten() for p in params])))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_trainer_reduces_loss_and_reports_each_epoch() -> None:
    model = tiny_lm()
    seen = []
    res = train_lm(model, TOK, RECORDS, LMRecipe(**{**FAST, "lr": 1e-2, "epochs": 12}), val=RECORDS[:2],
                   on_epoch=lambda e, acc: seen.append((e, acc)))
    assert res.steps == 12 and len(res.losses) == 12
    assert res.losses[-1] < 0.8 * res.losses[0]
    assert [e for e, _ in seen] == list(range(12)) and all(0.0 <= a <= 1.0 for _, a in seen)
    assert res.val_acc == seen[-1][1]


def test_max_steps_caps_training() -> None:
    res = train_lm(tiny_lm(), TOK, RECORDS, LMRecipe(**{**FAST, "epochs": 5, "max_steps": 2}))
    assert res.steps == 2


def test_non_finite_loss_is_a_trial_failure() -> None:
    model = tiny_lm()
    with torch.no_grad():
        model.backbone.norm_f.weight.fill_(float("nan"))
    with pytest.raises(TrialFailure, match="non-finite"):
        train_lm(model, TOK, RECORDS, LMRecipe(**FAST))


TINY_MAMBA2 = Mamba2Config(d_model=32, n_layer=2, vocab_size=TINY_LM.vocab_size, d_state=8, headdim=8, chunk_size=8,
                           pad_vocab_size_multiple=8)
LM_METHODS = [(layer, n) for layer, cfg in (("mamba", TINY_LM), ("mamba2", TINY_MAMBA2))
              for n in METHODS.names() if "lm" in METHODS.get(n).kinds
              and all(build(cfg, device="meta").mixers[0].peft_part(p) for p in METHODS.get(n).parts)]


@pytest.mark.parametrize(("layer", "method"), LM_METHODS, ids=[f"{a}-{b}" for a, b in LM_METHODS])
def test_every_lm_method_trains(layer: str, method: str) -> None:
    """One optimizer step of the LM trainer moves the method's own tensors and nothing of the frozen base, on the
    Mamba-1 and the Mamba-2 LM."""
    torch.manual_seed(0)
    model = apply_peft(tiny_lm() if layer == "mamba" else build(TINY_MAMBA2), {"methods": {method: {}}})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_lm(model, TOK, RECORDS[:2], LMRecipe(**{**FAST, "batch_size": 2, "lr": 1e-2, "max_steps": 1}))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert moved and moved <= trainable, (method, sorted(moved - trainable))


def test_reference_learning_rates() -> None:
    assert reference_lr({"methods": {"lora_X": {"rank": 8}}}) == 1e-3
    assert reference_lr(PeftConfig.from_dict({"methods": {"affix": {}}})) == 1e-4
    assert reference_lr({"methods": {"additional_scan": {}}}) == 5e-3
    assert reference_lr({"methods": {"lora_X": {}, "affix": {}}}) == 3e-4
    assert reference_lr(None) == 5e-5
    assert math.isclose(reference_lr({"methods": {"tune_D": {}}}), 3e-4)


def test_checkpoint_directory_with_neox_style_tokenizer(tmp_path: Path) -> None:
    """A real-layout (HF) checkpoint folder with a GPT-NeoX style tokenizer.json: load, fine-tune, evaluate."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from hybridsearch.data.tokenizers import JsonTokenizer
    from hybridsearch.models.checkpoint import save_mamba
    from hybridsearch.training.lm_eval import evaluate_likelihood
    from hybridsearch.training.lm_loading import load_lm

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([cs.build_text(r) for r in RECORDS] * 5, trainer)
    torch.manual_seed(0)
    save_mamba(build(MambaConfig(d_model=16, n_layer=2, vocab_size=304, d_state=4)), tmp_path, fmt="hf")
    tok.save(str(tmp_path / "tokenizer.json"))
    model, jt = load_lm(tmp_path)
    assert isinstance(jt, JsonTokenizer) and jt.pad_id == 1 and model.cfg.padded_vocab == 304
    apply_peft(model, {"methods": {"lora_X": {"rank": 2}}})
    res = train_lm(model, jt, RECORDS, LMRecipe(**{**FAST, "lr": 1e-2, "max_steps": 2}))
    assert res.steps == 2 and all(math.isfinite(x) for x in res.losses)
    assert evaluate_likelihood(model, jt, RECORDS, "boolq").total == 4
