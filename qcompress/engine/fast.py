"""Compiled kernels (numba) for the loops numpy cannot make fast: fused encode + error metrics,
the range searches under second-level scales (``refine`` and the sweep of ``ranges``), per-group
min/max and the second level's needed steps.

Why: numpy runs one pass over memory per operation, so quantize-then-measure costs a dozen passes
and a candidate search forty times that; here each element is read once per kernel while it is in
L1. Only tensors of at least ``MIN_ELEMENTS`` come here (``use_fast``): below that, compiling (or
loading the cache of) a kernel costs more than it saves, and small commands never import numba.

Exactness: both paths give the same bits, on any CPU. Codes, scales and zero-points are computed
with the same float32/float64 operations, in the same order, as the numpy path
(``kernels.encode``/``decode``, ``level2.encode_params``), in functions compiled *without*
fast-math, so no multiply-add is fused and nothing is reordered. Every float sum that is stored
(the error metrics of ``__qcompress__/stats``) or decides a choice (the squared errors of the
shrink sweep and of ``refine``, the least-squares fit) is added in a fixed order, the same in
numpy: in element order per group (``refine``), or in ``kernels.SUM_LANES`` independent partial
sums combined in lane order (the sweep's errors, each row's metrics), which the compiler
vectorizes without reassociation; rows are combined by ``math.fsum``, which is order-free. So
results depend neither on the SIMD width (SSE, AVX2, AVX-512, NEON) nor on a cold or warm cache
nor on how rows are split over threads (``--jobs``). Group min/max may take any order (min and
max are exact; zero bounds are made +0.0 on both paths).

Caching: compiled kernels are cached on disk (``cache_enabled``) next to the package when that
is writable, else in a per-user cache directory, else not at all: a read-only install with a
read-only HOME still works, compiling once per process.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

MIN_ELEMENTS = 1 << 18
"""Tensors smaller than this (1 MB of float32) take the numpy path: compiled kernels pay off from
a few MB, and the numpy path is exact and already fast enough for small tensors."""

TILE = 2048
"""Columns per tile inside a kernel: the tile's float32 values and decoded values (16 kB) stay in
L1 between the encode loop and the reductions."""

DISABLE_ENV = "QCOMPRESS_NO_NUMBA"
"""Set to 1 to force the numpy path (for comparing the two: the artifact's bytes are the same)."""

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
    cache_enabled()  # before the decorators run: they pick the cache's place
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


@cache
def cache_enabled() -> bool:
    """Whether the kernels are cached on disk, after pointing numba at a writable place.

    Numba caches next to the source file (``__pycache__``), else in NUMBA_CACHE_DIR, else under
    the user's cache directory, and raises "no locator available" when none is writable (a
    read-only install with a read-only HOME). So this picks the first writable one of: the
    NUMBA_CACHE_DIR the user set, the package's ``__pycache__``, $XDG_CACHE_HOME/qcompress/numba,
    ~/.cache/qcompress/numba and a private directory under the temp dir; with none, the kernels
    are compiled without a cache (``compiled.CACHE``). Only called once numba is importable.
    """
    from numba.core import config

    if config.CACHE_DIR and _writable(Path(config.CACHE_DIR)):
        return True
    if _writable(Path(__file__).parent / "__pycache__"):
        return True
    for place in _cache_dirs():
        if _writable(place):
            os.environ["NUMBA_CACHE_DIR"] = str(place)  # numba re-reads the environment
            config.CACHE_DIR = str(place)
            return True
    return False


def _cache_dirs() -> list[Path]:
    """Where to cache when the package's own directory is read-only, most durable first."""
    places = []
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        places.append(Path(xdg) / "qcompress" / "numba")
    with contextlib.suppress(RuntimeError):  # no home directory can be determined
        places.append(Path.home() / ".cache" / "qcompress" / "numba")
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    places.append(Path(tempfile.gettempdir()) / f"qcompress-numba-{uid}")
    return places


def _writable(path: Path) -> bool:
    """Whether numba can cache in ``path``: creates it if needed (private to the user) and
    writes a temporary file, as numba's own check does. A directory under the shared temp dir
    must be ours and not writable by others (cached code is loaded and run)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.is_relative_to(tempfile.gettempdir()) and hasattr(os, "getuid"):
            st = path.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True
