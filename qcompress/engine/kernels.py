"""The per-tile arithmetic shared by quantize, dequantize and the range search.

Sharing it is what makes the search honest: a candidate range is scored with exactly the float32
operations that will later produce the stored codes and the dequantized values.
"""

from __future__ import annotations

import numpy as np


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


def squared_error(x: np.ndarray, grid32: tuple, qlo: int, qhi: int, buf: np.ndarray) -> np.ndarray:
    """Sum over g of (x - decode(encode(x)))^2 for an (r, k, g) block, as (r, k) float64.

    Summed in float32 (relative error ~1e-6 for a few thousand terms); callers compare candidates
    with a margin larger than that, see ``ranges.MSE_MIN_GAIN``.

    ``buf`` is a float32 scratch array of x's shape.
    """
    scale, inv, zp = grid32
    with np.errstate(over="ignore", invalid="ignore"):  # a hopeless candidate scores inf
        t = encode(x, inv, zp, qlo, qhi, out=buf)
        decode(t, scale, zp, out=t)
        t -= x
        return np.einsum("rkg,rkg->rk", t, t).astype(np.float64)  # float32: 5x faster
