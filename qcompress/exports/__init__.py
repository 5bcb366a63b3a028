"""Exports of weights (or artifacts) into formats other runtimes load: GGUF, compressed-tensors.

``export`` picks the writer by ``to``; each writer module imports its optional package lazily,
so a missing ``gguf`` (or ``compressed-tensors``) is a one-line error naming what to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from qcompress.errors import UsageError

TARGETS: dict[str, tuple[str, str]] = {
    # --to name -> (module, its export function); a new target is its module plus one line here
    "gguf": ("qcompress.exports.gguf", "export_gguf"),
    "compressed-tensors": ("qcompress.exports.compressed_tensors", "export_compressed_tensors"),
}


def export(input_path: str | Path, output: str | Path, *, to: str, **options: Any) -> Any:
    """Export ``input_path`` to ``output`` in format ``to``; options go to that target's export
    function (``TARGETS``). The module loads only when used; one missing from this build is a
    one-line error."""
    if to not in TARGETS:
        raise UsageError(f"--to {to}: unknown export format; use one of {', '.join(TARGETS)}")
    module_name, function = TARGETS[to]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UsageError(f"--to {to}: not available in this build of qcompress") from None
    return getattr(module, function)(input_path, output, **options)
