"""Error of a reconstruction: MSE, max abs error and SQNR, per tensor and combined.

Sums are accumulated in float64 over chunks, so no whole-tensor float64 temporary is made and
squares of large float32 values cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from qcompress.engine.spec import ErrorStats

CHUNK_ELEMENTS = 1 << 16


def error_stats(x: np.ndarray, xhat: np.ndarray) -> ErrorStats:
    """Error of ``xhat`` as a reconstruction of ``x`` (same shape, any float dtypes).

    sqnr_db = 10 log10(mean(x^2) / mse): +inf when the reconstruction is exact (mse == 0, which
    includes empty tensors) and 0.0 when x is all zero but xhat is not (no signal to measure
    against; 0 dB keeps JSON finite and fails any positive --min-sqnr gate). NaN or Inf in either
    tensor makes the MSE and max abs error NaN or Inf and the SQNR NaN, so every gate fails.
    """
    x = np.asarray(x)
    xhat = np.asarray(xhat)
    if x.shape != xhat.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {xhat.shape}")
    a, b = x.reshape(-1), xhat.reshape(-1)
    sse = signal = max_abs = 0.0
    for i in range(0, a.size, CHUNK_ELEMENTS):
        xa = a[i : i + CHUNK_ELEMENTS].astype(np.float64)
        d = b[i : i + CHUNK_ELEMENTS].astype(np.float64)
        d -= xa
        sse += float(np.einsum("i,i->", d, d))  # not np.dot: BLAS threads stall under load
        signal += float(np.einsum("i,i->", xa, xa))
        max_abs = _nan_max(max_abs, float(np.max(np.abs(d))))
    return _stats(sse, signal, max_abs, a.size)


def _nan_max(a: float, b: float) -> float:
    """max() that keeps NaN: Python's ``max(0.0, nan)`` is 0.0, which would hide a NaN error."""
    return b if math.isnan(b) or b > a else a


def combine_error_stats(stats: Iterable[ErrorStats]) -> ErrorStats:
    """The error of several tensors taken as one: sums weighted by element count, max of maxima.

    This is the overall SQNR of a model (total signal energy over total error energy), not a
    mean of per-tensor dB values.
    """
    sse = signal = max_abs = 0.0
    count = 0
    for s in stats:
        sse += s.mse * s.count
        signal += s.signal_power * s.count
        max_abs = _nan_max(max_abs, s.max_abs_error)
        count += s.count
    return _stats(sse, signal, max_abs, count)


def from_sums(sse: float, signal: float, max_abs: float, count: int) -> ErrorStats:
    """ErrorStats from the sums a fused kernel accumulates: sum of squared errors, sum of x^2,
    largest |error|, and the element count."""
    return _stats(sse, signal, max_abs, count)


def _stats(sse: float, signal: float, max_abs: float, count: int) -> ErrorStats:
    mse = sse / count if count else 0.0
    power = signal / count if count else 0.0
    if not (math.isfinite(sse) and math.isfinite(signal)):
        sqnr = math.nan  # NaN/Inf in a tensor: no SQNR (log10 of 0 or NaN), and no gate passes
    elif mse == 0:
        sqnr = math.inf
    elif power == 0:
        sqnr = 0.0
    else:
        sqnr = 10 * math.log10(power / mse)
    return ErrorStats(mse=mse, max_abs_error=max_abs, sqnr_db=sqnr, signal_power=power, count=count)
