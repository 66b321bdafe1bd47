"""The models' kernels, importable only as ``hybridsearch.kernels``: the selective scan (and Vim's two directions
at once), Mamba-2's SSD scan, the mixer's causal conv1d and projections, the blocks' RMSNorm; each with its
backends (docs/kernels.md). ``split_channels`` splits a projection into the channels-innermost slices they read.

``selective_scan`` has exactly the shapes and semantics of mamba_ssm's ``selective_scan_fn`` plus an
optional initial state and a ``reverse`` flag (scan from the last position to the first without a flipped copy).
"""

from .linear import linear
from .rms_norm import rms_norm
from .selective_scan import (
    BACKENDS,
    ScanDirection,
    causal_conv1d,
    causal_conv1d_bidirectional,
    resolve_backend,
    selective_scan,
    selective_scan_bidirectional,
)
from .split import split_channels

__all__ = ["BACKENDS", "ScanDirection", "causal_conv1d", "causal_conv1d_bidirectional", "linear", "resolve_backend",
           "rms_norm", "selective_scan", "selective_scan_bidirectional", "split_channels"]
