"""Where numba caches the compiled kernels on disk, or that it cannot: decided once, before any
kernel module (``numba_kernels``, ``numba_kquants``) is imported, since numba's decorators pick
the cache's place when they run. Only called once numba is importable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from functools import cache
from pathlib import Path


@cache
def cache_enabled() -> bool:
    """Whether the kernels are cached on disk, after pointing numba at a writable place.

    Numba caches next to the source file (``__pycache__``), else in NUMBA_CACHE_DIR, else under
    the user's cache directory, and raises "no locator available" when none is writable (a
    read-only install with a read-only HOME). So this picks the first writable one of: the
    NUMBA_CACHE_DIR the user set, the package's ``__pycache__``, $XDG_CACHE_HOME/qcompress/numba,
    ~/.cache/qcompress/numba and a private directory under the temp dir; with none, the kernels
    are compiled without a cache (``numba_kernels.CACHE``). Only called once numba is importable.
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
