"""The progress bar of ``quantize`` and ``dequantize``: rich, on stderr, only for a person."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from qcompress.cli.render import no_color, stderr_console


class RichProgress:
    """A progress bar on stderr (tensors, bytes per second, time left) that vanishes when done."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=stderr_console(),
            transient=True,
        )
        self._task: Any = None
        self._total = self._done = 0

    def start(self, tensors: int, total_bytes: int) -> None:
        self._bar.start()
        self._total = tensors
        self._task = self._bar.add_task(f"0/{tensors} tensors", total=total_bytes)

    def advance(self, name: str, nbytes: int) -> None:
        self._done += 1
        self._bar.update(
            self._task, advance=nbytes, description=f"{self._done}/{self._total} tensors"
        )

    def stop(self) -> None:
        self._bar.stop()


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Any]:
    """A progress bar only where a person watches: stderr is a terminal and output is not JSON.
    Not under NO_COLOR either: a live bar redraws itself with cursor escape codes."""
    if not enabled or not sys.stderr.isatty() or no_color():
        yield None
        return
    bar = RichProgress()
    try:
        yield bar
    finally:
        bar.stop()
