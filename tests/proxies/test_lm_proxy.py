"""The bundled mamba-proxy and mamba2-proxy (load, adapters round-trip exactly, one pretraining recipe) and the
bundled commonsense_proxy task set."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hybridsearch import apply_peft, create_model, save_adapters
from hybridsearch.data import commonsense as cs
from hybridsearch.data.commonsense import BUNDLED_ROOT, TRAIN_FILE
from hybridsearch.data.tokenizers import ByteTokenizer
from hybridsearch.models import MODELS
from hybridsearch.proxies.commonsense_proxy import PROXY_TASKS, build_task_set, option_words, target_word
from hybridsearch.proxies.wordnet import Synset, _parse_line, synset_text
from hybridsearch.training.lm_eval import available_tasks
from hybridsearch.training.lm_loading import load_lm

IDS = torch.tensor([list(b"dog: a member of the genus Canis")])


LM_PROXIES = ("mamba-proxy", "mamba2-proxy")


@pytest.mark.parametrize("name", LM_PROXIES)
def test_lm_proxy_loads_in_mamba_ssm_layout(name: str) -> None:
    spec = MODELS.get(name)
    folder = spec.checkpoint()
    conf = json.loads((folder / "config.json").read_text())
    assert conf["vocab_size"] == 258 and conf["pad_vocab_size_multiple"] == 8 and conf["d_model"] == 128
    assert (folder / "pytorch_model.bin").stat().st_size < 4_000_000
    meta = json.loads((folder / "pretrain.json").read_text())
    assert meta["model"] == name and meta["architecture"] == spec.config.to_dict()  # the registry's architecture
    assert meta["heldout_loss_nats_per_byte"] < 2.5  # far below a uniform byte model (ln 258 = 5.55)
    model, tok = load_lm(name)
    assert isinstance(tok, ByteTokenizer) and model.cfg == spec.config and model.cfg.padded_vocab == 264
    with torch.no_grad():
        logits = model(IDS)
    assert logits.shape == (1, IDS.shape[1], 264) and torch.isfinite(logits).all()
    # pretrained, not random: "dog: a member of the genus Canis" costs ~1.1 nats a byte (random weights: ~5.6)
    # and "s" is among the three likeliest bytes after "...genus Cani"
    assert F.cross_entropy(logits[0, :-1], IDS[0, 1:]).item() < 1.5
    assert ord("s") in logits[0, -2].topk(3).indices.tolist()


@pytest.mark.parametrize("name", LM_PROXIES)
@pytest.mark.parametrize("methods", [{"lora_X": {"rank": 8}}, {"affix": {}}, {"additional_scan": {}}],
                         ids=["lora_X", "affix", "additional_scan"])
def test_proxy_adapters_save_and_reload_identically(tmp_path: Path, methods: dict, name: str) -> None:
    model = apply_peft(create_model(name), {"methods": methods})
    with torch.no_grad():  # move every adapter tensor off its (often zero) init
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()
    with torch.no_grad():
        want = model(IDS)
    save_adapters(model, tmp_path / "ad")
    again, _ = load_lm(name, adapters=tmp_path / "ad")
    again.eval()
    with torch.no_grad():
        got = again(IDS)
        base = create_model(name).eval()(IDS)
    assert torch.equal(got, want) and not torch.allclose(base, want)


def test_bundled_task_set_is_llm_adapters_format_and_held_out() -> None:
    root = BUNDLED_ROOT
    assert available_tasks(root) == [t for t in cs.TASKS if t in PROXY_TASKS]
    assert "Princeton University" in (root / "NOTICE").read_text()
    train = cs.load_records(root / TRAIN_FILE)
    raw = json.loads((root / TRAIN_FILE).read_text())
    assert list(raw[0]) == ["instruction", "input", "output", "answer"] and len(train) == 3000
    assert cs.check_records(train) == []
    train_words = set().union(*(option_words(r) for r in raw))
    for task in PROXY_TASKS:
        test = json.loads(cs.eval_file(root, task).read_text())
        assert len(test) == 200 and cs.check_records([cs.CommonsenseRecord(**r) for r in test]) == []
        labels = cs.parse_label_set(test[0]["instruction"])
        counts = {lab: sum(r["answer"] == lab for r in test) for lab in labels}
        assert len(set(counts.values())) == 1  # exactly balanced: a constant answer scores chance
        assert not set().union(*(option_words(r) for r in test)) & train_words  # held-out words never in training
    manifest = json.loads((root / "manifest.json").read_text())
    for rel, digest in manifest["sha256"].items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel


def _synsets() -> list[Synset]:
    """A synthetic WordNet: 60 words per part of speech, each part of speech with its own ending."""
    out = []
    for f, (pos, lex, ending) in enumerate((("n", "noun.act", "tion"), ("v", "verb.change", "ize"),
                                             ("a", "adj.all", "ous"), ("r", "adv.all", "ly"))):
        for i in range(60):
            stem = f"{'abcdefghij'[i % 10]}{'klmnop'[i // 10]}ra"
            out.append(Synset(f * 100 + i, pos, lex, (stem + ending,), f"definition {i} of {pos}", (), ()))
    return out


def test_task_builder_is_deterministic_balanced_and_holds_words_out() -> None:
    info: dict = {}
    a = build_task_set(synsets=_synsets(), seed=3, train_per_task=8, test_per_task=4, info=info)
    b = build_task_set(synsets=_synsets(), seed=3, train_per_task=8, test_per_task=4)
    assert a == b and len(a[0]) == 8 * len(PROXY_TASKS) and all(len(v) == 4 for v in a[1].values())
    assert info["suffixes"] == {"noun": ["ion"], "verb": ["ize"], "adjective": ["ous"], "adverb": ["aly"]}
    train_words = set().union(*(option_words(r) for r in a[0]))
    for task, records in a[1].items():
        assert not set().union(*(option_words(r) for r in records)) & train_words  # targets and distractors
        labels = cs.parse_label_set(records[0]["instruction"])
        counts = {lab: sum(r["answer"] == lab for r in records) for lab in labels}
        assert len(set(counts.values())) == 1, (task, counts)
    assert build_task_set(synsets=_synsets(), seed=4, train_per_task=8, test_per_task=4) != a


def test_task_items_carry_the_right_answer() -> None:
    """Each record's answer follows from the parts of speech it was built from (hand-checked on the fixture)."""
    pos_of = {"ion": "noun", "ize": "verb", "ous": "adjective", "aly": "adverb"}
    train, tests = build_task_set(synsets=_synsets(), seed=0, train_per_task=8, test_per_task=4)
    for r in train + [r for v in tests.values() for r in v]:
        text, answer = r["instruction"], r["answer"]
        if "true or false" in text:
            word = re.search(r'is "(\w+)" an adverb\?', text)[1]
            assert pos_of[word[-3:]] in ("adverb", "adjective")
            assert (pos_of[word[-3:]] == "adverb") == (answer == "true")
            continue
        wanted = "verb" if "Which word is a verb?" in text else "adverb"  # PIQA / ARC vs the two sentences
        options = re.findall(r"(?:Answer|Solution|Ending|Option)\d: (\w+)", text)
        assert len(options) == int(re.search(r"(\d)$", text)[1]) and len(set(options)) == len(options)
        assert [pos_of[w[-3:]] == wanted for w in options].count(True) == 1
        assert pos_of[options[int(answer[-1]) - 1][-3:]] == wanted
        assert target_word(r) == options[int(answer[-1]) - 1]


def test_wordnet_line_parsing() -> None:
    line = ("00002312 00 a 02 abaxial 0 dorsal(a) 4 002 ;c 06037666 n 0000 ! 00002527 a 0101 | facing away from "
            'the axis of an organ; "the abaxial surface of a leaf"; "dorsal fins"  ')
    s = _parse_line(line, "data.adj", 1)
    assert s.lemmas == ("abaxial", "dorsal") and s.lexname == "adj.all" and s.pos == "a"
    assert s.definition == "facing away from the axis of an organ"
    assert s.examples == ("the abaxial surface of a leaf", "dorsal fins")
    assert synset_text(s) == 'abaxial, dorsal: facing away from the axis of an organ; "the abaxial surface of a ' \
                             'leaf"; "dorsal fins"'
    noun = _parse_line("00015388 03 n 02 animal 0 animate_being 0 001 @ 00004475 n 0000 | a living organism", "n", 1)
    assert noun.hypernyms == (4475,) and noun.lemmas == ("animal", "animate being") and noun.examples == ()


def _synthetic_wordnet(tmp_path: Path, per_pos: int = 20) -> Path:
    wn = tmp_path / "wordnet"
    wn.mkdir()
    for pos, code in (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r")):
        lines = [f"  licence header line {i}" for i in range(3)]
        lines += [f"{i:08d} 03 {code} 01 word{i} 0 000 | meaning number {i}; \"use word{i} here\""
                  for i in range(per_pos)]
        (wn / f"data.{pos}").write_text("\n".join(lines) + "\n")
    return wn


@pytest.mark.parametrize("name", LM_PROXIES)
def test_pretrain_lm_proxy_smoke(tmp_path: Path, name: str) -> None:
    """Two steps on a synthetic WordNet folder: the real reader, corpus, loop and mamba_ssm writer, for the
    registered architecture of each LM proxy."""
    from hybridsearch.proxies.mamba_proxy import PretrainRecipe, pretrain_mamba_proxy

    recipe = PretrainRecipe(steps=2, batch_size=2, seq_len=16, warmup_steps=1, heldout_synsets=4, heldout_windows=2)
    info = pretrain_mamba_proxy(_synthetic_wordnet(tmp_path), tmp_path / "out", recipe, log=lambda s: None,
                                name=name)
    assert info["heldout_loss_nats_per_byte"] > 0 and info["recipe"]["steps"] == 2 and info["model"] == name
    model = create_model(tmp_path / "out")
    assert model.cfg == MODELS.get(name).config


def test_pretrain_refuses_an_unknown_lm_proxy(tmp_path: Path) -> None:
    from hybridsearch.proxies.mamba_proxy import pretrain_mamba_proxy

    with pytest.raises(ValueError, match="unknown LM proxy 'vim-proxy'; allowed: mamba-proxy, mamba2-proxy"):
        pretrain_mamba_proxy(tmp_path, None, name="vim-proxy")


def test_pretrain_command_rebuilds_mamba2_proxy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The command's target registry: ``pretrain mamba2-proxy --steps 1 --out DIR`` writes a loadable Mamba-2 LM and
    its pretrain.json."""
    from hybridsearch.cli import main
    from hybridsearch.commands.pretrain import TARGETS

    assert set(TARGETS.names()) == {"vim-proxy", "mamba-proxy", "mamba2-proxy", "commonsense-proxy"}
    out = tmp_path / "m2"
    assert main(["pretrain", "mamba2-proxy", "--steps", "1", "--out", str(out), "--wordnet",
                 str(_synthetic_wordnet(tmp_path, per_pos=400))]) == 0  # the default recipe holds out 1000 synsets
    meta = json.loads((out / "pretrain.json").read_text())
    assert meta["model"] == "mamba2-proxy" and meta["recipe"]["steps"] == 1 and meta["recipe"]["warmup_steps"] == 1
    assert type(create_model(out)).__name__ == "Mamba2LM"
