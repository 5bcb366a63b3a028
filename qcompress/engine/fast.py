"""Compiled kernels (numba) for the loops numpy cannot make fast: fused encode + error metrics,
the range searches under second-level scales (``refine`` and the sweep of ``ranges``), per-group
min/max and the second level's needed steps.

Why: numpy runs one pass over memory per operation, so quantize-then-measure costs a dozen passes
and a candidate search forty times that; here each element is read once per kernel while it is in
L1. Only tensors of at least ``MIN_ELEMENTS`` come here (``use_fast``): below that, compiling (or
loading the cache of) a kernel costs more than it saves, and small commands never import numba.

Exactness: codes, scales and zero-points are computed with the same float32/float64 operations,
in the same order, as the numpy path (``kernels.encode``/``decode``, ``level2.encode_params``), in
functions compiled *without* fast-math, so no multiply-add is fused or reordered. The least-squares
search (``compiled.refine_l2``) adds every sum in the order ``refine`` does, so it chooses the same
grids bit for bit. The shrink sweep scores the same candidates in the same order as
``ranges._Best.sweep``; only its float32 sums of squared errors are added in another order than
numpy's, which can flip a choice only in a near-tie at the ``ranges.MSE_MIN_GAIN`` margin (never
seen in the tests). Group min/max may take any order (min and max are exact; zero bounds are
made +0.0 on both paths). The error metrics' float64 sums
are the one place that allows reassociation (so they vectorize); they equal the two-pass
``error_stats`` up to summation order. Every kernel works on rows independently and sums each row
in a fixed order, so results do not depend on how the rows are split over threads.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

MIN_ELEMENTS = 1 << 18
"""Tensors smaller than this (1 MB of float32) take the numpy path: compiled kernels pay off from
a few MB, and the numpy path is exact and already fast enough for small tensors."""

TILE = 2048
"""Columns per tile inside a kernel: the tile's float32 values and decoded values (16 kB) stay in
L1 between the encode loop and the reductions."""

DISABLE_ENV = "QCOMPRESS_NO_NUMBA"
"""Set to 1 to force the numpy path (for comparing the two; results agree except for near-ties of
the MSE search, see the module docstring)."""

TINY_STEP = 2.0**-20  # = level2.TINY_STEP; repeated so the kernels see it as a constant
F32_MAX = float(np.finfo(np.float32).max)


def use_fast(size: int) -> bool:
    """Whether a tensor of ``size`` elements takes the compiled path (numba importable, big enough,
    not disabled by ``QCOMPRESS_NO_NUMBA``)."""
    if size < MIN_ELEMENTS or os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    return _kernels() is not None


@cache
def _kernels() -> dict[str, Any] | None:
    """Compile (or load from numba's on-disk cache) every kernel, once per process."""
    try:
        import numba
    except ImportError:  # an install without numba still works, at numpy speed
        return None
    del numba
    from qcompress.engine import compiled

    return {
        "encode_stats": compiled.encode_stats,
        "group_minmax": compiled.group_minmax,
        "mse_search_l2": compiled.mse_search_l2,
        "refine_l2": compiled.refine_l2,
        "min_need": compiled.min_need,
    }


def kernels() -> dict[str, Any]:
    """The compiled kernels; only call after ``use_fast`` returned True."""
    k = _kernels()
    assert k is not None
    return k
