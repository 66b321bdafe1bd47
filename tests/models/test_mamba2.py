"""The Mamba-2 LM against transformers' own ``Mamba2ForCausalLM`` (the real library, its ``torch_forward`` path on a
CPU) and against a float64 step-by-step oracle of mamba_ssm's ``Mamba2`` (for what transformers cannot express):
checkpoints written by ``save_pretrained`` and in mamba_ssm's layout load with the writer's logits; our writers
round-trip; the cpu and reference backends agree on logits and gradients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hybridsearch import create_model
from hybridsearch.models import Mamba2Config, Mamba2LM, build
from hybridsearch.models.checkpoint import save_mamba

transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-4  # relative: max |ours - theirs| / max |theirs|, fp32 (measured 1.4e-7 to 7.1e-7)
SEQ = 23  # no multiple of any chunk size below


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.set_verbosity_error()


def hf_lm(seed: int = 0, noise: float = 0.2, **settings) -> torch.nn.Module:
    """A tiny transformers Mamba2ForCausalLM whose every weight is moved off its initial value by ``noise`` (so D,
    the norms and the biases all matter)."""
    torch.manual_seed(seed)
    base = {"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2, "num_heads": 8, "head_dim": 4,
            "state_size": 6, "n_groups": 2, "chunk_size": 5}
    model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**{**base, **settings}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model.eval()


def ids(vocab: int = 100, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (3, SEQ), generator=torch.Generator().manual_seed(seed))


def rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()).item()


def logits(model: torch.nn.Module, tokens: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    for m in getattr(model, "mixers", []):
        m.scan_backend = backend
    with torch.no_grad():
        out = model.eval()(tokens)
    return out.logits if hasattr(out, "logits") else out


# every setting transformers' Mamba2 has, away from its default, across three models
HF_SETTINGS = {
    "groups": {"n_groups": 2, "state_size": 6, "conv_kernel": 3, "chunk_size": 5, "layer_norm_epsilon": 1e-3},
    "bias-limit-tied": {"n_groups": 1, "expand": 3, "num_heads": 6, "head_dim": 8, "use_bias": True,
                        "use_conv_bias": False, "time_step_limit": (0.01, 0.3), "tie_word_embeddings": True,
                        "chunk_size": 7},
    "group-per-head": {"n_groups": 4, "num_heads": 4, "head_dim": 8, "state_size": 3, "chunk_size": 256},
}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", list(HF_SETTINGS))
def test_save_pretrained_folders_load_with_transformers_logits(tmp_path, case, backend):
    theirs = hf_lm(**HF_SETTINGS[case])
    theirs.save_pretrained(tmp_path)
    ours = create_model(tmp_path)
    assert isinstance(ours, Mamba2LM) and ours.cfg.chunk_size == theirs.config.chunk_size
    assert (ours.lm_head.weight is ours.backbone.embedding.weight) == theirs.config.tie_word_embeddings
    tokens = ids()
    assert rel(logits(ours, tokens, backend), logits(theirs, tokens)) <= TOLERANCE
    converted = create_model(theirs)  # the object itself, converted exactly
    assert rel(logits(converted, tokens, backend), logits(theirs, tokens)) <= TOLERANCE


def test_a_config_object_builds_the_architecture():
    config = transformers.Mamba2Config(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_heads=4, head_dim=8,
                                       n_groups=2, state_size=5)
    model = create_model(config)
    assert isinstance(model, Mamba2LM) and model.cfg.ngroups == 2 and len(model.mixers) == 3
    theirs = transformers.Mamba2ForCausalLM(config)
    assert sorted(k.replace("embedding.", "embeddings.") for k in model.state_dict()) == sorted(theirs.state_dict())


def mamba_ssm_layout(theirs: torch.nn.Module, directory: Path, vocab: int, pad: int, **ssm) -> Path:
    """transformers' weights under mamba_ssm's names, with the config mamba_ssm's save_pretrained writes (its
    MambaConfig dataclass as it is, every Mamba2 keyword in ssm_cfg)."""
    c = theirs.config
    config = {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": vocab,
              "ssm_cfg": {"layer": "Mamba2", "d_state": c.state_size, "d_conv": c.conv_kernel, "conv_init": None,
                          "expand": c.expand, "headdim": c.head_dim, "d_ssm": None, "ngroups": c.n_groups,
                          "A_init_range": [1, 16], "D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False,
                          "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 1e-4, "dt_limit": list(c.time_step_limit),
                          "bias": c.use_bias, "conv_bias": c.use_conv_bias, "chunk_size": c.chunk_size,
                          "use_mem_eff_path": True, **ssm},
              "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": pad, "tie_embeddings": c.tie_word_embeddings}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in theirs.state_dict().items()}
    torch.save(sd, directory / "pytorch_model.bin")
    return directory


@pytest.mark.parametrize("tied", [True, False])
def test_mamba_ssm_layout_loads_with_transformers_logits(tmp_path, tied):
    """vocab 100 padded to a multiple of 16 (112 rows), non-default ssm_cfg; mamba_ssm's norms use eps 1e-5."""
    theirs = hf_lm(vocab_size=112, use_bias=True, time_step_limit=(0.0, 0.5), conv_kernel=3,
                   tie_word_embeddings=tied, layer_norm_epsilon=1e-5)
    d = mamba_ssm_layout(theirs, tmp_path, vocab=100, pad=16)
    ours = create_model(d)
    assert ours.cfg.padded_vocab == 112 and ours.cfg.dt_limit == (0.0, 0.5)
    tokens = ids()
    assert rel(logits(ours, tokens), logits(theirs, tokens)) <= TOLERANCE


# -- mamba_ssm's Mamba2, step by step in float64 (what transformers' Mamba2 cannot express) -------------------------
def oracle_logits(sd: dict[str, torch.Tensor], cfg: Mamba2Config, tokens: torch.Tensor) -> torch.Tensor:
    """mamba_ssm's MambaLMHeadModel with Mamba2 layers, written from its ``step`` (the recurrent form) and
    ``rms_norm_ref``, from the state dict alone: one position at a time, float64."""
    w = {k: v.double() for k, v in sd.items()}
    E, H, P, G, N, K = cfg.d_inner, cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.d_conv

    def rms(x, weight, eps, group=None):
        xg = x.unflatten(-1, (-1, group or x.shape[-1]))
        return (xg / torch.sqrt(xg.square().mean(-1, keepdim=True) + eps)).flatten(-2) * weight

    h, residual = w["backbone.embedding.weight"][tokens], None
    for i in range(cfg.n_layer):
        def p(name: str, i: int = i) -> torch.Tensor | None:
            return w.get(f"backbone.layers.{i}.{name}")

        residual = h if residual is None else residual + h
        u = rms(residual, p("norm.weight"), cfg.eps)
        zxbcdt = F.linear(u, p("mixer.in_proj.weight"), p("mixer.in_proj.bias"))
        z, xBC, dt = zxbcdt.split([E, E + 2 * G * N, H], dim=-1)
        conv_w, conv_b = p("mixer.conv1d.weight")[:, 0], p("mixer.conv1d.bias")
        A, D = -torch.exp(p("mixer.A_log")), p("mixer.D")
        dt = F.softplus(dt + p("mixer.dt_bias")).clamp(*cfg.dt_limit)
        state = torch.zeros(tokens.shape[0], H, P, N, dtype=torch.float64)
        window = torch.zeros(tokens.shape[0], E + 2 * G * N, K, dtype=torch.float64)
        ys = []
        for t in range(tokens.shape[1]):
            window = torch.cat([window[..., 1:], xBC[:, t, :, None]], dim=-1)  # mamba_ssm's conv_state roll
            xbc = F.silu((window * conv_w).sum(-1) + (0 if conv_b is None else conv_b))
            x, B, C = xbc.split([E, G * N, G * N], dim=-1)
            x = x.view(-1, H, P)
            Bh = B.view(-1, G, N).repeat_interleave(H // G, dim=1)
            Ch = C.view(-1, G, N).repeat_interleave(H // G, dim=1)
            decay = torch.exp(dt[:, t] * A)[..., None, None]  # (B, H, 1, 1)
            state = state * decay + (dt[:, t, :, None] * x)[..., None] * Bh[:, :, None]
            y = (state * Ch[:, :, None]).sum(-1) + (D.view(H, P) if cfg.D_has_hdim else D[:, None]) * x
            ys.append(y.flatten(1))
        y, zz = torch.stack(ys, 1), F.silu(z)
        if not cfg.rmsnorm:
            y = y * zz
        elif cfg.norm_before_gate:
            y = rms(y, p("mixer.norm.weight"), 1e-5, E // G) * zz
        else:
            y = rms(y * zz, p("mixer.norm.weight"), 1e-5, E // G)
        h = F.linear(y, p("mixer.out_proj.weight"), p("mixer.out_proj.bias"))
    hidden = rms(residual + h, w["backbone.norm_f.weight"], cfg.eps)
    return F.linear(hidden, w["lm_head.weight"])


def randomised(cfg: Mamba2Config, seed: int = 0) -> Mamba2LM:
    torch.manual_seed(seed)
    model = build(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


MAMBA_SSM_ONLY = {
    "norm-before-gate": {"norm_before_gate": True},
    "D-per-channel": {"D_has_hdim": True},
    "no-rmsnorm": {"rmsnorm": False},
    "all-and-limits": {"norm_before_gate": True, "D_has_hdim": True, "dt_limit": (0.02, 0.4), "bias": True,
                       "conv_bias": False, "ngroups": 4, "headdim": 2, "d_conv": 2},
}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", list(MAMBA_SSM_ONLY))
def test_mamba_ssm_only_settings_against_the_step_oracle(tmp_path, case, backend):
    settings = {"d_state": 5, "headdim": 4, "ngroups": 2, "chunk_size": 6, **MAMBA_SSM_ONLY[case]}
    cfg = Mamba2Config(d_model=16, n_layer=2, vocab_size=50, pad_vocab_size_multiple=8, **settings)
    model = randomised(cfg)
    tokens = ids(50)
    want = oracle_logits(model.state_dict(), cfg, tokens)
    assert rel(logits(model, tokens, backend), want) <= TOLERANCE
    d = save_mamba(model, tmp_path / "ssm")  # mamba_ssm's layout holds every one of these settings
    assert json.loads((d / "config.json").read_text())["ssm_cfg"]["layer"] == "Mamba2"
    assert torch.equal(logits(create_model(d), tokens, backend), logits(model, tokens, backend))
    with pytest.raises(ValueError, match="transformers' Mamba2 cannot express") as e:
        save_mamba(model, tmp_path / "hf", fmt="hf")
    assert "\n" not in str(e.value) and not (tmp_path / "hf").exists()


def test_transformers_settings_against_the_step_oracle():
    """The oracle itself agrees with transformers (so it checks what transformers cannot)."""
    theirs = hf_lm(use_bias=True, time_step_limit=(0.0, 0.5), layer_norm_epsilon=1e-5)
    ours = create_model(theirs)
    tokens = ids()
    assert rel(oracle_logits(ours.state_dict(), ours.cfg, tokens), logits(theirs, tokens)) <= TOLERANCE


# -- our writers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("fmt", ["mamba_ssm", "hf"])
def test_save_mamba_round_trips_and_transformers_reads_the_hf_layout(tmp_path, fmt, tied):
    cfg = Mamba2Config(d_model=16, n_layer=2, vocab_size=50, d_state=5, headdim=4, ngroups=2, chunk_size=6,
                       bias=True, dt_limit=(0.0, 0.7), tie_embeddings=tied, eps=1e-5)
    model = randomised(cfg)
    d = save_mamba(model, tmp_path / fmt, fmt=fmt)
    tokens = ids(50)
    loaded = create_model(d)
    assert torch.equal(logits(loaded, tokens), logits(model, tokens))
    if fmt == "hf":
        theirs = transformers.Mamba2ForCausalLM.from_pretrained(d)
        assert rel(logits(model, tokens), logits(theirs, tokens)) <= TOLERANCE


@pytest.mark.parametrize("grad_of", ["full", "embedding-lora"])
def test_cpu_and_reference_backends_agree(grad_of):
    from hybridsearch.peft import apply_peft

    cfg = Mamba2Config(d_model=16, n_layer=2, vocab_size=50, d_state=8, headdim=4, ngroups=2, chunk_size=4,
                       D_has_hdim=True, bias=True)
    runs = []
    for backend in ("reference", "cpu"):
        model = randomised(cfg).train()
        if grad_of != "full":
            model = apply_peft(model, {"methods": {"lora_embed": {"rank": 2}}})
            with torch.no_grad():
                model.peft["lora_embed"].B.normal_()
        for m in model.mixers:
            m.scan_backend = backend
        out = model(ids(50))
        params = [p for p in model.parameters() if p.requires_grad]
        runs.append((out, torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(), params)))
    (a, ga), (b, gb) = runs
    assert rel(a, b) <= 1e-5
    for x, y in zip(ga, gb):
        assert rel(x, y) <= 1e-4


@pytest.mark.parametrize("backend", ["auto", "reference", "cpu"])
def test_real_head_and_state_sizes_across_a_chunk_boundary(backend):
    """mamba_ssm's real head dim 64, state 128 and chunk 256, with 260 positions: two chunks, the second one short
    (auto runs the reference with chunks of 64 on a CPU at N 128)."""
    theirs = hf_lm(noise=0.05, hidden_size=128, num_heads=4, head_dim=64, state_size=128, n_groups=1,
                   chunk_size=256)
    tokens = torch.randint(0, 100, (2, 260), generator=torch.Generator().manual_seed(3))
    assert rel(logits(create_model(theirs), tokens, backend), logits(theirs, tokens)) <= TOLERANCE
