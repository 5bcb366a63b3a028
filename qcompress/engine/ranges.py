"""Choosing the range each (row, group) grid must cover: minmax, percentile, or an MSE search.

Every method returns per-group bounds [lo, hi] inside the data's [min, max]; ``grid_for_range``
turns them into a grid. All work is vectorised over the groups of a chunk of rows; the only
Python loops are over tiles and over the (short) grid of candidate ranges.
"""

from __future__ import annotations

import numpy as np

from qcompress.engine.kernels import squared_error
from qcompress.engine.params import code_range, grid_for_range
from qcompress.engine.rows import (
    TILE_ELEMENTS,
    group_len,
    iter_col_tiles,
    iter_row_chunks,
    n_groups,
    tile_view,
)
from qcompress.engine.spec import QuantSpec

PERCENTILE = 99.9
"""Range method "percentile" clips |x| (symmetric) at this percentile of each group, or
(affine) x at its (100 - P)th and Pth percentiles. With linear interpolation, a group of 64
values is clipped only a few % of the way from its largest value to its second largest: the
method matters for large groups and per-channel rows."""

MSE_SHRINKS: tuple[float, ...] = tuple(float(t) for t in np.linspace(1.0, 0.5, 21))
"""Candidate clipping amplitudes for range method "mse", as fractions of the group's absmax.
1.0 (no clipping, i.e. minmax) comes first and is kept unless another candidate is strictly
better, so "mse" is never worse than "minmax" per group."""


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
            np.fmin(lo[rs, gs], blk.min(axis=-1), out=lo[rs, gs])
            np.fmax(hi[rs, gs], blk.max(axis=-1), out=hi[rs, gs])
    return lo, hi


def choose_range(
    rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds to cover for each group of ``rows`` (a chunk of the row view), given its min/max.

    Returns float64 (rows, n_groups) arrays with lo <= clip_lo <= clip_hi <= hi.
    """
    lo = lo.astype(np.float64)
    hi = hi.astype(np.float64)
    if spec.range_method == "minmax" or rows.size == 0:
        return lo, hi
    if spec.range_method == "percentile":
        return _percentile_range(rows, lo, hi, spec)
    return _mse_range(rows, lo, hi, spec)


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
    rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, spec: QuantSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the candidate [max(lo, -t*A), min(hi, t*A)] (A = absmax, t in MSE_SHRINKS)
    whose dequantized values have the smallest squared error.

    The family clips the largest magnitudes first, on whichever side they are, so one shrink
    factor serves both schemes (for symmetric it is exactly absmax * t).
    """
    qlo, qhi = code_range(spec.bits, spec.scheme)
    n_rows, cols = rows.shape
    glen = group_len(cols, spec)
    tiles = list(iter_col_tiles(cols, glen))
    bufs = {t.c1 - t.c0: np.empty(n_rows * (t.c1 - t.c0), np.float32) for t in tiles}
    amp = np.maximum(np.abs(lo), np.abs(hi))
    best = (lo, hi)
    best_err = np.full(lo.shape, np.inf)
    for shrink in MSE_SHRINKS:
        c_lo, c_hi = _clip_to(lo, hi, -shrink * amp, shrink * amp)
        grid32 = grid_for_range(c_lo, c_hi, spec).float32()
        err = np.zeros(lo.shape)
        for t in tiles:
            blk = tile_view(rows, slice(None), t)
            gs = slice(t.g0, t.g0 + t.k)
            g32 = tuple(None if a is None else a[:, gs] for a in grid32)
            buf = bufs[t.c1 - t.c0].reshape(blk.shape)
            err[:, gs] += squared_error(blk, g32, qlo, qhi, buf)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = (np.where(better, c_lo, best[0]), np.where(better, c_hi, best[1]))
    return best
