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
SCALE_BITS: tuple[int, ...] = (4, 5, 6, 7, 8)
"""Widths of the second level's integer scale (and min) codes; ``None`` keeps float scales."""
CODEBOOKS: tuple[str, ...] = ("iq4nl", "nf4", "fit")
"""Non-uniform tables (``engine.codebook``): llama.cpp's IQ4_NL, NF4, or per-tensor levels."""
CODEBOOK_BITS: tuple[int, ...] = (3, 4)
"""Widths of codebook codes (the fixed tables have 16 levels: 4 bits only)."""
SUPER_BLOCK = 256
"""Groups per second-level block: consecutive (row, group) scales, in C order, that share one
float32 super-scale (and one super-min). 64 bits per 256 groups costs 0.008 bits per weight at
group size 32, whatever the row length (a per-row super-scale would cost 0.5 bits per weight on
64-wide rows)."""

RECIPE_CHOICES: dict[str, tuple[object, ...]] = {
    "bits": BITS,
    "scheme": SCHEMES,
    "granularity": GRANULARITIES,
    "range": RANGE_METHODS,
    "scale_dtype": SCALE_DTYPES,
}
"""Recipe field -> the values the engine decodes: what an artifact's recipe is checked against
(``qcompress.recipe``); ``scale_bits`` (SCALE_BITS or absent), ``group_size`` (GROUP_SIZE_MIN to
GROUP_SIZE_MAX for groups) and ``super_block`` (SUPER_BLOCK) are checked with them."""
MAX_ELEMENTS = 2**63 - 1
"""Elements (and bytes) of the largest tensor whose shape numpy's int64 sizes can hold."""


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
    scale_bits: int | None = None
    codebook: str | None = None
    """None: evenly spaced integer codes; else codes index the table ``CODEBOOKS`` names."""


def check_codebook_spec(spec: QuantSpec) -> None:
    """ValueError naming the field unless ``spec`` is a codebook spec the engine can encode."""
    if spec.codebook not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {CODEBOOKS}, not {spec.codebook!r}")
    if spec.bits not in CODEBOOK_BITS:
        raise ValueError(f"codebook codes are {CODEBOOK_BITS} bits, not {spec.bits}")
    if spec.codebook != "fit" and spec.bits != 4:
        raise ValueError(f"the {spec.codebook} table has 16 levels: it needs 4 bits")
    if spec.scale_bits not in SCALE_BITS:
        raise ValueError(f"codebook codes need second-level scale codes {SCALE_BITS}")
    if spec.scheme != "symmetric":
        raise ValueError("codebook codes have a signed scale and no zero-point: scheme symmetric")


@dataclass(frozen=True)
class Level2:
    """The second level: group scales (and, for affine, group minimums) as small integer codes.

    A group's step is ``super_scale[b] * scale_codes`` and, for affine, the value of code 0 is
    ``super_min[b] * min_codes``, where b is the group's block of ``SUPER_BLOCK`` consecutive
    groups (C order over (rows, n_groups)). Codes are uint8 (rows, n_groups) in
    [0, 2^scale_bits - 1]; super_scale and super_min are float32 (n_blocks,).
    """

    scale_codes: np.ndarray
    min_codes: np.ndarray | None
    super_scale: np.ndarray
    super_min: np.ndarray | None


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor as integer codes plus the parameters that map them back to floats.

    codes: (rows, cols) int8 for symmetric, uint8 for affine, one code per element.
    scale, zero_point: (rows, n_groups) in ``spec.scale_dtype``; zero_point is None for symmetric.
    Dequantized value: (code - zero_point) * scale (zero_point may be fractional).
    clip_min, clip_max: (rows, n_groups) float32, the range the grid covers (for the report).
    level2: with ``spec.scale_bits``, the stored second-level codes; scale and zero_point are
    then the float32 values decoded from them (``level2.decode_params``), which are exactly the
    ones quantization used.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    clip_min: np.ndarray
    clip_max: np.ndarray
    spec: QuantSpec
    shape: tuple[int, ...]
    level2: Level2 | None = None
    levels: np.ndarray | None = None
    """Codebook codes only: the float32 table the codes index (``engine.codebook``); the
    dequantized value is then scale * levels[code + 2^(bits-1)]."""


@dataclass(frozen=True)
class ErrorStats:
    """Error of a reconstruction. sqnr_db is +inf for an exact reconstruction."""

    mse: float
    max_abs_error: float
    sqnr_db: float
    signal_power: float  # mean of x**2, so totals can be combined exactly
    count: int
