"""Compiled kernels (numba) for the loops numpy cannot make fast: fused encode + error metrics,
the range searches under second-level scales (``refine`` and the sweep of ``ranges``), per-group
min/max and the second level's needed steps.

Why: numpy runs one pass over memory per operation, so quantize-then-measure costs a dozen passes
and a candidate search forty times that; here each element is read once per kernel while it is in
L1. Only tensors of at least ``MIN_ELEMENTS`` come here (``use_fast``): below that, compiling (or
loading the cache of) a kernel costs more than it saves, and small commands never import numba.

Exactness: both paths give the same bits, on any CPU. Codes, scales and zero-points are computed
with the same float32/float64 operations, in the same order, as the numpy path
(``elementwise.encode``/``decode``, ``level2.encode_params``), in functions compiled *without*
fast-math, so no multiply-add is fused and nothing is reordered. Every float sum that is stored
(the error metrics of ``__qcompress__/stats``) or decides a choice (the squared errors of the
shrink sweep and of ``refine``, the least-squares fit) is added in a fixed order, the same in
numpy: in element order per group (``refine``), or in ``constants.SUM_LANES`` independent partial
sums combined in lane order (the sweep's errors, each row's metrics), which the compiler
vectorizes without reassociation; rows are combined by ``math.fsum``, which is order-free. So
results depend neither on the SIMD width (SSE, AVX2, AVX-512, NEON) nor on a cold or warm cache
nor on how rows are split over threads (``--jobs``). Group min/max may take any order (min and
max are exact; zero bounds are made +0.0 on both paths).

Caching: compiled kernels are cached on disk (``numba_cache.cache_enabled``) next to the package
when that is writable, else in a per-user cache directory, else not at all: a read-only install
with a read-only HOME still works, compiling once per process.

The kernels themselves are in ``numba_kernels``; the numbers both paths share in ``constants``.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from qcompress.engine.constants import DISABLE_ENV, MIN_ELEMENTS
from qcompress.engine.numba_cache import cache_enabled

__all__ = ["DISABLE_ENV", "MIN_ELEMENTS", "cache_enabled", "kernels", "use_fast"]


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
    cache_enabled()  # before the decorators run: they pick the cache's place
    from qcompress.engine import numba_kernels as compiled

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
