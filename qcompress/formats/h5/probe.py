"""Crashes and hangs in the HDF5 C library: h5py and HDF5 parse the file, and any Python exception
they raise on damaged content becomes a FormatError. But HDF5 (2.0.0 here) trusts some on-disk
values, and a crafted or bit-flipped file can crash or hang the process inside it, out of reach
of any Python check. Fuzzing the sample files found hangs in ``H5Aread`` of variable-length
string attributes (a damaged global-heap reference; Keras's ``backend`` and ``model_config``
are such attributes), and there is no HDF5 call that reads those without following the
reference. So before a file is opened in-process, ``probe_h5`` runs the whole index (open, walk
every link, read every attribute, check every dataset's storage) in a short-lived child process
(forked, so it costs a few milliseconds and no re-import; spawned where fork is missing) with a
timeout. A child that dies by a signal or runs out of time becomes a FormatError naming the file;
a child that finishes hands its index back as JSON over a pipe, so this process never makes
those calls itself and the index is not built twice (measured: ~12 ms per open of the 110 KB
sample, ~25 ms of a 106 MB file with 400 datasets, whose index alone takes ~150 ms). A child
that ends in a clean error makes this process build the index itself, reaching the same error.
Dataset data is not read by the probe: ``_check_storage`` first bounds every dataset's data by
the bytes the file really holds for it, so the reads that follow are plain copies (contiguous)
or decompression of chunks HDF5 has already located (chunked).

``QCOMPRESS_H5_PROBE_TIMEOUT`` sets the child's time limit in seconds (default 30, at most 1e6);
``0`` turns the probe off, for trusted files in a process that may crash.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from h5py._objects import phil as _h5py_lock

from qcompress.errors import FormatError, UsageError

ProbeWork = Callable[[Path, IO[bytes]], int]
"""What the child runs: build the index of the file, write it to the stream as JSON, and
return the exit status (``PROBE_OK``, or ``PROBE_REFUSED`` for a clean refusal)."""

PROBE_TIMEOUT_ENV = "QCOMPRESS_H5_PROBE_TIMEOUT"
_PROBE_TIMEOUT_DEFAULT = 30.0
PROBE_OK = 0
PROBE_REFUSED = 3  # the child raised a QCompressError: the in-process open raises it again


_PROBE_TIMEOUT_MAX = 1e6  # about 11 days; select() refuses timeouts far beyond this


def probe_timeout() -> float:
    """Seconds the probe child may take (``QCOMPRESS_H5_PROBE_TIMEOUT``); 0 disables it.
    Anything but 0 or a positive finite number (junk, nan, inf, negative) is a UsageError;
    values above ``_PROBE_TIMEOUT_MAX`` are taken as that (no real parse takes days)."""
    raw = os.environ.get(PROBE_TIMEOUT_ENV, "")
    if not raw.strip():
        return _PROBE_TIMEOUT_DEFAULT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(
            f"{PROBE_TIMEOUT_ENV}={raw!r}: must be a number of seconds (0 turns the probe off)"
        )
    return min(value, _PROBE_TIMEOUT_MAX)


def probe_h5(path: Path, work: ProbeWork) -> dict[str, Any] | None:
    """Parse ``path``'s HDF5 structure in a child process first; a crash or hang there becomes
    a FormatError here instead of killing or freezing this process. Returns the index the child
    built, or None when the caller should build it itself (probe off, or the child found a
    clean error, which the caller then raises). See the module docstring."""
    timeout = probe_timeout()
    if timeout <= 0:
        return None
    probe = _probe_forked if hasattr(os, "fork") else _probe_spawned
    status, output = probe(path, timeout, work)
    if status is None:
        raise FormatError(
            f"{path}: the HDF5 library did not finish parsing the file within {timeout:g} s "
            f"(corrupt or hostile file; {PROBE_TIMEOUT_ENV} sets the limit)"
        )
    if status < 0:
        raise FormatError(
            f"{path}: the HDF5 library crashed parsing the file "
            f"({_signal_name(-status)}); the file is corrupt or hostile"
        )
    if status != PROBE_OK:
        return None
    try:
        snapshot: dict[str, Any] = json.loads(output)
    except ValueError:
        return None
    return snapshot


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _probe_forked(path: Path, timeout: float, work: ProbeWork) -> tuple[int | None, bytes]:
    """Exit status of a forked child running ``work`` (negative: killed by that signal;
    None: ran out of time) and what it wrote. fork shares the already-imported h5py, so the
    probe costs a few milliseconds; the child leaves by ``os._exit`` without running any
    cleanup of ours."""
    read_end, write_end = os.pipe()
    # h5py serialises every HDF5 call on one lock. Holding it across fork means no other thread
    # of ours is inside HDF5 at that moment, so the child (whose only thread is this one, and
    # which re-enters the lock as its owner) never inherits a half-updated library or a lock
    # nobody will release.
    with _h5py_lock:
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its exit status is what is tested
        status = 4
        try:
            os.close(read_end)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # glibc and HDF5 abort messages must not reach our stderr
            os.dup2(devnull, 2)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            with os.fdopen(write_end, "wb") as out:
                status = work(path, out)
        finally:
            os._exit(status)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        # Read as the child writes (an index can exceed the pipe's buffer); the write end
        # closes when the child exits, however it exits.
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None, b""
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        _, raw = os.waitpid(pid, 0)
        pid = 0
        status = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
        return status, b"".join(chunks)
    finally:
        os.close(read_end)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _probe_spawned(
    path: Path, timeout: float, work: ProbeWork
) -> tuple[int | None, bytes]:  # pragma: no cover
    """``_probe_forked`` for platforms without fork (Windows): a fresh interpreter, slower
    since it imports h5py again."""
    code = (
        f"import sys; from pathlib import Path; from {work.__module__} import {work.__name__}; "
        f"sys.exit({work.__name__}(Path(sys.argv[1]), sys.stdout.buffer))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, b""
    return proc.returncode, proc.stdout
