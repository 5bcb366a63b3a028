"""The second level: group scales (and minimums) quantized to small integer codes.

With float16 scales, a 4-bit group of 32 spends 1 bit per weight on its scale and zero-point;
GGUF's K-quants and bitsandbytes' double quantization spend far less by storing each group's
scale (and min) as a 6- or 8-bit code under a float "super-scale" shared by many groups. That is
what lets small groups (whose min-max ranges are tighter) fit in the same bits per weight.

Decoding (affine): a group's step is ``s = super_scale * sc`` and code 0 decodes to
``m = super_min * mc``, so x ≈ m + s * q, i.e. (q - zp) * s with zp = -m / s. Symmetric:
x ≈ super_scale * sc * q. Both are computed in float32 by :func:`decode_params`, which the
encoder uses too: the grid codes are chosen with is exactly the grid the reader rebuilds.

The super-scales come from the groups' min-max ranges before any range search, and every
candidate range of the search is rounded outwards onto them (the min down, the step up), so the
grid always covers the candidate range, the error bound |x - x̂| <= s / 2 holds inside it with
the decoded s, and the search scores exactly what will be stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompress.engine.constants import F32_MAX, TINY_STEP
from qcompress.engine.params import Grid, code_range
from qcompress.engine.spec import SUPER_BLOCK, Level2, QuantSpec

SLACK = 1 + 2.0**-20
"""Super-scales (and negative super-mins) are widened by this factor, so that the float32
rounding of decoded steps and zero-points cannot leave the block's widest group a few ulps
short of its range when its code is already the largest (costs ~1e-5 dB)."""


class Supers:
    """Per-group views of the block super-scales: (rows, n_groups) float32 arrays."""

    def __init__(self, super_scale: np.ndarray, super_min: np.ndarray | None, shape: tuple):
        self.super_scale = super_scale
        self.super_min = super_min
        self.step = _per_group(super_scale, shape)
        self.min = None if super_min is None else _per_group(super_min, shape)

    def rows(self, rs: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """The (step, min) super-scales of a chunk of rows."""
        return self.step[rs], None if self.min is None else self.min[rs]


@dataclass(frozen=True)
class Chunk:
    """A chunk of rows as every range search under second-level scales starts from (the numpy
    refinement and both compiled kernels): one value, so the searches cannot take its six parts
    in different orders."""

    rows: np.ndarray  # the chunk's float32 row view
    glen: int  # group length
    lo: np.ndarray  # its groups' min and max, (rows, n_groups)
    hi: np.ndarray
    step: np.ndarray  # their super-scales (``Supers.rows``)
    smin: np.ndarray | None  # None for symmetric codes


def n_blocks(shape: tuple[int, int]) -> int:
    """Second-level blocks for a (rows, n_groups) scale array (at least one)."""
    return max(1, -(-(shape[0] * shape[1]) // SUPER_BLOCK))


def _per_group(per_block: np.ndarray, shape: tuple) -> np.ndarray:
    return np.repeat(per_block, SUPER_BLOCK)[: shape[0] * shape[1]].reshape(shape)


def _blocks(a: np.ndarray, fill: float) -> np.ndarray:
    """(n_blocks, SUPER_BLOCK) float64 view of a (rows, n_groups) array, padded with ``fill``."""
    flat = a.reshape(-1).astype(np.float64)
    nb = n_blocks(a.shape)
    out = np.full(nb * SUPER_BLOCK, fill)
    out[: flat.size] = flat
    return out.reshape(nb, SUPER_BLOCK)


def _step_super(need_max: np.ndarray) -> np.ndarray:
    """The float32 super-scale for each block's largest needed step: widened, rounded up, and
    (when positive) at least float32's smallest normal, so 1 / step stays finite."""
    step = _round_away(need_max * SLACK, up=True)
    tiny = np.finfo(np.float32).tiny
    return np.where(step > 0, np.maximum(step, tiny), step).astype(np.float32)


def _round_away(v: np.ndarray, up: bool) -> np.ndarray:
    """float32 of v, moved one ulp outwards where rounding went the wrong way (float32 range)."""
    big = F32_MAX
    v = np.clip(v, -big, big)
    f = v.astype(np.float32)
    wrong = f.astype(np.float64) < v if up else f.astype(np.float64) > v
    toward = np.float32(np.inf if up else -np.inf)
    with np.errstate(over="ignore"):  # nextafter(max, inf) where it is not used
        return np.where(wrong, np.nextafter(f, toward), f).astype(np.float32)


def choose_supers(
    lo: np.ndarray, hi: np.ndarray, spec: QuantSpec, compiled: bool = False
) -> Supers:
    """Super-scales for (rows, n_groups) min-max ranges ``lo`` <= ``hi``.

    The super-min is the block's most negative minimum / K (or, when no minimum is negative,
    the largest / K), so that every group's minimum rounds down onto it; the super-scale is the
    block's largest needed step / K, rounded up, so that no scale code exceeds K = 2^bits - 1.
    ``compiled``: compute the needed steps with the compiled kernel (the same operations; only
    when ``jit.use_fast`` said so).
    """
    assert spec.scale_bits is not None
    k = 2**spec.scale_bits - 1
    shape = lo.shape
    if spec.scheme == "symmetric":
        qhi = code_range(spec.bits, "symmetric")[1]
        amp = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64)
        step = _step_super(_blocks(amp / qhi, 0.0).max(axis=1) / k)
        return Supers(_finite_times(step, k), None, shape)
    lo_b = _blocks(lo, 0.0)
    neg = (lo_b < 0).any(axis=1)
    target = np.where(neg, lo_b.min(axis=1) * SLACK, lo_b.max(axis=1)) / k
    # A negative super-min rounds away from zero so that the block's lowest minimum is reached.
    super_min = np.where(neg, _round_away(target, up=False), target.astype(np.float32))
    super_min = _finite_times(super_min.astype(np.float32), k)
    smin = _per_group(super_min, shape)
    if compiled:
        from qcompress.engine import jit

        need = np.empty(shape)
        qmax = float(code_range(spec.bits, "affine")[1])
        jit.kernels()["min_need"](lo, hi, smin, float(k), qmax, need)
    else:
        _, m = _min_codes(lo.astype(np.float64), smin, k)
        need = _needed_step(lo, hi, m, spec.bits)
    step = _finite_times(_step_super(_blocks(need, 0.0).max(axis=1) / k), k)
    return Supers(step, super_min, shape)


def _finite_times(v: np.ndarray, k: int) -> np.ndarray:
    """``v`` with |v| capped so that v * k, any decoded step or minimum, is a finite float32.

    Only a block holding values near float32's limit (±3.4e38) reaches the cap: its widened
    super-scale or super-min would otherwise decode to Inf. Such a block's extreme values may
    then lie a few ulps outside its grid and are clipped to it (the error says by how much).
    """
    lim = np.float32(F32_MAX / k)
    with np.errstate(over="ignore"):
        while not np.isfinite(lim * np.float32(k)):
            lim = np.nextafter(lim, np.float32(0))
    return np.clip(v, -lim, lim).astype(np.float32)


def _min_codes(clo: np.ndarray, super_min: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes mc in [0, k] with m = super_min * mc <= clo (where possible), and m as float32."""
    sm = super_min.astype(np.float64)
    ratio = np.zeros_like(clo, dtype=np.float64)
    np.divide(clo, sm, out=ratio, where=sm != 0)
    mc = np.where(sm < 0, np.ceil(ratio), np.floor(ratio))
    mc = np.clip(mc, 0, k)
    m = (super_min * mc.astype(np.float32)).astype(np.float32)
    bump = (m.astype(np.float64) > clo) & (sm < 0) & (mc < k)  # float32 rounding of the product
    mc = np.where(bump, mc + 1, mc)
    m = (super_min * mc.astype(np.float32)).astype(np.float32)
    return mc.astype(np.uint8), m


def _needed_step(clo: np.ndarray, chi: np.ndarray, m: np.ndarray, bits: int) -> np.ndarray:
    """The step that makes m + step * qmax reach chi (a tiny one for a single nonzero value)."""
    qmax = code_range(bits, "affine")[1]
    m64 = m.astype(np.float64)
    need = np.maximum(chi.astype(np.float64) - m64, 0.0) / qmax
    return np.maximum(need, np.abs(m64) * TINY_STEP)


def encode_params(
    clo: np.ndarray,
    chi: np.ndarray,
    step: np.ndarray,
    smin: np.ndarray | None,
    spec: QuantSpec,
) -> tuple[Grid, np.ndarray, np.ndarray | None]:
    """The grid covering [clo, chi] per group, and its scale (and min) codes.

    ``step`` and ``smin`` are the per-group super-scales (``Supers.rows``). Returns the grid
    (float32 scale and zero-point decoded from the codes, and the range it covers), the scale
    codes and, for affine, the min codes (uint8).
    """
    assert spec.scale_bits is not None
    k = 2**spec.scale_bits - 1
    clo = np.asarray(clo, np.float64)
    chi = np.asarray(chi, np.float64)
    if spec.scheme == "symmetric":
        qhi = code_range(spec.bits, "symmetric")[1]
        need = np.maximum(np.abs(clo), np.abs(chi)) / qhi
        mc = None
    else:
        assert smin is not None
        mc, m = _min_codes(clo, smin, k)
        need = _needed_step(clo, chi, m, spec.bits)
    sc = _scale_codes(need, step, k)
    scale, zp = decode_params(sc, mc, step, smin)
    if spec.scheme == "affine":  # float32 rounding of the decoded step: one code up if short
        assert zp is not None
        top = (code_range(spec.bits, "affine")[1] - zp.astype(np.float64)) * scale
        short = (top < chi) & (sc < k)
        if short.any():
            sc = np.where(short, sc + 1, sc).astype(np.uint8)
            scale, zp = decode_params(sc, mc, step, smin)
    return _grid(scale, zp, spec), sc, mc


def _scale_codes(need: np.ndarray, step: np.ndarray, k: int) -> np.ndarray:
    st = step.astype(np.float64)
    ratio = np.zeros_like(need)
    np.divide(need, st, out=ratio, where=st > 0)
    sc = np.clip(np.ceil(ratio), 0, k)
    low = (st * sc < need) & (sc < k)  # float64 rounding of the ratio
    return np.where(low, sc + 1, sc).astype(np.uint8)


def decode_params(
    sc: np.ndarray, mc: np.ndarray | None, step: np.ndarray, smin: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 (scale, zero_point) of each group from its codes and super-scales: the decoder.

    zero_point = -m / scale (0 where the scale is 0), so that (code - zp) * scale = m + code * s.
    """
    scale = (step * sc.astype(np.float32)).astype(np.float32)
    if mc is None:
        return scale, None
    assert smin is not None
    m = (smin * mc.astype(np.float32)).astype(np.float32)
    zp = np.zeros_like(scale)
    with np.errstate(over="ignore"):
        np.divide(-m, scale, out=zp, where=scale > 0)
    big = np.float32(F32_MAX)
    return scale, np.clip(zp, -big, big)


def _grid(scale: np.ndarray, zp: np.ndarray | None, spec: QuantSpec) -> Grid:
    qlo, qhi = code_range(spec.bits, spec.scheme)
    s = scale.astype(np.float64)
    z = 0.0 if zp is None else zp.astype(np.float64)
    big = F32_MAX
    lo = np.clip((qlo - z) * s, -big, big).astype(np.float32)
    hi = np.clip((qhi - z) * s, -big, big).astype(np.float32)
    return Grid(scale, zp, lo, hi)


def level2_of(sc: np.ndarray, mc: np.ndarray | None, supers: Supers) -> Level2:
    """The stored second level of a quantized tensor."""
    return Level2(sc, mc, supers.super_scale, supers.super_min)


def decode_level2(level2: Level2, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 (scale, zero_point) of a (rows, n_groups) grid from its stored second level."""
    step = _per_group(np.asarray(level2.super_scale, np.float32), shape)
    smin = None
    if level2.super_min is not None:
        smin = _per_group(np.asarray(level2.super_min, np.float32), shape)
    mc = None if level2.min_codes is None else level2.min_codes.reshape(shape)
    return decode_params(level2.scale_codes.reshape(shape), mc, step, smin)
