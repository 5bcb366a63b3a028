"""The row view every engine function works on, and the tiles it is walked in.

A tensor is seen as a C-contiguous 2-D array of rows: the channel axis moved first and every other
axis flattened in order (``QuantSpec`` explains why). Groups run along the columns of a row. Work
is done tile by tile so that temporaries stay a few hundred kB, which keeps them in cache and keeps
peak memory independent of the tensor's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from qcompress.engine.spec import QuantSpec

TILE_ELEMENTS = 1 << 18
"""Target elements per tile (1 MB of float32): big enough to amortise per-call overhead (the
search builds a grid per chunk and candidate), small enough to stay near the cache."""


def row_shape(shape: tuple[int, ...], spec: QuantSpec) -> tuple[int, int]:
    """(rows, cols) of the row view of a tensor of ``shape``; validates ``spec.axis``."""
    size = math.prod(shape)
    if spec.granularity == "tensor" or not shape:
        return 1, size
    if not 0 <= spec.axis < len(shape):
        raise ValueError(f"axis {spec.axis} is out of range for a tensor of shape {shape}")
    rows = shape[spec.axis]
    return rows, math.prod(d for i, d in enumerate(shape) if i != spec.axis)


def to_rows(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """The (rows, cols) C-contiguous row view of ``x``: a view when possible, else a copy.

    Granularity "tensor" (and any 0-d tensor) gives a single row; otherwise row i holds every
    element whose index on ``spec.axis`` is i, in C order of the remaining axes.
    """
    x = np.asarray(x)
    rows, cols = row_shape(x.shape, spec)
    if spec.granularity != "tensor" and x.ndim > 1 and spec.axis != 0:
        x = np.moveaxis(x, spec.axis, 0)
    return np.ascontiguousarray(x).reshape(rows, cols)


def from_rows(rows: np.ndarray, shape: tuple[int, ...], spec: QuantSpec) -> np.ndarray:
    """Inverse of :func:`to_rows`: the tensor of ``shape`` (a view of ``rows`` when possible)."""
    shape = tuple(int(d) for d in shape)
    if row_shape(shape, spec) != rows.shape:
        raise ValueError(f"rows of shape {rows.shape} do not fit a tensor of shape {shape}")
    if spec.granularity == "tensor" or len(shape) <= 1 or spec.axis == 0:
        return rows.reshape(shape)
    moved = (shape[spec.axis], *shape[: spec.axis], *shape[spec.axis + 1 :])
    return np.moveaxis(rows.reshape(moved), 0, spec.axis)


def n_groups(cols: int, spec: QuantSpec) -> int:
    """Groups per row: 1 for tensor/channel, ceil(cols / group_size) for group.

    A row with no columns still has one (empty) group, so scale arrays are always
    (rows, n_groups) with n_groups >= 1 and an empty tensor needs no special case downstream.
    """
    if spec.granularity != "group" or cols == 0:
        return 1
    return -(-cols // spec.group_size)


def group_len(cols: int, spec: QuantSpec) -> int:
    """Columns per (non-ragged) group: the whole row unless granularity is "group"."""
    return spec.group_size if spec.granularity == "group" else max(cols, 1)


class Tile(NamedTuple):
    """Columns [c0, c1) of some rows, seen as ``k`` groups of ``g`` columns starting at group
    ``g0``. A group longer than a tile is split: then k == 1 and ``g`` is the piece's length."""

    c0: int
    c1: int
    g0: int
    k: int
    g: int


def iter_row_chunks(n_rows: int, cols: int, target: int = TILE_ELEMENTS) -> Iterator[slice]:
    """Consecutive row slices of about ``target`` elements each (at least one row)."""
    step = max(1, target // max(cols, 1))
    for r0 in range(0, n_rows, step):
        yield slice(r0, min(n_rows, r0 + step))


def iter_col_tiles(cols: int, glen: int, target: int = TILE_ELEMENTS) -> Iterator[Tile]:
    """Column tiles of whole groups (the ragged last group alone), or pieces of long groups."""
    if glen <= target:
        full = cols // glen
        step = max(1, target // glen)
        for j in range(0, full, step):
            k = min(step, full - j)
            yield Tile(j * glen, (j + k) * glen, j, k, glen)
        if cols > full * glen:
            yield Tile(full * glen, cols, full, 1, cols - full * glen)
        return
    for j in range(-(-cols // glen)):
        stop = min(cols, (j + 1) * glen)
        for p in range(j * glen, stop, target):
            q = min(stop, p + target)
            yield Tile(p, q, j, 1, q - p)


def tile_view(a: np.ndarray, rows: slice, t: Tile) -> np.ndarray:
    """The (r, k, g) view of tile ``t`` of the row-view array ``a`` (no copy)."""
    n = len(range(*rows.indices(a.shape[0])))
    return a[rows, t.c0 : t.c1].reshape(n, t.k, t.g)
