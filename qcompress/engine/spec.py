"""The single table of what the engine supports, and the small frozen values it passes around.

CLI choices, validation bounds and report fields all derive from these tuples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
SCHEMES: tuple[str, ...] = ("symmetric", "affine")
GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "group")
RANGE_METHODS: tuple[str, ...] = ("minmax", "percentile", "mse")
SCALE_DTYPES: tuple[str, ...] = ("float32", "float16")
GROUP_SIZE_MIN, GROUP_SIZE_MAX = 16, 1024


class NonFiniteError(ValueError):
    """The tensor holds NaN or Inf, which no integer grid can represent."""


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor.

    ``axis`` is the output-channel axis (non-negative). The engine views a tensor as rows: the
    channel axis moved first and every other axis flattened in order, so that per-channel means one
    row per channel and groups run along the flattened input dimension(s). For granularity "tensor"
    the axis is ignored and the whole tensor is a single row.
    """

    bits: int
    scheme: str = "symmetric"
    granularity: str = "channel"
    axis: int = 0
    group_size: int = 64
    range_method: str = "minmax"
    scale_dtype: str = "float32"


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor as integer codes plus the parameters that map them back to floats.

    codes: (rows, cols) int8 for symmetric, uint8 for affine, one code per element.
    scale, zero_point: (rows, n_groups) in ``spec.scale_dtype``; zero_point is None for symmetric.
    Dequantized value: (code - zero_point) * scale (zero_point may be fractional).
    clip_min, clip_max: (rows, n_groups) float32, the range the grid covers (for the report).
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    clip_min: np.ndarray
    clip_max: np.ndarray
    spec: QuantSpec
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ErrorStats:
    """Error of a reconstruction. sqnr_db is +inf for an exact reconstruction."""

    mse: float
    max_abs_error: float
    sqnr_db: float
    signal_power: float  # mean of x**2, so totals can be combined exactly
    count: int
