"""Outputs that appear complete or not at all.

Each output is written to a hidden temporary file in its destination folder (so the final rename
stays on one filesystem and is atomic), and renamed into place only after every output of the
command is complete. On any error, Ctrl-C or SIGTERM the temporaries are removed and nothing at the
destination changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qcompress.errors import UsageError


class Terminated(BaseException):
    """Raised inside the process by SIGTERM so that cleanup runs as it does for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_outputs(outputs: list[Path], inputs: list[Path], force: bool) -> None:
    """Refuse an output that is an input, that appears twice, or that exists without --force."""
    resolved_inputs = {p.resolve() for p in inputs}
    seen: set[Path] = set()
    for out in outputs:
        r = out.resolve()
        if r in resolved_inputs:
            raise UsageError(f"{out}: refusing to overwrite the input; choose another output path")
        if r in seen:
            raise UsageError(f"{out}: given for two outputs; choose distinct paths")
        seen.add(r)
        if out.is_dir():
            raise UsageError(f"{out}: is a directory; give a file path")
        if out.exists() and not force:
            raise UsageError(f"{out}: already exists; pass --force to overwrite it")
        if not out.parent.is_dir():
            raise UsageError(f"{out}: folder {out.parent} does not exist")


@contextlib.contextmanager
def atomic_outputs(outputs: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths for ``outputs``; rename all into place only if the block succeeds."""
    temps: list[Path] = []
    previous = None
    with contextlib.suppress(
        ValueError
    ):  # not the main thread: no signal handler, cleanup still runs
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        for out in outputs:
            fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give outputs the usual permissions
        for tmp, out in zip(temps, outputs, strict=True):
            os.chmod(tmp, mode)
            os.replace(tmp, out)
        temps = []
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
