"""Keep freed memory in the process for reuse (glibc only): the CLI's long commands call this;
and pause the cyclic garbage collector during a command (:func:`paused_gc`).

Why: quantizing a tensor allocates its codes, packed bytes and per-group parameters (a few MB for
a 16 MB tensor) and frees them when the tensor is written. By default glibc returns such blocks
to the operating system (mmap/munmap, and trimming the heap top), so the next tensor's arrays are
fresh pages that fault in one by one: a fifth of the time of 4-bit quantization on this machine
(benchmarks/speed.py). Raising the mmap and trim thresholds keeps freed blocks for reuse; the
resident memory this keeps is bounded by ``TRIM_THRESHOLD`` beyond what is in use.

Only the CLI calls it (a library should not change its host's allocator); ``benchmarks/speed.py``
calls it too, so that the engine is measured as the CLI runs it.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

MMAP_THRESHOLD = 64 << 20
"""Blocks below this come from the heap, not from their own mapping (glibc's maximum is 32 MB on
its own dynamic scale; tensors' temporaries are larger for 64 MB tensors)."""

TRIM_THRESHOLD = 256 << 20
"""Free memory at the heap top kept before glibc returns it to the system."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set the thresholds above; False (and nothing changed) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError unless this is glibc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one command; on exit it runs again as before.

    Why: the collector runs after every 700 new container objects and, every so often, walks
    every live object. A model of 100k tiny tensors makes millions of small, long-lived objects
    (the parsed header, infos, recipe entries, report lines) and no garbage cycles, so those
    walks were a third of the CPU time of ``quantize`` and grew faster than the model
    (benchmarks/many_tensors.py). Reference counting still frees everything at once; cycles
    made during the command are collected after it. Nested uses leave it to the outermost."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
