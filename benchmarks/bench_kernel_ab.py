"""The cpu scan kernel against another version of its source, alternated in one process: prints JSON.

    python benchmarks/bench_kernel_ab.py --against HEAD~1 [--repeats 20] [--threads 1] [--layout contiguous]
                                         [--sections scan,conv,training]

Builds ``kernels/selective_scan/cpu.cpp`` as it is in the work tree (B) and as it was at ``--against`` (A, any
git revision, or a file path), then times the scan (forward; forward + backward), the conv and vim-proxy training
steps with A and B in turn, repeat after repeat. On a shared machine whose speed drifts by tens of percent within
minutes, alternating in one process is what makes a few-percent difference measurable: each ratio B / A compares
runs seconds apart. Scan shapes: vim-proxy (64, 128, 17, N 8), also as Vim's pair of directions, mamba-proxy
(8, 256, 256, N 16), a quarter batch of Vim-S; the conv (with its SiLU, K 4) at vim-proxy's (64, 128, 17), also
as Vim's pair of directions, and at mamba-proxy's (8, 256, 256); ``--layout contiguous`` for (batch, dim, L)
contiguous inputs instead of the mixers' channels-innermost views; ``--sections conv,training`` for a subset;
``--a-part-channels`` and ``--a-chunk`` give the A side another work split or checkpoint chunk (same source: compares
those settings alone).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import HYBRID, paired, scan_inputs, vim_training_step  # noqa: E402

from hybridsearch.kernels import (  # noqa: E402
    ScanDirection,
    causal_conv1d,
    causal_conv1d_bidirectional,
    selective_scan,
    selective_scan_bidirectional,
)

# the module, not the function of the same name that hybridsearch.kernels exports
cpu = importlib.import_module("hybridsearch.kernels.selective_scan.cpu")
SOURCE = cpu.SOURCE  # the work tree's kernel source (build() repoints cpu.SOURCE)

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(64, 128, 17, 8, "vim_proxy"), (8, 256, 256, 16, "mamba_proxy"), (16, 768, 197, 16, "vim_s_quarter")]


def source_at(rev: str, folder: Path) -> Path:
    """The kernel source at a git revision (or an existing file), written into ``folder``."""
    if Path(rev).is_file():
        return Path(rev)
    rel = SOURCE.resolve().relative_to(ROOT).as_posix()
    res = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"--against {rev!r}: {res.stderr.strip() or 'git show failed'}")
    path = folder / "cpu.cpp"
    path.write_text(res.stdout)
    return path


def build(source: Path) -> object:
    cpu.SOURCE = source
    return cpu._load(cpu._build())


PART_CHANNELS = {"A": cpu._PART_CHANNELS, "B": cpu._PART_CHANNELS}  # channels per task of each side
CHUNK = {"A": cpu._chunk, "B": cpu._chunk}  # checkpoint chunk of each side, positions for a state size N


def alternate(libs: dict[str, object], fn: Callable[[], object], repeats: int, per_repeat: int = 1) -> dict:
    """``fn`` timed with each library in turn (bench_cpu.paired), and the ratio B / A of the median times."""

    def using(name: str, lib: object) -> Callable[[], object]:
        def run() -> object:
            cpu._state["lib"] = lib  # the library the cpu backend calls
            cpu._PART_CHANNELS = PART_CHANNELS[name]
            cpu._chunk = CHUNK[name]
            return fn()

        return run

    out = paired({name: using(name, lib) for name, lib in libs.items()}, repeats, per_repeat)
    out.pop("speedup_median")  # A / B: this benchmark reports B / A
    out["B_over_A_median"] = round(out["B"]["median_ms"] / out["A"]["median_ms"], 3)
    return out


def pair_ab(libs: dict[str, object], batch: int, dim: int, L: int, N: int, layout: str, repeats: int) -> dict:
    """Vim's bidirectional scan (two directions' inputs, one z) forward and forward + backward, A against B."""
    dirs = [scan_inputs(batch, dim, L, N, True, layout) for _ in range(2)]
    z, gout = dirs[0][6], scan_inputs(batch, dim, L, N, False, layout)[6]
    pair = [ScanDirection(*(d[i] for i in (0, 1, 2, 3, 4, 5)), delta_bias=d[7]) for d in dirs]
    leaves = [t for d in dirs for i, t in enumerate(d) if i != 6] + [z]

    def fwd() -> None:
        with torch.no_grad():
            selective_scan_bidirectional(*pair, z, True, backend="cpu")

    def fwd_bwd() -> None:
        torch.autograd.grad(selective_scan_bidirectional(*pair, z, True, backend="cpu"), leaves, gout)

    return {"forward": alternate(libs, fwd, repeats), "forward_backward": alternate(libs, fwd_bwd, repeats)}


def conv_ab(libs: dict[str, object], batch: int, dim: int, L: int, pair: bool, layout: str, repeats: int) -> dict:
    """The conv (or Vim's pair of convs of one x) forward and forward + backward, A against B."""
    def seq() -> torch.Tensor:
        x = torch.randn(batch, L, 2 * dim)[..., :dim].transpose(1, 2)  # the x half of the in_proj output
        return x.contiguous() if layout == "contiguous" else x

    x, gouts = seq().requires_grad_(), [seq() for _ in range(2 if pair else 1)]
    params = [torch.randn(dim, 4, requires_grad=True), torch.randn(dim, requires_grad=True)] * (2 if pair else 1)

    def run() -> tuple[torch.Tensor, ...]:
        if pair:
            return causal_conv1d_bidirectional(x, *params, backend="cpu")
        return (causal_conv1d(x, *params, backend="cpu"),)

    def fwd() -> None:
        with torch.no_grad():
            run()

    def fwd_bwd() -> None:
        torch.autograd.grad(run(), [x, *params], gouts)

    per = max(1, 5 * 64 * 17 // (batch * L))
    return {"forward": alternate(libs, fwd, repeats, per_repeat=per),
            "forward_backward": alternate(libs, fwd_bwd, repeats, per_repeat=per)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, help="git revision (or file) of the A source")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=4, help="vim-proxy steps per timed repeat")
    ap.add_argument("--a-part-channels", type=int, default=cpu._PART_CHANNELS,
                    help="channels per task on the A side (the work tree's value on B): compares the work split")
    ap.add_argument("--a-chunk", type=int, default=0,
                    help="checkpoint chunk in positions on the A side for every N (default: the work tree's rule)")
    ap.add_argument("--layout", choices=("model", "contiguous"), default="model",
                    help="the scan's and the conv's inputs: channels innermost as the mixers pass them, or "
                         "(batch, dim, L) contiguous")
    ap.add_argument("--sections", default="scan,conv,training",
                    help="comma-separated subset of scan, conv, training")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    PART_CHANNELS["A"] = args.a_part_channels
    if args.a_chunk:
        CHUNK["A"] = lambda N: args.a_chunk
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        libs = {"A": build(source_at(args.against, Path(tmp))), "B": build(SOURCE)}
    res: dict[str, dict] = {}
    for batch, dim, L, N, label in SHAPES if "scan" in sections else ():
        xs = scan_inputs(batch, dim, L, N, True, args.layout)
        gout = scan_inputs(batch, dim, L, N, False, args.layout)[6]

        def fwd(xs: list[torch.Tensor] = xs) -> None:
            with torch.no_grad():
                selective_scan(*xs, True, backend="cpu")

        def fwd_bwd(xs: list[torch.Tensor] = xs, gout: torch.Tensor = gout) -> None:
            torch.autograd.grad(selective_scan(*xs, True, backend="cpu"), xs, gout)

        res[f"scan {label} (batch={batch}, dim={dim}, L={L}, N={N})"] = {
            "forward": alternate(libs, fwd, args.repeats), "forward_backward": alternate(libs, fwd_bwd, args.repeats)}
        if label == "vim_proxy":  # Vim's two directions of one z, averaged (one call each way)
            res[f"scan pair {label} (batch={batch}, dim={dim}, L={L}, N={N})"] = pair_ab(
                libs, batch, dim, L, N, args.layout, args.repeats)
    # the mixers' conv1d + SiLU, channels innermost as the mixers pass it (or contiguous): Mamba's one direction at
    # vim-proxy's and mamba-proxy's shapes, Vim's two directions of one x (one call when the library has the pair)
    conv_shapes = ((64, 128, 17, "vim_proxy"), (8, 256, 256, "mamba_proxy")) if "conv" in sections else ()
    for batch, dim, L, label in conv_shapes:
        for pair in (False, True) if label == "vim_proxy" else (False,):
            res[f"conv{' pair' if pair else ''} {label} ({batch}, {dim}, {L}), K 4"] = conv_ab(
                libs, batch, dim, L, pair, args.layout, args.repeats)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    for name, peft in (("full_ft", None), ("lorap_x+addscan", HYBRID)) if "training" in sections else ():
        step = vim_training_step(peft, "cpu", x, y)
        t = alternate(libs, step, max(3, args.repeats // 2), per_repeat=args.train_steps)
        t["images_per_s"] = {k: round(64e3 / t[k]["median_ms"], 1) for k in libs}
        res[f"vim-proxy training, {name}"] = t
    print(json.dumps({
        "benchmark": "cpu scan kernel: work tree (B) against another source (A), alternated in one process",
        "command": " ".join(["python", "benchmarks/bench_kernel_ab.py", *sys.argv[1:]]), "against": args.against,
        "results": res,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "vector_width": cpu.vector_width(), "threads": args.threads,
                    "kernel_threads_B": cpu._state.get("threads"),
                    "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__},
    }, indent=2))


if __name__ == "__main__":
    main()
