"""Choosing the range each (row, group) grid must cover: minmax, percentile, or an MSE search.

Every method returns per-group bounds [lo, hi] inside the data's [min, max]; ``grid_for_range``
turns them into a grid. All work is vectorised over the groups of a chunk of rows; the only
Python loops are over tiles and over the (short) grid of candidate ranges.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qcompress.engine.elementwise import squared_error
from qcompress.engine.params import Grid, code_range, grid_for_range
from qcompress.engine.rows import (
    TILE_ELEMENTS,
    group_len,
    iter_col_tiles,
    iter_row_chunks,
    n_groups,
    tile_view,
)
from qcompress.engine.spec import QuantSpec

GridFn = Callable[[np.ndarray, np.ndarray], Grid]
"""Builds the grid that covers per-group bounds [lo, hi] of a chunk of rows (float scales, or
second-level codes under fixed super-scales); the search scores candidates with it."""

PERCENTILE = 99.9
"""Range method "percentile" clips |x| (symmetric) at this percentile of each group, or
(affine) x at its (100 - P)th and Pth percentiles. With linear interpolation, a group of 64
values is clipped only a few % of the way from its largest value to its second largest: the
method matters for large groups and per-channel rows."""

MSE_SHRINKS: tuple[float, ...] = tuple(float(t) for t in np.linspace(1.0, 0.5, 21))
"""Candidate clipping factors for range method "mse": fractions of the group's absmax
(symmetric) or of each bound's magnitude (affine), in steps of 0.025. 1.0 (no clipping, i.e.
minmax) is scored first and kept unless a candidate is clearly better, so "mse" is never worse
than "minmax". See ``mse_shrinks`` for how many of them a search uses."""

MSE_DEEP_BITS = 3
"""Groups of codes of at most this many bits, and every per-channel or per-tensor row, search
every shrink, down to 0.5. Groups of wider codes stop at 0.7 (the first 13): their best clip is
rarely deeper, and a 4-bit sweep scores 15 candidates instead of 19. (Affine groups of wider
codes with second-level scales, the 4-7-bit defaults, take ``refine`` instead of any sweep.) On
benchmarks/quality.py's weight sets this costs at most 0.04 dB at 4 and 5 bits (heavy-tailed
groups; nothing on Gaussian ones), where stopping at 0.7 would cost 1.5 dB on 2-bit groups and
0.1 dB on 4-bit heavy-tailed rows. (The resolution is what matters: steps of 0.05 instead of
0.025 lose 0.2 dB at 5 bits.)"""


def mse_shrinks(spec: QuantSpec) -> tuple[float, ...]:
    """The shrinks the MSE search scores for ``spec`` (see ``MSE_DEEP_BITS``)."""
    deep = spec.bits <= MSE_DEEP_BITS or spec.granularity != "group"
    return MSE_SHRINKS if deep else MSE_SHRINKS[:13]


MSE_STRIDE = 4
"""The search is coarse to fine: each sweep scores every 4th shrink (0.9, 0.8, 0.7 and, at low
bits, 0.6, 0.5), then the shrinks 2 and then 1 step either side of the best so far: 7 (9)
candidates per sweep instead of 12 (20), for the same result wherever the error is unimodal in
the shrink (tests/test_engine.py: within 0.02 dB of the full sweep). (A stride of 3 with one
refinement step, 6 candidates, loses 0.04 dB there.)"""

MSE_MIN_GAIN = 1e-4
"""A candidate replaces the best so far only if it cuts the (float32-summed) squared error by
more than this fraction: far above summation noise, so a choice is never worse in fact."""


def group_minmax(rows: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per (row, group) min and max of a float row view, as (rows, n_groups) float32.

    NaN propagates into both and an Inf shows as an infinite bound, so a finiteness check of the
    result is a finiteness check of the tensor. Empty groups get [0, 0].
    """
    n_rows, cols = rows.shape
    shape = (n_rows, n_groups(cols, spec))
    if rows.size == 0:
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    lo = np.full(shape, np.inf, np.float32)
    hi = np.full(shape, -np.inf, np.float32)
    glen = group_len(cols, spec)
    for rs in iter_row_chunks(n_rows, cols):
        for t in iter_col_tiles(cols, glen):
            blk = tile_view(rows, rs, t)
            gs = slice(t.g0, t.g0 + t.k)
            np.minimum(lo[rs, gs], blk.min(axis=-1), out=lo[rs, gs])  # not fmin: keep NaN
            np.maximum(hi[rs, gs], blk.max(axis=-1), out=hi[rs, gs])
    return lo, hi


def choose_range(
    rows: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    spec: QuantSpec,
    grid_fn: GridFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds to cover for each group of ``rows`` (a chunk of the row view), given its min/max.

    ``grid_fn`` builds the grid for candidate bounds (default: ``grid_for_range`` with float
    scales). Returns float64 (rows, n_groups) arrays with lo <= clip_lo <= clip_hi <= hi.
    """
    lo = lo.astype(np.float64)
    hi = hi.astype(np.float64)
    if spec.range_method == "minmax" or rows.size == 0:
        return lo, hi
    if spec.range_method == "percentile":
        return _percentile_range(rows, lo, hi, spec)
    return _mse_range(rows, lo, hi, spec, grid_fn)


def _clip_to(lo: np.ndarray, hi: np.ndarray, c_lo, c_hi) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] ∩ [c_lo, c_hi], kept non-empty (collapses onto c_hi if they do not meet)."""
    new_hi = np.minimum(hi, c_hi)
    return np.minimum(np.maximum(lo, c_lo), new_hi), new_hi


def _percentile_range(
    rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    n_rows, cols = rows.shape
    glen = group_len(cols, spec)
    symmetric = spec.scheme == "symmetric"
    p_lo = np.empty_like(lo)
    p_hi = np.empty_like(hi)
    if glen <= TILE_ELEMENTS:
        for t in iter_col_tiles(cols, glen):
            blk = tile_view(rows, slice(None), t)
            gs = slice(t.g0, t.g0 + t.k)
            if symmetric:
                a = np.percentile(np.abs(blk), PERCENTILE, axis=-1, overwrite_input=True)
                p_lo[:, gs], p_hi[:, gs] = -a, a
            else:
                p_lo[:, gs], p_hi[:, gs] = np.percentile(
                    blk, [100 - PERCENTILE, PERCENTILE], axis=-1
                )
    else:  # groups longer than a tile: few of them, each a long 1-D slice
        for r in range(n_rows):
            for j in range(lo.shape[1]):
                seg = rows[r, j * glen : (j + 1) * glen]
                if symmetric:
                    a = np.percentile(np.abs(seg), PERCENTILE, overwrite_input=True)
                    p_lo[r, j], p_hi[r, j] = -a, a
                else:
                    p_lo[r, j], p_hi[r, j] = np.percentile(seg, [100 - PERCENTILE, PERCENTILE])
    return _clip_to(lo, hi, p_lo, p_hi)


def _mse_range(
    rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, spec: QuantSpec, grid_fn: GridFn | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the candidate range whose dequantized values have the smallest squared error.

    Symmetric: [max(lo, -t*A), min(hi, t*A)] with A = absmax, i.e. amplitude absmax * t.
    Affine: first the lower bound alone (lo * t, for lo < 0), then, from the best of those, the
    upper bound alone (hi * t, for hi > 0). Searching the two ends one after the other recovers
    most of what a joint grid gains over a shared factor (0.2-0.6 dB more at 2-4 bits on
    Gaussian, Laplace and skewed groups) for twice, not 20 times, the cost of one scan.
    Minmax is scored first and kept unless a candidate is strictly better. Each sweep is coarse
    to fine (``MSE_STRIDE``); the compiled search (``compiled.mse_search_l2``) follows the same
    candidates in the same order. (Affine groups of more than ``MSE_DEEP_BITS`` bits under
    second-level scales are searched by ``refine`` instead.)
    """
    best = _Best(lo, hi, _Scorer(rows, spec, grid_fn))
    if spec.scheme == "symmetric":
        amp = np.maximum(np.abs(lo), np.abs(hi))
        best.sweep(lambda t: _clip_to(lo, hi, -t * amp, t * amp))
        return best.lo, best.hi
    base_hi = best.hi
    best.sweep(lambda t: (np.minimum(np.maximum(lo, lo * t), base_hi), base_hi))
    base_lo = best.lo
    best.sweep(lambda t: (base_lo, np.maximum(np.minimum(hi, hi * t), base_lo)))
    return best.lo, best.hi


Candidates = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Bounds (c_lo, c_hi) per group for per-group shrink factors t (t = 1 gives the sweep's base)."""


class _Best:
    """The best range per group so far, and its error."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, score: _Scorer) -> None:
        self.score = score
        self.lo, self.hi = lo, hi
        self.err = score(lo, hi)

    def sweep(self, candidates: Candidates) -> None:
        """Every ``MSE_STRIDE``-th shrink, then halving steps around each group's best. Where a
        neighbour falls outside the list, the group scores its best again (never "better")."""
        n = len(mse_shrinks(self.score.spec))
        idx = np.zeros(self.lo.shape, np.intp)  # each group's best shrink in this sweep
        for i in range(MSE_STRIDE, n, MSE_STRIDE):
            self._consider(candidates, np.full(idx.shape, i), idx)
        step = MSE_STRIDE // 2
        while step >= 1:
            center = idx.copy()
            for j in (center - step, center + step):
                self._consider(candidates, np.where((j >= 1) & (j < n), j, center), idx)
            step //= 2

    def _consider(self, candidates: Candidates, i: np.ndarray, idx: np.ndarray) -> None:
        c_lo, c_hi = candidates(np.asarray(mse_shrinks(self.score.spec))[i])
        err = self.score(c_lo, c_hi)
        better = err < self.err * (1 - MSE_MIN_GAIN)
        self.err = np.where(better, err, self.err)
        self.lo = np.where(better, c_lo, self.lo)
        self.hi = np.where(better, c_hi, self.hi)
        idx[better] = i[better]


class _Scorer:
    """Squared error per (row, group) of quantizing a chunk of rows with a candidate range."""

    def __init__(self, rows: np.ndarray, spec: QuantSpec, grid_fn: GridFn | None) -> None:
        self.rows, self.spec = rows, spec
        self.grid_fn = grid_fn or (lambda a, b: grid_for_range(a, b, spec))
        self.qlo, self.qhi = code_range(spec.bits, spec.scheme)
        n_rows, cols = rows.shape
        self.shape = (n_rows, n_groups(cols, spec))
        self.tiles = list(iter_col_tiles(cols, group_len(cols, spec)))
        self.buf = np.empty(max(n_rows * (t.c1 - t.c0) for t in self.tiles), np.float32)

    def __call__(self, c_lo: np.ndarray, c_hi: np.ndarray) -> np.ndarray:
        grid32 = self.grid_fn(c_lo, c_hi).float32()
        err = np.zeros(self.shape)
        for t in self.tiles:
            blk = tile_view(self.rows, slice(None), t)
            gs = slice(t.g0, t.g0 + t.k)
            g32 = tuple(None if a is None else a[:, gs] for a in grid32)
            buf = self.buf[: blk.size].reshape(blk.shape)
            err[:, gs] += squared_error(blk, g32, self.qlo, self.qhi, buf)
        return err
