"""Selective-scan kernels, importable only as ``hybridsearch.kernels``.

``selective_scan`` has exactly the shapes and semantics of mamba_ssm's ``selective_scan_fn`` plus an
optional initial state and a ``reverse`` flag (scan from the last position to the first without a flipped copy).
"""

from .linear import linear
from .selective_scan import (
                             BACKENDS,
                             ScanDirection,
                             causal_conv1d,
                             resolve_backend,
                             selective_scan,
                             selective_scan_bidirectional,
)

__all__ = ["BACKENDS", "ScanDirection", "causal_conv1d", "linear", "resolve_backend", "selective_scan",
           "selective_scan_bidirectional"]
