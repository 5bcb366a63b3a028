"""Exports of weights (or artifacts) into formats other runtimes load: GGUF, compressed-tensors.

``export`` picks the writer by ``to``; each writer module imports its optional package lazily,
so a missing ``gguf`` (or ``compressed-tensors``) is a one-line error naming what to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from qcompress.errors import UsageError

TARGETS = ("gguf", "compressed-tensors")


def export(input_path: str | Path, output: str | Path, *, to: str, **options: Any) -> Any:
    """Export ``input_path`` to ``output`` in format ``to``; options go to that writer
    (GGUF: ``exports.gguf.export_gguf``; compressed-tensors:
    ``exports.compressed_tensors.export_compressed_tensors``)."""
    if to == "gguf":
        from qcompress.exports.gguf import export_gguf

        return export_gguf(input_path, output, **options)
    if to == "compressed-tensors":
        try:
            module = importlib.import_module("qcompress.exports.compressed_tensors")
        except ModuleNotFoundError as exc:
            if exc.name != "qcompress.exports.compressed_tensors":
                raise
            raise UsageError(
                "--to compressed-tensors: not available in this build of qcompress"
            ) from None
        return module.export_compressed_tensors(input_path, output, **options)
    raise UsageError(f"--to {to}: unknown export format; use one of {', '.join(TARGETS)}")
