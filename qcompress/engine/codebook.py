"""Non-uniform fixed-rate codes: 3- and 4-bit codes that index a table of levels, under
per-group signed scales stored as second-level codes.

Why: at 4 bits an evenly spaced grid wastes levels on the tails of bell-shaped weights. A table
denser near zero (llama.cpp's IQ4_NL, bitsandbytes' NF4, or levels fitted to the tensor by
Lloyd-Max) spends them where the values are. llama.cpp's IQ4_XS, at 4.25 bits per weight, beats
an affine 4-bit code of the same size by 0.3-1 dB that way (issue 13).

A group of ``g`` values is decoded as ``x̂ = d * levels[code]`` in float32, where ``levels`` is a
sorted float32 table whose most negative level is -1 (``normalise_levels``) and ``d`` is the
group's *signed* scale. The sign matters: the tables are asymmetric, and mapping each group's
largest-magnitude value onto the -1 level (a negative ``d`` for a positive value) is worth
0.1-0.6 dB. ``d = super[b] * (sc - 2^(scale_bits-1))``: ``sc`` is an unsigned ``scale_bits``
code and ``super[b]`` a float32 per block of ``SUPER_BLOCK`` consecutive groups (C order over
(rows, n_groups)), as in :mod:`level2`. Codes are stored like symmetric codes (int8
``index - 2^(bits-1)``), so the packed stream holds the table index itself: a 4-bit nibble is an
IQ4_NL index.

Choosing a group's scale (as llama.cpp's ``quantize_row_iq4_nl_impl`` does): start from
``d0 = amax / levels[0]`` (the min-max start), try scales around it, refit each trial's
assignment by weighted least squares, keep the least weighted squared error; then the scale
code is chosen among the neighbours of the best scale and the min-max start's own code, each
scored with the levels reassigned under the *decoded* scale. So what is scored is what is
stored, and a group's error is never worse than the min-max start's under the same super-scale.

Every sum runs in a fixed order (numpy's pairwise sum of a group, ``np.bincount``); no
compiled code, so the bytes do not depend on the CPU. Weights (``weights``: one non-negative
value per column of the row view, e.g. mean squared activations of the input channel) make
every choice minimise sum w (x - x̂)^2; without them every column weighs 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompress.engine.level2 import _per_group, _round_away
from qcompress.engine.level2 import n_blocks as level2_blocks
from qcompress.engine.rows import from_rows, group_len, iter_row_chunks, n_groups, to_rows
from qcompress.engine.spec import (
    SUPER_BLOCK,
    Level2,
    NonFiniteError,
    QuantizedTensor,
    QuantSpec,
    check_codebook_spec,
)

IQ4NL_INT8: tuple[int, ...] = (
    -127,
    -104,
    -83,
    -65,
    -49,
    -35,
    -22,
    -10,
    1,
    13,
    25,
    38,
    53,
    69,
    89,
    113,
)
"""llama.cpp's ``kvalues_iq4nl`` (ggml-common.h): GGUF IQ4_NL decodes ``d * kvalues[nibble]``."""

NF4: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
"""bitsandbytes' NF4 levels (normal quantiles, QLoRA): symmetric about 0 with an exact zero."""

FIXED_TABLES: dict[str, np.ndarray] = {
    "iq4nl": np.asarray(IQ4NL_INT8, np.float32) / np.float32(127),
    "nf4": np.asarray(NF4, np.float32),
}
"""Fixed 4-bit tables, normalised so the most negative level is -1. IQ4_NL's table divided by
127 decodes as ``(d / 127) * kvalues``: a GGUF export writes ``d / 127`` as the block scale."""

FIT_START: dict[int, np.ndarray] = {
    3: np.linspace(-1.0, 0.75, 8),
    4: FIXED_TABLES["iq4nl"].astype(np.float64),
}
"""Where Lloyd-Max starts per width: an asymmetric start, which the signed scales exploit."""

TRIALS = np.linspace(-0.1, 0.1, 9)
"""Relative offsets of the scales tried around the min-max start and around the start that maps
the largest magnitude onto the other end of the table (llama.cpp tries 15 around
``-max / values[0]``; more than 9 gains under 0.02 dB on Gaussian and t(3) matrices)."""

FIT_ROUNDS = 10
FIT_SAMPLE_GROUPS = 1 << 13
"""Lloyd-Max fits on at most this many groups (every k-th one, so the sample is deterministic):
the 16 levels are settled well before that, and fitting stays a fraction of the encoding."""


@dataclass(frozen=True)
class CodebookFit:
    """A tensor's table as fitted: its float32 levels and the fitting rounds it took."""

    levels: np.ndarray
    rounds: int


def normalise_levels(levels: np.ndarray) -> np.ndarray:
    """float32 levels sorted ascending with the largest magnitude at -1 (mirrored if needed):
    any scaling or mirroring of a table gives the same codes under signed scales."""
    v = np.sort(np.asarray(levels, np.float64))
    if abs(v[-1]) > abs(v[0]):
        v = np.sort(-v)
    top = abs(v[0])
    return (v / top if top > 0 else v).astype(np.float32)


def table_for(spec: QuantSpec) -> np.ndarray | None:
    """The fixed table a spec names, or None for a fitted one."""
    return FIXED_TABLES.get(spec.codebook or "")


def quantize_codebook(
    x: np.ndarray, spec: QuantSpec, weights: np.ndarray | None = None
) -> QuantizedTensor:
    """Quantize ``x`` with the codebook ``spec.codebook`` (fitting the levels when "fit").

    ``weights``: None, or one non-negative weight per column of the row view (the input channels
    of a per-output-channel tensor), which every choice then minimises the weighted error of.
    Raises NonFiniteError for NaN/Inf, ValueError for a bad spec, dtype or weights.
    """
    check_codebook_spec(spec)
    rows = _rows(x, spec)
    w = _column_weights(weights, rows.shape[1])
    levels = table_for(spec)
    if levels is None:
        levels = fit_levels(rows, spec, w).levels
    return _encode(rows, levels, spec, w, tuple(np.shape(x)))


def fit_levels(rows: np.ndarray, spec: QuantSpec, weights: np.ndarray | None = None) -> CodebookFit:
    """Lloyd-Max levels for (rows, cols) float data: alternate the groups' best scales and the
    levels' weighted centroids (level k = sum w d x / sum w d^2 over the values it codes)."""
    xg, wg = _groups(rows, spec, weights)
    xg, wg = xg.reshape(-1, xg.shape[-1]), wg.reshape(-1, wg.shape[-1])
    stride = max(1, xg.shape[0] // FIT_SAMPLE_GROUPS)
    xs, ws = xg[::stride], wg[::stride]
    levels = normalise_levels(FIT_START[spec.bits])
    rounds = 0
    while rounds < FIT_ROUNDS:
        rounds += 1
        d = _best_scales(xs, ws, levels)
        idx = _assign(xs, d, levels)
        dd = np.broadcast_to(d[:, None], xs.shape)
        num = np.bincount(idx.ravel(), (ws * dd * xs).ravel(), minlength=levels.size)
        den = np.bincount(idx.ravel(), (ws * dd * dd).ravel(), minlength=levels.size)
        new = levels.astype(np.float64).copy()
        np.divide(num, den, out=new, where=den > 0)
        new = normalise_levels(new)
        if np.array_equal(new, levels):
            break
        levels = new
    return CodebookFit(levels, rounds)


def _rows(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f" and not (x.dtype.kind == "V" and x.dtype.names is None):
        raise ValueError(f"can only quantize floating-point tensors, not {x.dtype}")
    with np.errstate(over="ignore"):
        rows = to_rows(x.astype(np.float32, copy=False), spec)
    if not np.isfinite(rows).all():
        n_nan = int(np.isnan(rows).sum())
        raise NonFiniteError(
            f"tensor holds {n_nan} NaN and {int(np.isinf(rows).sum())} Inf of {rows.size} values"
            "; no codebook can represent them"
        )
    return rows


def _column_weights(weights: np.ndarray | None, cols: int) -> np.ndarray | None:
    if weights is None:
        return None
    w = np.asarray(weights, np.float64).reshape(-1)
    if w.size != cols:
        raise ValueError(f"{w.size} importance weights for rows of {cols} columns")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("importance weights must be finite and non-negative")
    return w


def _groups(
    rows: np.ndarray, spec: QuantSpec, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, n_groups, g) float64 values and weights, the ragged last group padded with
    zero-weight zeros (which change no choice and are dropped after encoding)."""
    n_rows, cols = rows.shape
    g = group_len(cols, spec)
    ng = n_groups(cols, spec)
    pad = ng * g - cols
    x = np.zeros((n_rows, ng * g))
    x[:, :cols] = rows
    w = np.zeros(ng * g)
    w[:cols] = 1.0 if weights is None else weights
    wg = np.broadcast_to(w.reshape(1, ng, g), (n_rows, ng, g))
    del pad
    return x.reshape(n_rows, ng, g), wg


def _gsum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis (a group): numpy's pairwise summation of a contiguous run, plain
    C in a fixed order for a given length (no reassociation without fast-math), on every CPU."""
    return np.ascontiguousarray(a).sum(axis=-1)


def _assign(xg: np.ndarray, d: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the level nearest x / d for each value (index of 0 where d is 0)."""
    lv = levels.astype(np.float64)
    mid = (lv[1:] + lv[:-1]) / 2
    u = np.zeros_like(xg)
    dd = np.broadcast_to(d[..., None], xg.shape)
    np.divide(xg, dd, out=u, where=dd != 0)
    return np.searchsorted(mid, u).astype(np.uint8)


def _best_scales(xg: np.ndarray, wg: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Per group (last axis), the least-squares scale of the best of the trial assignments."""
    lv = levels.astype(np.float64)
    amax = _signed_amax(xg)
    best_err = np.full(amax.shape, np.inf)
    best = np.zeros(amax.shape)
    x2 = _gsum(wg * xg * xg)
    for t, end in [(t, end) for end in (lv[0], lv[-1]) for t in TRIALS]:
        d = amax / end * (1.0 + t)
        q = lv[_assign(xg, d, levels)]
        sqx = _gsum(wg * xg * q)
        sq2 = _gsum(wg * q * q)
        fit = np.zeros_like(sqx)
        np.divide(sqx, sq2, out=fit, where=sq2 > 0)
        err = x2 - fit * sqx  # the refitted scale's error: sum w x^2 - sqx^2 / sq2
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, fit, best)
    return best


def _signed_amax(xg: np.ndarray) -> np.ndarray:
    """Each group's value of largest magnitude, with its sign (the first one on a tie)."""
    i = np.argmax(np.abs(xg), axis=-1)
    return np.take_along_axis(xg, i[..., None], axis=-1)[..., 0]


def minmax_start(xg: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The min-max start's scale per group: its largest-magnitude value onto level -1."""
    return _signed_amax(xg) / np.float64(levels[0])


def _supers(d: np.ndarray, k: int) -> np.ndarray:
    """float32 super-scale per block of SUPER_BLOCK groups: the block's largest |d| / k,
    rounded up so that no code's magnitude exceeds k (the smallest normal at least)."""
    flat = np.abs(d).reshape(-1)
    nb = level2_blocks(d.shape)
    padded = np.zeros(nb * SUPER_BLOCK)
    padded[: flat.size] = flat
    need = padded.reshape(nb, SUPER_BLOCK).max(axis=1) / k
    sup = _round_away(need, up=True)
    return np.where(sup > 0, np.maximum(sup, np.finfo(np.float32).tiny), 0).astype(np.float32)


def decode_scales(scale_codes: np.ndarray, super_scale: np.ndarray, scale_bits: int) -> np.ndarray:
    """float32 signed scales of (rows, n_groups) codes: super * (code - 2^(scale_bits-1))."""
    step = _per_group(np.asarray(super_scale, np.float32), scale_codes.shape)
    offset = np.float32(1 << (scale_bits - 1))
    return (step * (scale_codes.astype(np.float32) - offset)).astype(np.float32)


def _group_error(xg: np.ndarray, wg: np.ndarray, d32: np.ndarray, levels: np.ndarray):
    """(weighted squared error, indices) of each group decoded with float32 scales ``d32``."""
    idx = _assign(xg, d32.astype(np.float64), levels)
    xh = (d32[..., None] * levels[idx]).astype(np.float64)  # the float32 decode, widened
    r = xg - xh
    return _gsum(wg * r * r), idx


CHUNK_ELEMENTS = 1 << 18
"""Values per chunk of rows: the float64 temporaries of the search stay a few MB."""


def _encode(
    rows: np.ndarray,
    levels: np.ndarray,
    spec: QuantSpec,
    w: np.ndarray | None,
    shape: tuple[int, ...],
) -> QuantizedTensor:
    """Two passes over chunks of rows: every group's best and min-max scales (the super-scales
    need a whole block's), then each group's scale code and codes under the decoded scale."""
    assert spec.scale_bits is not None
    n_rows, cols = rows.shape
    ng = n_groups(cols, spec)
    chunks = list(iter_row_chunks(n_rows, cols, CHUNK_ELEMENTS))
    d_best = np.zeros((n_rows, ng))
    d_start = np.zeros((n_rows, ng))
    for rs in chunks:
        xg, wg = _groups(rows[rs], spec, w)
        d_best[rs] = _best_scales(xg, wg, levels)
        d_start[rs] = minmax_start(xg, levels)
    half = 1 << (spec.scale_bits - 1)
    sup = _supers(np.maximum(np.abs(d_best), np.abs(d_start)), half - 1)
    step = _per_group(sup, (n_rows, ng)).astype(np.float64)
    sc = np.zeros((n_rows, ng), np.uint8)
    codes = np.empty((n_rows, cols), np.int8)
    offset = 1 << (spec.bits - 1)
    for rs in chunks:
        xg, wg = _groups(rows[rs], spec, w)
        sc[rs] = _choose_codes(xg, wg, d_best[rs], d_start[rs], step[rs], spec, levels)
        d32 = step[rs].astype(np.float32) * (sc[rs].astype(np.float32) - np.float32(half))
        _, idx = _group_error(xg, wg, d32.astype(np.float32), levels)
        codes[rs] = (idx.reshape(idx.shape[0], -1)[:, :cols].astype(np.int16) - offset).astype(
            np.int8
        )
    scale = decode_scales(sc, sup, spec.scale_bits)
    lo = np.minimum(scale * levels[0], scale * levels[-1]).astype(np.float32)
    hi = np.maximum(scale * levels[0], scale * levels[-1]).astype(np.float32)
    second = Level2(sc, None, sup, None)
    return QuantizedTensor(codes, scale, None, lo, hi, spec, shape, second, levels)


def _choose_codes(
    xg: np.ndarray,
    wg: np.ndarray,
    d_best: np.ndarray,
    d_start: np.ndarray,
    step: np.ndarray,
    spec: QuantSpec,
    levels: np.ndarray,
) -> np.ndarray:
    """Each group's scale code: the nearest to its best scale or a neighbour, or the min-max
    start's code, whichever decodes to the least weighted error (ties: the earlier)."""
    assert spec.scale_bits is not None
    half = 1 << (spec.scale_bits - 1)
    top = 2 * half - 1

    def code_of(d: np.ndarray) -> np.ndarray:
        r = np.zeros_like(d)
        np.divide(d, step, out=r, where=step > 0)
        return np.clip(np.rint(r) + half, 0, top)

    near = code_of(d_best)
    tries = [near, np.clip(near - 1, 0, top), np.clip(near + 1, 0, top), code_of(d_start)]
    offset = np.float32(half)
    per_group = step.astype(np.float32)  # exactly the float32 super-scale of each group
    best_err = np.full(d_best.shape, np.inf)
    sc = np.zeros(d_best.shape, np.uint8)
    for c in tries:
        c8 = c.astype(np.uint8)
        d32 = (per_group * (c8.astype(np.float32) - offset)).astype(np.float32)
        err, _ = _group_error(xg, wg, d32, levels)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        sc = np.where(better, c8, sc)
    return sc


def dequantize_codebook(q: QuantizedTensor) -> np.ndarray:
    """``scale[group] * levels[code]`` in float32, as a C-contiguous array of the original shape."""
    assert q.levels is not None
    n_rows, cols = q.codes.shape
    spec = q.spec
    idx = q.codes.astype(np.int16) + (1 << (spec.bits - 1))
    if idx.size and (idx.min() < 0 or idx.max() >= q.levels.size):
        raise ValueError(f"a code indexes past the {q.levels.size} levels of the table")
    g = group_len(cols, spec)
    per_col = np.repeat(np.arange(q.scale.shape[1]), g)[:cols]
    out = (q.scale[:, per_col] * np.asarray(q.levels, np.float32)[idx]).astype(np.float32)
    x = from_rows(out.reshape(n_rows, cols), q.shape, spec)
    return x if x.flags.c_contiguous else x.copy()
