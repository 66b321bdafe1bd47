"""The ``cpu`` backend of the selective scan: the fused C++ kernel of ``cpu.cpp``, built on first use.

Why plain C++ through ctypes (measured, see docs/kernels.md): the kernel includes no torch header, so the first
build takes 6.5-7.7 s with the system compiler (every kernel and compiled-in shape) where a
``torch.utils.cpp_extension`` module that only includes torch's header took about 30 s; it needs neither ninja nor
Python headers, and one build serves every torch version. Installing the package compiles nothing: ``cpu.cpp``
ships as package data.

* Build: ``$CXX`` (else ``c++``, ``g++`` or ``clang++``) with ``-O3 -march=native`` into
  ``$HYBRIDSEARCH_CACHE/kernels`` (default ``~/.cache/hybridsearch/kernels``; a temporary folder when that is
  not writable), under a file name that hashes the source, the flags and the CPU; a file lock makes
  concurrent workers build once, the others wait and load it.
* ``available()`` says whether it builds; when it does not, it warns once (one line) and the dispatcher's
  ``auto`` uses the reference. Asking for ``backend="cpu"`` then raises ``CpuScanUnavailable``.
* The kernel reads every input in place through its strides (fp32, bf16 or fp16), computes in fp32 and writes
  ``out`` and the input gradients in their input's dtype and memory layout.
* Threads: torch's thread count, run as torch's own OpenMP workers where torch runs on OpenMP (Linux; the
  runtime's ``GOMP_parallel`` handed to the library when it loads), else threads the library starts per call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from hybridsearch.errors import HybridSearchError

from ..split import row_slice_grad

SOURCE = Path(__file__).with_name("cpu.cpp")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-march=native", "-fno-math-errno", "-pthread")
_ABI = 4  # hs_scan_abi_version() of a library this wrapper can drive
# Channels per task (in vector blocks of vector_width()): fewer dB / dC partial sums and horizontal sums with more,
# enough tasks to share out with fewer. 128 (8 blocks with AVX-512, 16 with AVX2) against 64 on AVX2: vim-proxy's scan
# forward + backward 0.98x the time, training 0.99x, mamba-proxy's and Vim-S's scan unchanged (bench_kernel_ab.py).
# A function of the shapes and the build only, never of the thread count: results stay bitwise identical.
_PART_CHANNELS = 128
_DTYPES = {torch.float32: 1, torch.bfloat16: 2, torch.float16: 3}


class CpuScanUnavailable(HybridSearchError, RuntimeError):
    """The C++ kernel of the ``cpu`` backend could not be built or loaded on this machine."""


class ScanBackendWarning(UserWarning):
    """``auto`` could not use the fast CPU kernel and falls back to the reference."""


# ---- building and loading -------------------------------------------------------------------------------------
_lock = threading.Lock()
_state: dict[str, Any] = {}


def cache_dir() -> Path:
    """Where built kernels live: ``$HYBRIDSEARCH_CACHE/kernels``, default ``~/.cache/hybridsearch/kernels``."""
    env = os.environ.get("HYBRIDSEARCH_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "hybridsearch"
    return root / "kernels"


def _compiler() -> str:
    cxx = os.environ.get("CXX")
    if cxx:
        return cxx
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise CpuScanUnavailable("no C++ compiler found (set CXX, or install g++ or clang++)")


def _cpu_signature() -> str:
    """What -march=native depends on: the machine and its CPU feature flags."""
    sig = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            sig += next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        sig += platform.processor()
    return sig


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def _build() -> Path:
    cxx = _compiler()
    src = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, cxx.encode(), " ".join(FLAGS).encode(), _cpu_signature().encode()]))
    name = f"selective_scan_cpu-{key.hexdigest()[:16]}.so"
    folder = cache_dir()
    if not (folder / name).exists() and not _writable(folder):
        folder = Path(tempfile.gettempdir()) / f"hybridsearch-{os.getuid() if hasattr(os, 'getuid') else 0}"
        folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists():
        return target
    with _FileLock(folder / (name + ".lock")):
        if target.exists():  # another process built it while we waited
            return target
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        for flags in (FLAGS, tuple(f for f in FLAGS if f != "-march=native")):  # a compiler without -march=native
            try:
                res = subprocess.run([cxx, *flags, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True,
                                     timeout=600)
            except (OSError, subprocess.SubprocessError) as e:
                raise CpuScanUnavailable(f"cannot run the C++ compiler {cxx!r}: {e}") from None
            if res.returncode == 0:
                break
        if res.returncode != 0:
            tmp.unlink(missing_ok=True)
            first = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr.strip()[:200])
            raise CpuScanUnavailable(f"{Path(cxx).name} failed on {SOURCE.name}: {first}")
        os.replace(tmp, target)  # atomic: a reader never sees half a library
    return target


class _FileLock:
    """An exclusive lock on a file (POSIX fcntl); elsewhere a no-op (the atomic rename still holds)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, -1

    def __enter__(self) -> _FileLock:
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the lock


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.hs_scan_abi_version.restype = lib.hs_scan_vector_width.restype = ctypes.c_int64
    if lib.hs_scan_abi_version() != _ABI:
        raise CpuScanUnavailable(f"{path} has ABI {lib.hs_scan_abi_version()}, expected {_ABI}")
    for fn, arg in (("hs_scan_forward_pair", _Args), ("hs_scan_backward_pair", _Args),
                    ("hs_conv_forward_pair", ConvArgs), ("hs_conv_backward_pair", ConvArgs)):
        if hasattr(lib, fn):  # absent from libraries of older sources, which bench_kernel_ab.py compares against
            getattr(lib, fn).argtypes = [ctypes.POINTER(arg)] * 2
            getattr(lib, fn).restype = ctypes.c_int
    for fn, arg, res in (("hs_scan_ckpt_size", _Args, ctypes.c_int64), ("hs_scan_forward", _Args, ctypes.c_int),
                         ("hs_scan_backward", _Args, ctypes.c_int), ("hs_conv_forward", ConvArgs, ctypes.c_int),
                         ("hs_conv_backward", ConvArgs, ctypes.c_int), ("hs_norm_forward", NormArgs, ctypes.c_int),
                         ("hs_norm_backward", NormArgs, ctypes.c_int)):
        getattr(lib, fn).argtypes = [ctypes.POINTER(arg)]
        getattr(lib, fn).restype = res
    if hasattr(lib, "hs_set_openmp"):  # absent from libraries of older sources
        lib.hs_set_openmp.argtypes, lib.hs_set_openmp.restype = [ctypes.c_void_p], None
        runtime = _openmp_runtime()
        _state["threads"] = f"OpenMP ({runtime[0]})" if runtime else "own threads"
        lib.hs_set_openmp(runtime[1] if runtime else None)
    return lib


def _openmp_runtime() -> tuple[str, int] | None:
    """(path, address of GOMP_parallel) of the OpenMP runtime torch's operators run on, or None (another parallel
    backend, or not Linux). The kernels then run their threads as torch's own: torch's OpenMP workers spin-wait
    for a while after each operator, and threads of the kernels' own would share the cores with them."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {ln.split(maxsplit=5)[5] for ln in maps.splitlines() if len(ln.split()) >= 6}
    found = [p for p in paths if re.match(r"lib(gomp|iomp5|omp)\b.*\.so", Path(p).name)]
    torch_lib = Path(torch.__file__).parent
    for path in sorted(found, key=lambda p: (not Path(p).is_relative_to(torch_lib), p)):  # torch's own first
        try:
            return path, ctypes.cast(ctypes.CDLL(path).GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def threading_runtime() -> str:
    """How the kernels run their threads: on torch's OpenMP runtime (its path) or on threads of their own."""
    library()
    return _state.get("threads", "own threads")


def library() -> ctypes.CDLL:
    """The built kernel library (built on the first call); raises ``CpuScanUnavailable`` when it cannot be."""
    lib = _state.get("lib")  # every scan asks: no lock once it is loaded
    if lib is not None:
        return lib
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        if "error" in _state:
            raise CpuScanUnavailable(_state["error"])
        try:
            lib = _load(_build())
        except Exception as e:
            msg = str(e) if isinstance(e, CpuScanUnavailable) else f"{type(e).__name__}: {e}"
            _state["error"] = msg
            raise CpuScanUnavailable(msg) from None
        _state["lib"] = lib
        return lib


def vector_width() -> int:
    """fp32 lanes per vector of the built kernel: 16 with AVX-512, 8 with AVX2, else 4 (the build's target is
    this machine's CPU)."""
    if "width" not in _state:
        _state["width"] = int(library().hs_scan_vector_width())
    return _state["width"]


def available() -> bool:
    """Whether the kernel builds here; the first failure warns once, in one line (``auto`` then uses the
    reference backend)."""
    if "lib" in _state:
        return True
    try:
        library()
        return True
    except CpuScanUnavailable as e:
        if not _state.get("warned"):
            _state["warned"] = True
            # warn_explicit with no source line: the warning prints as a single line
            warnings.warn_explicit(f"the cpu selective scan is unavailable ({e}); using the reference backend",
                                   ScanBackendWarning, "hybridsearch.kernels", 0)
        return False


# ---- the C ABI --------------------------------------------------------------------------------------------------
class _TArg(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int64), ("s", ctypes.c_int64 * 4)]


_INTS = ("batch", "dim", "L", "N", "G", "chunk", "part", "nthreads", "softplus", "reverse")
_TENSORS = ("u", "delta", "z", "B", "C", "out", "dout", "du", "ddelta", "dz", "dB", "dC")
_POINTERS = ("A", "D", "bias", "h0", "dlast", "last", "ckpt", "dA", "dD", "dbias", "dh0")


class _Args(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int64) for n in _INTS] + [(n, _TArg) for n in _TENSORS]
                + [(n, ctypes.c_void_p) for n in _POINTERS]
                + [("scale", ctypes.c_double), ("accumulate", ctypes.c_int64), ("R", ctypes.c_int64)]
                + [(n, _TArg) for n in ("dtr", "ddtr")] + [(n, ctypes.c_void_p) for n in ("dtw", "ddtw")])


class ConvArgs(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int64) for n in ("batch", "dim", "L", "K", "nthreads", "silu", "reverse")]
                + [(n, _TArg) for n in ("x", "out", "dout", "dx")]
                + [(n, ctypes.c_void_p) for n in ("w", "bias", "dw", "dbias")] + [("accumulate", ctypes.c_int64)])


class NormArgs(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int64) for n in ("rows", "d", "nthreads")]
                + [(n, _TArg) for n in ("x", "out", "dout", "dx")]
                + [(n, ctypes.c_void_p) for n in ("w", "rstd", "dw")] + [("eps", ctypes.c_double)])


_PER_DIRECTION = 9  # a bidirectional scan's tensors per direction: u, delta, A, B, C, D, delta_bias, h0, delta_proj


def targ(t: Tensor | None, grouped: bool = False) -> _TArg:
    """A tensor argument of the kernels: data pointer, dtype code and element strides (the unused ones 0).
    ``grouped``: a (batch, N, L) tensor read as (batch, 1, N, L) (B, C and their gradients, a low-rank delta)."""
    if t is None:
        return _TArg()
    s = t.stride()
    return _TArg(t.data_ptr(), _DTYPES[t.dtype], (s[0], 0, s[1], s[2]) if grouped and len(s) == 3 else s)


def ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _chunk(N: int) -> int:
    """Positions per checkpoint chunk: the backward's per-chunk buffers (about 4 x chunk x N vectors of W fp32,
    128 KiB) stay in L2. At N 16 on AVX2 (W 8): 64 positions against 32, the scan's forward 0.93-0.96x the time and
    forward + backward 0.97x; 128 is slower again (benchmarks/RESULTS.md)."""
    return min(128, max(8, 8192 // (max(N, 1) * vector_width())))


class _Call:
    """The shapes, the fp32 side tensors and the kernel arguments of one scan.

    Built for every call of a training step's scans, so it does as few tensor operations as it can: B and C of
    (batch, N, L) are read as (batch, 1, N, L) through their strides (``targ(grouped=True)``), not as views, and
    the inputs the kernel reads in place are kept as they are."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, reverse, delta_proj=None):
        if A.is_complex():
            raise ValueError("the cpu selective scan supports only real A")
        if u.dim() != 3:
            raise ValueError(f"u must be (batch, dim, L); got {tuple(u.shape)}")
        batch, dim, L = u.shape
        bshape = B.shape
        if bshape != C.shape or len(bshape) not in (3, 4) or bshape[0] != batch or bshape[-1] != L:
            raise ValueError(f"B and C must both be (batch, N, L) or (batch, G, N, L) with batch {batch}, L {L}; "
                             f"got {tuple(B.shape)}, {tuple(C.shape)}")
        G, N = (1, bshape[1]) if len(bshape) == 3 else (bshape[1], bshape[2])
        if G == 0 or dim % G or A.shape != (dim, N):
            raise ValueError(f"A must be (dim, N) = ({dim}, {N}) and dim divisible by the {G} groups")
        R = 0 if delta_proj is None else delta_proj.shape[-1]
        if delta_proj is not None and (delta_proj.dim() != 2 or delta_proj.shape[0] != dim or R == 0):
            raise ValueError(f"delta_proj must be (dim, R) with dim {dim} and R >= 1; got {tuple(delta_proj.shape)}")
        delta_shape = (batch, R, L) if delta_proj is not None else u.shape
        for name, t, shape in (("delta", delta, delta_shape), ("z", z, u.shape), ("D", D, (dim,)),
                               ("delta_bias", delta_bias, (dim,)), ("initial_state", initial_state, (batch, dim, N))):
            if t is not None and t.shape != shape:
                raise ValueError(f"{name} must be {tuple(shape)}; got {tuple(t.shape)}")
        for t in (u, delta, A, B, C, D, z, delta_bias, initial_state, delta_proj):
            if t is not None and not t.is_cpu:
                raise ValueError(f"the cpu selective scan needs CPU tensors; got one on {t.device}")
        self.shape = (batch, dim, L, G, N)
        self.u, self.delta, self.z, self.B, self.C = (readable(t) for t in (u, delta, z, B, C))
        self.A, self.D, self.bias, self.h0, self.W = (_f32(t) for t in (A, D, delta_bias, initial_state, delta_proj))
        self.out_dtype = u.dtype
        self.softplus, self.reverse = bool(softplus), bool(reverse)
        part = max(1, _PART_CHANNELS // vector_width())
        a = _Args(batch, dim, L, N, G, _chunk(N), part, torch.get_num_threads(), self.softplus, self.reverse)
        a.u, a.delta, a.z = targ(self.u), targ(self.delta), targ(self.z)
        a.B, a.C = targ(self.B, grouped=True), targ(self.C, grouped=True)
        a.A, a.D, a.bias, a.h0 = ptr(self.A), ptr(self.D), ptr(self.bias), ptr(self.h0)
        if self.W is not None:  # the low-rank delta: read as B is, (batch, groups = 1, R, L)
            a.R, a.delta, a.dtr, a.dtw = R, _TArg(), targ(self.delta, grouped=True), ptr(self.W)
        a.scale = 1.0
        self._args = a  # the inputs' part of the kernel arguments, shared by the forward and the backward

    def args(self) -> _Args:
        """A fresh copy of the kernel arguments with the inputs filled in, and torch's thread count now (the
        backward runs later than the forward that built them)."""
        a = _Args.from_buffer_copy(self._args)
        a.nthreads = torch.get_num_threads()
        return a

    def forward(self, save: bool, out: Tensor | None = None,
                scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor | None]:
        """out = scale * the scan's output; given ``out`` (the kernel's dtype and layout), added onto it in place."""
        a, result = self.forward_args(save, out, scale)
        run_kernel("hs_scan_forward", a)
        return result

    def forward_args(self, save: bool, out: Tensor | None = None,
                     scale: float = 1.0) -> tuple[_Args, tuple[Tensor, Tensor, Tensor | None]]:
        """The forward's kernel arguments and the (out, last, ckpt) tensors it will write."""
        lib = library()
        batch, dim, L, G, N = self.shape
        a = self.args()
        a.scale, a.accumulate = scale, out is not None
        if out is None:
            out = empty_like_layout(self.u)  # channels innermost stays so for the out_proj that follows
        last = torch.empty((batch, dim, N))
        ckpt = torch.empty(lib.hs_scan_ckpt_size(ctypes.byref(a))) if save else None
        a.out, a.last, a.ckpt = targ(out), ptr(last), ptr(ckpt)
        a.keep = (out, last, ckpt)  # what the pointers point into, alive until the kernel has run
        return a, (out, last, ckpt)

    def backward(self, ckpt: Tensor, needs: tuple[bool, ...], dout: Tensor | None, dlast: Tensor | None,
                 scale: float = 1.0, dz: Tensor | None = None) -> list[Tensor | None]:
        """The input gradients (u, delta, A, B, C, D, z, delta_bias, initial_state, delta_proj; None where not
        wanted) for the output's gradient ``dout`` (the scan's output times ``scale``); given ``dz``, z's gradient is
        added onto it in place (and returned)."""
        a, grads = self.backward_args(ckpt, needs, dout, dlast, scale, dz)
        run_kernel("hs_scan_backward", a)
        return grads

    def backward_args(self, ckpt: Tensor, needs: tuple[bool, ...], dout: Tensor | None, dlast: Tensor | None,
                      scale: float = 1.0, dz: Tensor | None = None) -> tuple[_Args, list[Tensor | None]]:
        """The backward's kernel arguments and the gradients it will write (see ``backward``)."""
        batch, dim, L, G, N = self.shape
        a = self.args()
        a.scale, a.accumulate = scale, dz is not None
        dout = torch.zeros((batch, dim, L)) if dout is None else readable(dout)
        dlast = None if dlast is None else _f32(dlast)
        du = _grad_like(self.u, needs[0])
        ddelta = _grad_like(self.delta, needs[1])  # (batch, R, L) for a low-rank delta
        if dz is None and self.z is not None:
            dz = _grad_like(self.z, needs[6])
        dB = _grad_like(self.B, needs[3])
        dC = _grad_like(self.C, needs[4])
        dA = torch.empty((dim, N)) if needs[2] else None
        dD = torch.empty(dim) if self.D is not None and needs[5] else None
        dbias = torch.empty(dim) if self.bias is not None and needs[7] else None
        dh0 = torch.empty((batch, dim, N)) if self.h0 is not None and needs[8] else None
        dW = torch.empty(self.W.shape) if self.W is not None and needs[9] else None
        a.dout, a.du, a.dz = targ(dout), targ(du), targ(dz)
        if self.W is None:
            a.ddelta = targ(ddelta)
        else:
            a.ddtr, a.ddtw = targ(ddelta, grouped=True), ptr(dW)
        a.dB, a.dC = targ(dB, grouped=True), targ(dC, grouped=True)
        a.dlast, a.ckpt = ptr(dlast), ptr(ckpt)
        a.dA, a.dD, a.dbias, a.dh0 = (ptr(t) for t in (dA, dD, dbias, dh0))
        a.keep = (dout, dlast, du, ddelta, dz, dB, dC, dA, dD, dbias, dh0, dW)  # alive until the kernel has run
        return a, [du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, dW]


def run_kernel(name: str, *args: ctypes.Structure) -> None:
    """The library's ``name`` (``hs_scan_forward``, ``hs_conv_backward``, ``hs_norm_forward``, ...) on its
    arguments. Given two (a scan's or a conv's), Vim's two directions in one call (``name``_pair: each task's
    second direction right after its first), or one after the other with a library built from a source before
    the pair entry points. Raises when the kernel reports a failure."""
    lib = library()
    if len(args) == 2 and not hasattr(lib, f"{name}_pair"):
        for a in args:
            run_kernel(name, a)
        return
    rc = getattr(lib, f"{name}_pair" if len(args) == 2 else name)(*(ctypes.byref(a) for a in args))
    if rc == 2:
        raise ValueError(f"the two directions of a bidirectional {name.split('_')[1]} need one shape")
    if rc:
        raise RuntimeError(f"the cpu kernel {name} failed (out of memory or threads)")


def empty_like_layout(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A new tensor shaped like ``t``: its own layout when dense; channels innermost (a transposed (batch, L, C)
    block) when ``t`` is a channels-innermost view such as a half of the mixer's (batch, L, 2E) projection; else
    contiguous. Outputs and gradients then flow into the models' (batch, L, C) linear layers without copies."""
    dtype = t.dtype if dtype is None else dtype
    if t.dim() == 3 and t.stride(1) == 1 and t.shape[2] > 1 and not _dense(t):
        return torch.empty((t.shape[0], t.shape[2], t.shape[1]), dtype=dtype).transpose(1, 2)
    return torch.empty_like(t, dtype=dtype)


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: what ``empty_like`` keeps the strides of (read from the strides: no views)."""
    if t.is_contiguous():
        return True
    expect = 1
    for stride, size in sorted(zip(t.stride(), t.shape)):
        if size != 1 and stride != expect:
            return False
        expect *= size
    return True


def readable(t: Tensor | None) -> Tensor | None:
    """A tensor the kernel can read in place: fp32 / bf16 / fp16 as it is (not even detached: the kernels read
    only its pointer and strides, and a scan runs for every call of a training step), other dtypes as fp32."""
    return t if t is None or t.dtype in _DTYPES else t.detach().float()


def _f32(t: Tensor | None) -> Tensor | None:
    """A contiguous fp32 tensor of ``t``'s values: ``t`` itself when it is one."""
    if t is None or (t.dtype is torch.float32 and t.is_contiguous()):
        return t
    return t.detach().float().contiguous()


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def grad_like(t: Tensor) -> Tensor:
    """An uninitialised gradient for ``t``: a slice of the shared buffer when ``t`` is a column slice of a
    projection (``split.row_slice_grad``), else ``empty_like_layout``."""
    g = row_slice_grad(t)
    return empty_like_layout(t) if g is None else g


def _grad_like(t: Tensor, want: bool) -> Tensor | None:
    return grad_like(t) if want else None


def _cast_all(grads: list[Tensor | None], dtypes: tuple[torch.dtype | None, ...]) -> list[Tensor | None]:
    return [None if g is None else _cast(g, dt) for g, dt in zip(grads, dtypes)]


class _SelectiveScanCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_proj, delta_softplus, reverse):
        call = _Call(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, delta_proj)
        out, last, ckpt = call.forward(save=True)
        out = _cast(out, call.out_dtype)
        ctx.set_materialize_grads(False)
        ctx.call = call  # holds detached views of the inputs and the fp32 side tensors
        ctx.ckpt = ckpt
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias,
                                                                        initial_state, delta_proj))
        return out, last

    @staticmethod
    @once_differentiable  # the backward is not itself differentiable: fail loudly on double grad
    def backward(ctx, dout, dlast):
        grads = ctx.call.backward(ctx.ckpt, ctx.needs_input_grad, dout, dlast)
        return (*_cast_all(grads, ctx.dtypes), None, None)


def _bidirectional_calls(z: Tensor | None, softplus: bool, tensors: tuple) -> tuple[_Call, _Call]:
    """The two directions' calls: tensors are (u, delta, A, B, C, D, delta_bias, initial_state, delta_proj) of
    each."""
    if len(tensors) != 2 * _PER_DIRECTION:
        raise ValueError("each direction takes u, delta, A, B, C, D, delta_bias, initial_state, delta_proj")
    f, b = tensors[:_PER_DIRECTION], tensors[_PER_DIRECTION:]
    if f[0].shape != b[0].shape:
        raise ValueError(f"the two directions' u must have one shape; got {tuple(f[0].shape)}, {tuple(b[0].shape)}")
    if (f[8] is None) != (b[8] is None):
        raise ValueError("the two directions' delta must both be low-rank (delta_proj) or both not")
    return tuple(_Call(u, delta, A, B, C, D, z, bias, h0, softplus, reverse, W)  # type: ignore[return-value]
                 for (u, delta, A, B, C, D, bias, h0, W), reverse in ((f, False), (b, True)))


def _forward_pair(calls: tuple[_Call, _Call], save: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """out = (scan_f + scan_b) / 2 in one kernel call (each task's second scan right after its first); and the two
    calls' checkpoints."""
    a_f, (out, _, ckpt_f) = calls[0].forward_args(save, scale=0.5)
    a_b, (_, _, ckpt_b) = calls[1].forward_args(save, out=out, scale=0.5)
    run_kernel("hs_scan_forward", a_f, a_b)
    return out, ckpt_f, ckpt_b


def _split_needs(needs: tuple[bool, ...]) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """needs_input_grad of (z, softplus, 9 of direction f, 9 of b) as each call's (u, delta, A, B, C, D, z,
    delta_bias, initial_state, delta_proj)."""
    def one(n: tuple[bool, ...]) -> tuple[bool, ...]:
        return (*n[:6], needs[0], *n[6:])

    k = _PER_DIRECTION
    return one(needs[2 : 2 + k]), one(needs[2 + k : 2 + 2 * k])


class _BidirectionalCpu(torch.autograd.Function):
    """(scan_f + scan_b) / 2 with one z: the second scan adds half its output onto the first's half, and its
    z gradient onto the first's, in the kernel (no separate add, halving and gradient sum)."""

    @staticmethod
    def forward(ctx, z, delta_softplus, *tensors):
        calls = _bidirectional_calls(z, delta_softplus, tensors)
        out, ckpt_f, ckpt_b = _forward_pair(calls, save=True)
        ctx.set_materialize_grads(False)
        ctx.calls, ctx.ckpts = calls, (ckpt_f, ckpt_b)
        dt = [None if t is None else t.dtype for t in tensors]
        zt = None if z is None else z.dtype
        k = _PER_DIRECTION
        ctx.dtypes = tuple((*d[:6], zt, *d[6:]) for d in (dt[:k], dt[k:]))
        return _cast(out, calls[0].out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        (call_f, call_b), (ckpt_f, ckpt_b) = ctx.calls, ctx.ckpts
        needs_f, needs_b = _split_needs(ctx.needs_input_grad)
        a_f, g_f = call_f.backward_args(ckpt_f, needs_f, dout, None, scale=0.5)
        a_b, g_b = call_b.backward_args(ckpt_b, needs_b, dout, None, scale=0.5, dz=g_f[6])  # dz: both's sum
        run_kernel("hs_scan_backward", a_f, a_b)
        g_f, g_b = _cast_all(g_f, ctx.dtypes[0]), _cast_all(g_b, ctx.dtypes[1])
        return (g_b[6], None, *g_f[:6], *g_f[7:], *g_b[:6], *g_b[7:])


def selective_scan_bidirectional_cpu(fwd: tuple, bwd: tuple, z: Tensor | None = None,
                                     delta_softplus: bool = False) -> Tensor:
    """(forward scan + reverse scan) / 2 with one z gate, on the fused C++ kernel: ``fwd`` and ``bwd`` are each
    (u, delta, A, B, C, D, delta_bias, initial_state, delta_proj), ``bwd`` scanned in reverse. Equals the average of two
    ``selective_scan_cpu`` calls (tests), with one output buffer and one z gradient written by both."""
    library()
    tensors = (*fwd, *bwd)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*tensors, z)):
        return _BidirectionalCpu.apply(z, bool(delta_softplus), *tensors)
    calls = _bidirectional_calls(z, bool(delta_softplus), tensors)
    out, _, _ = _forward_pair(calls, save=False)
    return _cast(out, calls[0].out_dtype)


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: Tensor | None = None,
    reverse: bool = False,
    delta_proj: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with mamba_ssm ``selective_scan_fn`` semantics on the fused C++ kernel (CPU tensors).

    Same arguments and results as ``selective_scan_reference``: out (batch, dim, L) in u's dtype and, with
    ``return_last_state``, the fp32 last state (batch, dim, N); both differentiable, and so is
    ``initial_state``. With ``delta_proj`` (dim, R), ``delta`` is low-rank (batch, R, L) and the scan's delta
    their product (``dense_delta``), formed in the kernel. Raises ``CpuScanUnavailable`` when the kernel cannot be
    built here.
    """
    library()
    if u.numel() == 0:  # nothing to scan: the reference handles the empty shapes
        from .reference import dense_delta, selective_scan_reference

        return selective_scan_reference(u, dense_delta(delta, delta_proj), A, B, C, D, z, delta_bias,
                                        delta_softplus, return_last_state, initial_state=initial_state,
                                        reverse=reverse)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state, delta_proj)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, last = _SelectiveScanCpu.apply(*tensors, bool(delta_softplus), bool(reverse))
    else:
        call = _Call(*tensors[:9], delta_softplus, reverse, delta_proj)
        out, last, _ = call.forward(save=False)
        out = _cast(out, call.out_dtype)
    return (out, last) if return_last_state else out


__all__ = ["ConvArgs", "CpuScanUnavailable", "NormArgs", "ScanBackendWarning", "available", "cache_dir",
           "empty_like_layout", "grad_like", "library", "ptr", "readable", "selective_scan_bidirectional_cpu",
           "selective_scan_cpu", "targ", "vector_width"]
