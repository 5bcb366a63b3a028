"""Error of a reconstruction: MSE, max abs error and SQNR, per tensor and combined.

Sums are accumulated in float64 over chunks, so no whole-tensor float64 temporary is made and
squares of large float32 values cannot overflow. Each row's sums are added in the engine's fixed
order (``constants.SUM_LANES``, the order of the compiled ``encode_stats``), rows are combined with
``math.fsum`` (correctly rounded, so in no particular order) and dB values come from ``decibels``:
the same numbers on any CPU, with or without the compiled kernels.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Iterable

import numpy as np

from qcompress.engine.constants import SUM_LANES
from qcompress.engine.elementwise import combine_lanes, lane_sums
from qcompress.engine.spec import ErrorStats

CHUNK_ELEMENTS = 1 << 16
"""Elements per chunk of the float64 temporaries (a multiple of ``SUM_LANES``)."""


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
    return row_error_stats(x.reshape(1, -1), xhat.reshape(1, -1))


def row_error_stats(x: np.ndarray, xhat: np.ndarray) -> ErrorStats:
    """``error_stats`` of two (rows, cols) arrays, each row summed in the fixed order.

    This is what the compiled ``encode_stats`` computes on the engine's row view, so
    ``quantize_with_error`` gives the same numbers on both paths.
    """
    sse, signal, max_abs = row_sums(x, xhat)
    return _stats(math.fsum(sse), math.fsum(signal), max_abs, x.size)


def row_sums(x: np.ndarray, xhat: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per row, sum (xhat - x)^2 and sum x^2 (float64, fixed order), and the largest |xhat - x|."""
    n_rows, cols = x.shape
    sse = np.zeros(n_rows)
    signal = np.zeros(n_rows)
    max_abs = 0.0
    if x.size == 0:
        return sse, signal, max_abs
    step = max(1, CHUNK_ELEMENTS // cols)
    piece = max(SUM_LANES, CHUNK_ELEMENTS // SUM_LANES * SUM_LANES)
    for r0 in range(0, n_rows, step):
        rs = slice(r0, min(n_rows, r0 + step))
        acc_e = acc_s = None
        for c0 in range(0, cols, piece):  # long rows in pieces; the carry keeps the order
            xa = x[rs, c0 : c0 + piece].astype(np.float64)
            d = xhat[rs, c0 : c0 + piece].astype(np.float64)
            d -= xa
            max_abs = _nan_max(max_abs, float(np.max(np.abs(d))))
            d *= d
            xa *= xa
            acc_e = lane_sums(d, acc_e)
            acc_s = lane_sums(xa, acc_s)
        assert acc_e is not None and acc_s is not None
        sse[rs] = combine_lanes(acc_e)
        signal[rs] = combine_lanes(acc_s)
    return sse, signal, max_abs


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
        sqnr = decibels(power / mse)
    return ErrorStats(mse=mse, max_abs_error=max_abs, sqnr_db=sqnr, signal_power=power, count=count)


_DB_CONTEXT = decimal.Context(prec=40)


def decibels(ratio: float) -> float:
    """10 log10(ratio) for ratio > 0, the same float on every machine.

    ``math.log10`` and ``np.log10`` may differ in the last bit between C libraries and CPUs
    (FMA or not, SIMD variants), and SQNR values are stored in the artifact and decide budgets;
    decimal's log10 is correctly rounded integer arithmetic, then rounded once to a float.
    """
    if math.isinf(ratio):
        return math.inf
    return float(_DB_CONTEXT.multiply(10, _DB_CONTEXT.log10(decimal.Decimal(ratio))))
