"""The per-tile arithmetic shared by quantize, dequantize and the range search.

Sharing it is what makes the search honest: a candidate range is scored with exactly the float32
operations that will later produce the stored codes and the dequantized values.

Every float sum the engine stores or decides on is added in one fixed order (``lane_sums``), the
same here and in the compiled kernels (``numba_kernels``), so results do not depend on the CPU's
SIMD width, on numpy's or the compiler's choice of summation order, or on threads.
"""

from __future__ import annotations

import numpy as np

from qcompress.engine.constants import SUM_LANES


def encode(
    x: np.ndarray,
    inv: np.ndarray,
    zp: np.ndarray | None,
    qlo: int,
    qhi: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Codes (as integral float32) of an (r, k, g) block: clip(rint(x * inv + zp), qlo, qhi).

    ``inv`` is 1/scale (0 where scale is 0, so all-zero groups give code zp = 0 with no division
    by zero); ``inv`` and ``zp`` are (r, k) float32.
    """
    t = np.multiply(x, inv[..., None], out=out)
    if zp is not None:
        t += zp[..., None]
    np.rint(t, out=t)
    return np.clip(t, qlo, qhi, out=t)


def decode(codes: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, out: np.ndarray) -> None:
    """Write (codes - zp) * scale as float32 into ``out`` (``codes`` may be ``out`` itself)."""
    if zp is None:
        np.multiply(codes, scale[..., None], out=out, dtype=np.float32)
        return
    np.subtract(codes, zp[..., None], out=out, dtype=np.float32)
    out *= scale[..., None]


def lane_sums(terms: np.ndarray, carry: np.ndarray | None = None) -> np.ndarray:
    """The SUM_LANES partial sums (``SUM_LANES`` order) of ``terms`` along its last axis, as an
    (..., SUM_LANES) array of its dtype; ``carry`` holds the partial sums of the terms before
    these (their count a multiple of SUM_LANES), which these terms continue."""
    lead, n = terms.shape[:-1], terms.shape[-1]
    m = n // SUM_LANES
    body = terms[..., : m * SUM_LANES].reshape(*lead, m, SUM_LANES)
    if carry is None:
        carry = np.zeros((*lead, SUM_LANES), terms.dtype)
    # Row 0 is the carry (+0.0 to start with), then the terms row by row: np.add.reduce over a
    # non-last axis adds whole rows in order (tests/test_golden.py checks it against a loop).
    acc = np.add.reduce(np.concatenate([carry[..., None, :], body], axis=-2), axis=-2)
    tail = n - m * SUM_LANES
    acc[..., :tail] += terms[..., m * SUM_LANES :]
    return acc


def combine_lanes(acc: np.ndarray) -> np.ndarray:
    """The total of ``lane_sums``' partial sums: added in lane order, lane 0 first."""
    total = acc[..., 0].copy()
    for lane in range(1, acc.shape[-1]):
        total += acc[..., lane]
    return total


def ordered_sum(terms: np.ndarray) -> np.ndarray:
    """Sum along the last axis in the engine's fixed order (``SUM_LANES``)."""
    return combine_lanes(lane_sums(terms))


def squared_error(x: np.ndarray, grid32: tuple, qlo: int, qhi: int, buf: np.ndarray) -> np.ndarray:
    """Sum over g of (x - decode(encode(x)))^2 for an (r, k, g) block, as (r, k) float64.

    Summed in float32 (relative error ~1e-6 for a few thousand terms); callers compare candidates
    with a margin larger than that, see ``ranges.MSE_MIN_GAIN``. The order is ``SUM_LANES``',
    as in ``numba_kernels.lane_scores``, so both paths choose the same range on any CPU.

    ``buf`` is a float32 scratch array of x's shape.
    """
    scale, inv, zp = grid32
    with np.errstate(over="ignore", invalid="ignore"):  # a hopeless candidate scores inf
        t = encode(x, inv, zp, qlo, qhi, out=buf)
        decode(t, scale, zp, out=t)
        t -= x
        t *= t
        return ordered_sum(t).astype(np.float64)  # float32 sums: 5x faster
