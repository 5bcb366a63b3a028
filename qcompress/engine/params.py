"""From a range to cover to the grid that covers it: scale, zero-point and the covered range.

All parameter math is float64 over small (rows, n_groups) arrays, then stored in the scale dtype.
The stored values are the ones quantization uses, so the error bound |x - x̂| <= scale / 2 holds
for the numbers actually written to the artifact, float16 scales included.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qcompress.engine.constants import F32_MAX
from qcompress.engine.spec import (
    BITS,
    GRANULARITIES,
    RANGE_METHODS,
    SCALE_BITS,
    SCALE_DTYPES,
    SCHEMES,
    QuantSpec,
    check_codebook_spec,
)


def validate_spec(spec: QuantSpec) -> None:
    """Raise ValueError naming the bad field. Bounds beyond these (group size limits) are CLI
    policy; the engine takes any group size >= 1."""
    checks = (
        ("bits", spec.bits, BITS),
        ("scheme", spec.scheme, SCHEMES),
        ("granularity", spec.granularity, GRANULARITIES),
        ("range_method", spec.range_method, RANGE_METHODS),
        ("scale_dtype", spec.scale_dtype, SCALE_DTYPES),
    )
    for field, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"{field} must be one of {allowed}, not {value!r}")
    if spec.scale_bits is not None and spec.scale_bits not in SCALE_BITS:
        raise ValueError(f"scale_bits must be None or one of {SCALE_BITS}, not {spec.scale_bits}")
    if spec.granularity == "group" and spec.group_size < 1:
        raise ValueError(f"group_size must be >= 1, not {spec.group_size}")
    if spec.codebook is not None:
        check_codebook_spec(spec)


def code_range(bits: int, scheme: str) -> tuple[int, int]:
    """Smallest and largest code: symmetric [-(2^(b-1)-1), 2^(b-1)-1] (int8), affine [0, 2^b-1].

    Symmetric uses the narrow range so that the grid is symmetric about zero and scale = absmax /
    hi: the full range's extra negative code would need a sign-dependent scale to be useful.
    """
    if scheme == "symmetric":
        hi = 2 ** (bits - 1) - 1
        return -hi, hi
    return 0, 2**bits - 1


def code_dtype(scheme: str) -> np.dtype:
    """int8 for symmetric codes, uint8 for affine."""
    return np.dtype(np.int8 if scheme == "symmetric" else np.uint8)


class Grid(NamedTuple):
    """Parameters of one grid per (row, group): scale and zero_point in the scale dtype
    (zero_point None when symmetric), and the range the grid covers, [(qlo - zp) * s,
    (qhi - zp) * s] for the smallest and largest codes qlo, qhi, as float32."""

    scale: np.ndarray
    zero_point: np.ndarray | None
    cover_lo: np.ndarray
    cover_hi: np.ndarray

    def float32(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(scale, 1/scale or 0 where scale is 0, zero_point) as float32, as the kernels use."""
        s = self.scale.astype(np.float32)
        inv = np.zeros_like(s)
        np.divide(np.float32(1), s, out=inv, where=s != 0)
        zp = None if self.zero_point is None else self.zero_point.astype(np.float32)
        return s, inv, zp


def grid_for_range(lo: np.ndarray, hi: np.ndarray, spec: QuantSpec) -> Grid:
    """The grid that covers [lo, hi] (lo <= hi, elementwise) with the fewest wasted codes.

    A constant range (lo == hi == c) gets scale |c| so that c reconstructs exactly (symmetric
    code sign(c); affine code 0 with zero_point -sign(c)); a zero range gets scale 0, zero_point 0.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    dt = np.dtype(spec.scale_dtype)
    if spec.scheme == "symmetric":
        return _symmetric(lo, hi, spec.bits, dt)
    return _affine(lo, hi, spec.bits, dt)


def _symmetric(lo: np.ndarray, hi: np.ndarray, bits: int, dt: np.dtype) -> Grid:
    qhi = code_range(bits, "symmetric")[1]
    a = np.maximum(np.abs(lo), np.abs(hi))
    const = lo == hi
    s = _store_scale(np.where(const, a, a / qhi), dt)
    s = _keep_decode_finite(s, np.zeros_like(s), qhi, ~const)
    cover = qhi * s.astype(np.float64)
    return Grid(s, None, _to_f32(-cover), _to_f32(cover))


def _affine(lo: np.ndarray, hi: np.ndarray, bits: int, dt: np.dtype) -> Grid:
    qmax = code_range(bits, "affine")[1]
    const = lo == hi
    s = _store_scale(np.where(const, np.abs(lo), (hi - lo) / qmax), dt)
    if dt == np.float16:
        s, z = _affine_f16(lo, hi, s, const, qmax)
    else:
        z = _zero_point(lo, s, dt)
        s = _keep_decode_finite(s, z, qmax, ~const)
        z = _zero_point(lo, s, dt)  # s may have moved one ulp
    s64, z64 = s.astype(np.float64), z.astype(np.float64)
    return Grid(s, z, _to_f32(-z64 * s64), _to_f32((qmax - z64) * s64))


def _zero_point(lo: np.ndarray, s: np.ndarray, dt: np.dtype) -> np.ndarray:
    """-lo / s, so that code 0 decodes to lo; 0 where the scale is 0."""
    s64 = s.astype(np.float64)
    z = np.zeros_like(s64)
    np.divide(-lo, s64, out=z, where=s64 != 0)
    return _finite(z, dt)


def _finite(v: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``v`` in ``dt``, clamped to its finite range (an infinite zero-point would decode to inf)."""
    big = float(np.finfo(dt).max)
    return np.clip(v, -big, big).astype(dt)


def _affine_f16(
    lo: np.ndarray, hi: np.ndarray, s: np.ndarray, const: np.ndarray, qmax: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero-point in float16 such that the grid still covers [lo, hi].

    Rounding zp to float16 moves the grid by up to half a float16 ulp of zp, more than the slack
    left by rounding the scale up once |zp| is large (a range far from zero). So: take zp at the
    centre of the interval of zero-points that cover [lo, hi]; where its rounding still falls
    outside, widen the scale until the slack holds one ulp of zp either way, and retry. Where zp
    cannot be held at all (|zp| beyond float16's range, or its ulp near qmax), cover
    [min(lo, 0), max(hi, 0)] instead, where zp lies in [0, qmax]. Constant ranges keep
    zp = -c / s (code 0 decodes to c within 1e-3 of a step).
    """
    z = _zero_point(lo, s, np.dtype(np.float16))
    s_flat, z_flat = s.reshape(-1), z.reshape(-1)
    idx = np.flatnonzero(~const & (s > 0))
    w_lo, w_hi = lo.reshape(-1)[idx], hi.reshape(-1)[idx]
    w_s = s_flat[idx]
    for _ in range(8):
        s64 = w_s.astype(np.float64)
        z_lo, z_hi = -w_lo / s64, qmax - w_hi / s64
        zt = _finite((z_lo + z_hi) / 2, np.dtype(np.float16))
        s_flat[idx], z_flat[idx] = w_s, zt
        ok = (zt >= z_lo) & (zt <= z_hi)
        if ok.all():
            break
        with np.errstate(over="ignore", invalid="ignore"):
            room = qmax - 2 * np.spacing(np.abs(zt)).astype(np.float64)
            fixable = ~ok & (room > qmax / 2)
            wider = _store_scale((w_hi - w_lo) / np.where(fixable, room, qmax), w_s.dtype)
            nudged = np.minimum(np.nextafter(w_s, np.float16(np.inf)), np.finfo(np.float16).max)
        w_s = np.where(fixable, np.maximum(wider, nudged), w_s)
        hopeless = ~ok & ~fixable
        w_lo = np.where(hopeless, np.minimum(w_lo, 0.0), w_lo)
        w_hi = np.where(hopeless, np.maximum(w_hi, 0.0), w_hi)
        w_s = np.where(hopeless, _store_scale((w_hi - w_lo) / qmax, w_s.dtype), w_s)
    return s, z


def _store_scale(s: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``s`` stored in ``dt``, never below ``s``, so the grid still covers the requested range.

    Positive scales are floored at float32's smallest normal (float16's smallest subnormal, 6e-8)
    so 1/scale stays finite: a tinier range gets a coarser grid, which still keeps the bound.
    Scales beyond the dtype's range are clamped to its largest value: values beyond
    ``hi * scale`` are then clipped, which the covered range reports (only for |x| > 8e6 at
    8 bits with float16 scales).
    """
    fi = np.finfo(dt)
    floor = fi.tiny if dt == np.float32 else fi.smallest_subnormal
    s = np.where(s > 0, np.maximum(s, float(floor)), 0.0)
    with np.errstate(over="ignore"):
        st = s.astype(dt)
        low = st.astype(np.float64) < s
        st = np.where(low, np.nextafter(st, dt.type(np.inf)), st)
    return np.minimum(st, fi.max).astype(dt)


def _keep_decode_finite(s: np.ndarray, z: np.ndarray, qhi: int, where: np.ndarray) -> np.ndarray:
    """Nudge a scale down where decoding the top code, or code 0, would overflow float32 (|x|
    near 3.4e38; code 0 decodes to the range's minimum, which may be -3.4e38).

    Only ``where`` (non-constant groups): a constant group only ever uses codes -1, 0 and 1.
    """
    for _ in range(4):
        with np.errstate(over="ignore", invalid="ignore"):
            z32, s32 = z.astype(np.float32), s.astype(np.float32)
            top = (np.float32(qhi) - z32) * s32
            bottom = (np.float32(0) - z32) * s32
        bad = ~(np.isfinite(top) & np.isfinite(bottom)) & where
        if not bad.any():
            break
        s = np.where(bad, np.nextafter(s, s.dtype.type(0)), s)
    return s


def _to_f32(v: np.ndarray) -> np.ndarray:
    return np.clip(v, -F32_MAX, F32_MAX).astype(np.float32)
