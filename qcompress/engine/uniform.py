"""Variable-rate codes: a uniform step without clipping, the step fixed by an error target.

Why: a fixed-rate grid must clip rare large weights or spend levels on them; a uniform step
with an entropy coder behind it spends bits only where weights are, and its error follows from
the step alone: about step^2 / 12 mean squared error, at most step / 2 in absolute value. So
each target has a closed-form step and needs no search:

- ``sqnr`` (dB): step = sqrt(12 * P * 10^(-dB / 10)), P the mean of x^2 (per tensor, or per
  row for granularity "channel"), then checked and nudged until the measured SQNR reaches dB;
- ``abs`` (E): step = 2E with round-to-nearest, then *proven*: every decoded value is compared
  with its weight and a row's step is tightened where float32 rounding breaks |x - x_hat| <= E;
- ``rel`` (r): ``abs`` with E = r * (max - min) of the tensor (or row), SZ3's relative bound;
- ``step``: the step itself (what a budget picked from its measured candidates).

Codes are int8, int16 or int32, the narrowest that holds them; code = rint(x * (1 / step)) in
float32 and decode = code * step, one correctly rounded float32 product (codes come from float32
integers, so int32 codes multiply exactly in float64 before that one rounding). Every operation
is elementwise IEEE arithmetic and every sum is in the engine's fixed order
(``metrics.row_sums``); the compiled kernel (``numba_uniform``) repeats the numpy path's
operations, so codes, steps and stats are the same on any CPU, with or without it.
"""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from qcompress.engine.constants import F32_MAX
from qcompress.engine.metrics import _DB_CONTEXT, from_sums, row_sums
from qcompress.engine.spec import ErrorStats, NonFiniteError, QuantSpec

UNIFORM_TARGETS: tuple[str, ...] = ("sqnr", "abs", "rel", "step")
UNIFORM_GRANULARITIES: tuple[str, ...] = ("tensor", "channel")
CODE_DTYPES: tuple[str, ...] = ("int8", "int16", "int32")
SQNR_SLACK_DB = 0.05
"""The sqnr target stops nudging once the measured SQNR is within this many dB above it."""
_NUDGES = 8
_TIGHTEN = 40  # halvings of a step still short of an SQNR target before giving up
_MAX_CODE = 2**31 - 1
_SMALLEST = np.float32(np.finfo(np.float32).smallest_normal)


class BoundError(ValueError):
    """The target cannot be met with 32-bit codes or within float32 resolution."""


@dataclass(frozen=True)
class UniformSpec:
    """How to quantize one tensor with a uniform step.

    ``target`` and ``value``: what fixes the step (see the module). ``granularity`` "tensor" is
    one step for the whole tensor (what minimises the rate for a total error); "channel" one step
    per row of the row view around ``axis``. ``code_dtype`` None lets the engine pick the
    narrowest; a layout fixed before the values were seen names it, and the engine then stores
    codes in it (BoundError when they do not fit).
    """

    target: str
    value: float
    granularity: str = "tensor"
    axis: int = 0
    code_dtype: str | None = None

    @property
    def rows_spec(self) -> QuantSpec:
        """The spec whose row view this one uses (``to_rows``/``from_rows``)."""
        return QuantSpec(bits=8, granularity=self.granularity, axis=self.axis)


@dataclass(frozen=True)
class UniformTensor:
    """Codes (rows, cols) in ``spec.code_dtype``, steps (rows, 1) float32; x_hat = code * step."""

    codes: np.ndarray
    step: np.ndarray
    spec: UniformSpec
    shape: tuple[int, ...]


def code_dtype_for(max_abs_code: int) -> str:
    """The narrowest of :data:`CODE_DTYPES` holding codes of magnitude up to ``max_abs_code``."""
    for name in CODE_DTYPES:
        if max_abs_code <= np.iinfo(name).max:
            return name
    raise BoundError(f"codes up to {max_abs_code} need more than 32 bits")


def decode_rows(codes: np.ndarray, step: np.ndarray) -> np.ndarray:
    """code * step as float32, (rows, cols): the one decode both the engine and readers use."""
    step = np.asarray(step, np.float32).reshape(-1, 1)
    if codes.dtype.itemsize > 2:
        return (codes.astype(np.float64) * step.astype(np.float64)).astype(np.float32)
    kernel = _kernel("uniform_decode", codes.size)
    out = np.empty(codes.shape, np.float32)
    if kernel is not None:
        kernel(codes, step[:, 0], out)
        return out
    with np.errstate(over="ignore"):  # a step near float32's top: checked by the caller
        np.multiply(codes, step, out=out, dtype=np.float32)
    return out


@cache
def _kernels() -> dict[str, Any] | None:
    from qcompress.engine import jit

    if jit._kernels() is None:  # no numba here
        return None
    from qcompress.engine import numba_uniform

    return {
        "uniform_encode_stats": numba_uniform.uniform_encode_stats,
        "uniform_decode": numba_uniform.uniform_decode,
    }


def _kernel(name: str, size: int) -> Any:
    from qcompress.engine import jit

    if not jit.use_fast(size):
        return None
    kernels = _kernels()
    return None if kernels is None else kernels[name]


Sums = tuple[np.ndarray, np.ndarray, np.ndarray]  # per row: sum d^2, sum x^2, max |d|


def _inverse(step: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.divide(np.float32(1.0), step, dtype=np.float32)


def _code_dtype(row_max: np.ndarray, step: np.ndarray) -> str:
    """The codes' dtype, from each row's largest |x| (rint(x * inv) is monotonic in |x|)."""
    if row_max.size == 0:
        return CODE_DTYPES[0]
    with np.errstate(over="ignore", invalid="ignore"):
        top = float(np.max(np.rint(row_max.astype(np.float32) * _inverse(step[:, 0]))))
    if not top <= _MAX_CODE:
        raise BoundError(f"codes up to {top:.3g} need more than 32 bits")
    return code_dtype_for(int(top))


def _encode_rows(
    rows: np.ndarray, exact: np.ndarray, row_max: np.ndarray, step: np.ndarray
) -> tuple[np.ndarray, Sums]:
    """Codes of the (rows, cols) float32 ``rows`` at each row's ``step`` ((rows, 1) float32),
    and the error sums of their decode against ``exact`` (``rows`` unless the input was
    float64)."""
    codes = np.empty(rows.shape, _code_dtype(row_max, step))
    n = rows.shape[0]
    inv = _inverse(step)
    kernel = _kernel("uniform_encode_stats", rows.size)
    if kernel is not None and exact is rows:
        sse, sig, mab = np.empty(n), np.empty(n), np.empty(n, np.int64)
        kernel(rows, inv[:, 0], step[:, 0], codes, sse, sig, mab)
        return codes, (sse, sig, mab.view(np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        np.rint(rows * inv, out=codes, casting="unsafe")
    sse, sig, _ = row_sums(exact, decode_rows(codes, step))
    return codes, (sse, sig, _row_max_err(exact, codes, step))


def _row_max_err(exact: np.ndarray, codes: np.ndarray, step: np.ndarray) -> np.ndarray:
    if exact.size == 0:
        return np.zeros(exact.shape[0])
    xhat = decode_rows(codes, step)
    return np.abs(exact.astype(np.float64) - xhat.astype(np.float64)).max(axis=1)


def _rows_f32(x: np.ndarray, spec: UniformSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row view in float32 (what is encoded), in its own precision (what errors are
    measured against: the float32 view itself unless the input is float64), and each row's
    largest |x|. NonFiniteError for NaN or Inf, found from the extremes (NaN propagates through
    max and min), so finiteness costs no pass of its own."""
    from qcompress.engine.codec import _as_float32, _non_finite_message
    from qcompress.engine.rows import to_rows

    x = np.asarray(x)
    xf = _as_float32(x)
    rows = to_rows(xf, spec.rows_spec)
    if rows.size:
        row_max = np.maximum(rows.max(axis=1), -rows.min(axis=1))
    else:
        row_max = np.zeros(rows.shape[0], np.float32)
    if not np.isfinite(row_max).all():
        raise NonFiniteError(_non_finite_message(x, xf))
    exact = rows if x.dtype != np.float64 else to_rows(x, spec.rows_spec)
    return rows, exact, row_max


def uniform_quantize(x: np.ndarray, spec: UniformSpec) -> UniformTensor:
    """Quantize ``x`` with the step ``spec`` asks for. NonFiniteError for NaN/Inf; BoundError
    when the target needs codes wider than 32 bits or finer than float32 resolves."""
    return uniform_quantize_with_error(x, spec)[0]


def uniform_quantize_with_error(
    x: np.ndarray, spec: UniformSpec
) -> tuple[UniformTensor, ErrorStats]:
    """:func:`uniform_quantize` and the error of its decode (measured anyway, to check it)."""
    if spec.target not in UNIFORM_TARGETS:
        raise ValueError(f"target {spec.target!r} is not one of {UNIFORM_TARGETS}")
    if spec.granularity not in UNIFORM_GRANULARITIES:
        raise ValueError(f"granularity {spec.granularity!r} is not one of {UNIFORM_GRANULARITIES}")
    if not (math.isfinite(spec.value) and spec.value > 0):
        raise ValueError(f"{spec.target} target {spec.value!r} is not a positive number")
    rows, exact, row_max = _rows_f32(x, spec)
    shape = tuple(int(d) for d in np.shape(x))
    if spec.target == "sqnr":
        step, codes, sums = _sqnr_steps(rows, exact, row_max, spec)
    elif spec.target == "step":
        step = np.full((rows.shape[0], 1), _f32_step(spec.value), np.float32)
        codes, sums = _encode_rows(rows, exact, row_max, step)
    else:
        step, codes, sums = _bounded_steps(rows, exact, row_max, _bounds(exact, spec), spec)
    if spec.code_dtype is not None and codes.dtype != np.dtype(spec.code_dtype):
        if np.iinfo(codes.dtype).max > np.iinfo(spec.code_dtype).max:
            raise BoundError(f"codes need {codes.dtype}, the layout has {spec.code_dtype}")
        codes = codes.astype(spec.code_dtype)
    sse, signal, max_abs = sums
    stats = from_sums(math.fsum(sse), math.fsum(signal), float(max_abs.max(initial=0.0)), rows.size)
    return UniformTensor(codes, step, spec, shape), stats


def uniform_dequantize(u: UniformTensor) -> np.ndarray:
    """The float32 tensor the codes decode to, in its original shape."""
    from qcompress.engine.rows import from_rows

    x = from_rows(decode_rows(u.codes, u.step), u.shape, u.spec.rows_spec)
    return x if x.flags.c_contiguous else x.copy()


def _f32_step(value: float) -> np.float32:
    """A float32 step no larger than ``value`` (and finite, and at least the smallest normal,
    so its reciprocal is finite)."""
    s = np.float32(min(value, F32_MAX))
    if float(s) > value:
        s = np.nextafter(s, np.float32(0))
    return max(s, _SMALLEST)


def _bounds(exact: np.ndarray, spec: UniformSpec) -> np.ndarray:
    """Each row's absolute bound (float64, (rows,)): E itself, or r times the value range."""
    n = exact.shape[0]
    if spec.target == "abs" or exact.size == 0:
        return np.full(n, float(spec.value))
    span = exact.max(axis=1).astype(np.float64) - exact.min(axis=1).astype(np.float64)
    if spec.granularity == "tensor":
        span = np.full(n, float(span.max()))
    return np.where(span > 0, float(spec.value) * span, 0.0)  # a constant row: exact


def _bounded_steps(
    rows: np.ndarray, exact: np.ndarray, row_max: np.ndarray, bound: np.ndarray, spec: UniformSpec
) -> tuple[np.ndarray, np.ndarray, Sums]:
    """Steps 2E (float32, at most 2E), tightened row by row until every |x - x_hat| <= E. A
    bound of 0 (a constant row under a relative bound) takes the row's value as its step."""
    first = [
        _f32_step(2.0 * b) if b > 0 else (m or np.float32(1))
        for b, m in zip(bound, row_max, strict=True)
    ]
    step = np.array(first, np.float32).reshape(-1, 1)
    # Float32 rounding of x * (1 / step) and of code * step adds at most a few units in the last
    # place of the largest code to step / 2: shrink the failing rows' steps by 2^-22, 2^-20, ...
    for shrink in [2.0**-k for k in range(22, 0, -2)] + [None]:
        codes, sums = _encode_rows(rows, exact, row_max, step)
        bad = sums[2] > bound
        if not bad.any():
            return step, codes, sums
        if shrink is None:
            break
        step[bad, 0] = [_f32_step(2.0 * b * (1.0 - shrink)) for b in bound[bad]]
    raise BoundError(f"the bound {spec.value:g} is below float32 resolution of the tensor's values")


def _sqnr_steps(
    rows: np.ndarray, exact: np.ndarray, row_max: np.ndarray, spec: UniformSpec
) -> tuple[np.ndarray, np.ndarray, Sums]:
    """Closed-form step from the power, nudged (each row, or the tensor as one) until the
    measured SQNR reaches the target: the largest step measured to reach it, so the fewest bits.
    Comparisons and nudges are float64 products, quotients and square roots (correctly rounded
    in IEEE arithmetic), so every machine takes the same steps."""
    n = rows.shape[0]
    per_row = spec.granularity == "channel"
    need = exp10(float(spec.value) / 10.0)  # signal / error the target asks for
    close = exp10((float(spec.value) + SQNR_SLACK_DB) / 10.0)

    def by_group(v: np.ndarray) -> np.ndarray:
        return v.astype(np.float64) if per_row else np.array([math.fsum(v.tolist())])

    def steps(v: np.ndarray) -> np.ndarray:
        vals = [_f32_step(float(a)) for a in v]
        return np.array(vals if per_row else vals * n, np.float32).reshape(n, 1)

    # The first pass measures the power: steps of twice each group's largest |x| give all-zero
    # codes (a tie rounds to even), whose squared error is the signal.
    first = steps(by_group(row_max) * 2.0 if per_row else [2.0 * float(row_max.max(initial=0))])
    signal = by_group(_encode_rows(rows, exact, row_max, first)[1][1])
    count = max(rows.shape[1], 1) if per_row else max(rows.size, 1)
    done = signal == 0
    best = np.where(done, 1.0, 0.0)  # the largest step measured to reach the target
    scale = np.where(done, 1.0, np.sqrt(12.0 * (signal / count) / need))
    best_encode: tuple[np.ndarray, Sums] | None = None
    for i in range(_NUDGES + _TIGHTEN):
        if done.all():
            if best_encode is not None and not per_row:
                return steps(best), *best_encode
            step = steps(best)
            return (step, *_encode_rows(rows, exact, row_max, step))
        s = np.where(done, best, scale)
        step = steps(s)
        codes, sums = _encode_rows(rows, exact, row_max, step)
        s = step[:, 0].astype(np.float64) if per_row else np.array([float(step[0, 0])])
        sse = by_group(sums[0])
        active = ~done
        ok = sse * need <= signal
        better = active & ok & (s > best)
        best = np.where(better, s, best)
        if better.any() and not per_row:
            best_encode = (codes, sums)
        finish = active & ok & ((sse * close >= signal) | (i >= _NUDGES))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(sse > 0, np.sqrt(signal / (sse * need)), 4.0)
        ratio = np.clip(ratio, 1e-3, 4.0)
        if i > _NUDGES:
            ratio = np.minimum(ratio, 0.5)  # past the nudges and still short: halve until it is
        back = active & ~finish & (best > 0) & (s * ratio <= best)  # the best so far is better
        done = done | finish | back
        scale = np.where(done, scale, s * ratio)
    raise BoundError(f"SQNR {spec.value:g} dB is beyond float32 resolution of the tensor's values")


def exp10(x: float) -> float:
    """10^x, the same float on every machine (decimal arithmetic, rounded once; see
    ``metrics.decibels``): steps derived from it are stored."""
    return float(_DB_CONTEXT.power(decimal.Decimal(10), decimal.Decimal(x)))


def code_entropy(codes: np.ndarray) -> float:
    """Order-0 entropy of ``codes`` in bits per code (what an ideal coder spends per weight)."""
    if codes.size == 0:
        return 0.0
    flat = codes.reshape(-1)
    if flat.dtype.itemsize <= 2:
        counts = np.bincount(flat.astype(np.int64) - int(flat.min()))
    else:
        counts = np.unique(flat, return_counts=True)[1]
    p = counts[counts > 0].astype(np.float64) / float(flat.size)
    return max(0.0, -math.fsum((p * np.log2(p)).tolist()))
