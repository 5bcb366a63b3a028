"""Weight-file formats behind one interface: detect, open lazily, write streaming.

Input format is decided by content (magic bytes), never by the file name, so a safetensors
file called ``model.npz`` still opens as safetensors. Output format is decided by suffix,
since there are no bytes yet to look at.

Every format is one record in ``qcompress.formats.registry.REGISTRY`` (``base.Format``: its
magic test, output suffixes, reader, writer and default axis); everything here drives off it.
The h5 package (h5py and the HDF5 library: a tenth of a second or more to load) is imported only
when an HDF5 file is read or written, so commands on npz and safetensors files start faster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompress.errors import FormatError, InputError, UsageError
from qcompress.formats._common import cannot_read, one_line, require_regular_file, shown
from qcompress.formats.base import LAYOUT_AXES, Format, Layout, TensorInfo, WeightReader
from qcompress.formats.registry import BY_NAME, REGISTRY
from qcompress.formats.safetensors import (
    CODE_DTYPES,
    DTYPE_CODES,
    encode_header,
    tensor_nbytes,
)

__all__ = [
    "CODE_DTYPES",
    "DTYPE_CODES",
    "FORMATS",
    "OUTPUT_SUFFIXES",
    "READERS",
    "REGISTRY",
    "SOURCE_FORMATS",
    "Format",
    "Layout",
    "TensorInfo",
    "WeightReader",
    "companion_outputs",
    "default_axis",
    "detect_format",
    "encode_header",
    "format_for_output",
    "open_weights",
    "tensor_nbytes",
    "write_weights",
]

_FILE_FORMATS = tuple(f for f in REGISTRY if f.claims is None)
FORMATS = tuple(f.name for f in REGISTRY if f.write is not None and not f.needs_source)
"""The formats qcompress writes from any tensors (and so the ones an artifact's source may be
rebuilt in); a format that ``needs_source`` (``.keras``) is written only from its own source."""

SOURCE_FORMATS = tuple(f.name for f in REGISTRY if f.write is not None)
"""Every format an artifact's source may be rebuilt in (``FORMATS`` and the ``needs_source``
ones, from their own metadata)."""

READERS: dict[str, Callable[[Path], WeightReader]] = {f.name: f.open for f in _FILE_FORMATS}

OUTPUT_SUFFIXES: dict[str, str] = {s: f.name for f in REGISTRY for s in f.suffixes}

# Suffixes refused with advice rather than "cannot tell" (none at the moment).
_REFUSED_SUFFIXES: dict[str, str] = {}


def default_axis(info: TensorInfo, layout: Layout) -> int:
    """The output-channel axis of ``info`` by the convention of ``layout`` (PyTorch-style
    ``[out, in, ...]``: axis 0; Keras-style ``[..., in, out]``: the last axis, depthwise
    kernels axis 2), for tensors the file says nothing more about."""
    return LAYOUT_AXES[layout](info)


def _check_input_file(path: Path) -> int:
    """Size of ``path`` if it is a non-empty regular file; otherwise a one-line InputError."""
    size = require_regular_file(path)
    if size == 0:
        raise InputError(f"{shown(path)}: file is empty (0 bytes)")
    return size


def detect_format(path: Path) -> str:
    """The format of ``path`` from its first bytes: "npz" (zip), "h5" (HDF5 signature at 0 or
    at a user-block offset 512, 1024, 2048, ...), "gguf" ("GGUF") or "safetensors" (a plausible
    8-byte header length followed by "{"). InputError if the file cannot be read, FormatError
    otherwise."""
    path = Path(path)
    size = _check_input_file(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            for fmt in _FILE_FORMATS:
                if fmt.matches(head):
                    return fmt.name
            for fmt in _FILE_FORMATS:
                if fmt.deep_sniff is not None and fmt.deep_sniff(fh, size):
                    return fmt.name
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise cannot_read(path, exc) from None
    if size < 9:
        plural = "byte" if size == 1 else "bytes"
        kinds = [f.short_kind for f in _FILE_FORMATS if f.short_kind and f.could_start(head)]
        what = f"the start of an {kinds[0]} file" if kinds else "too short to be a weight file"
        raise FormatError(f"{path}: only {size} {plural}, {what} (truncated?)")
    labels = [f.label for f in _FILE_FORMATS]
    expected = ", ".join(labels[:-1]) + " or " + labels[-1]
    raise FormatError(f"{path}: not a weight file (expected {expected} content)")


def open_weights(path: Path) -> WeightReader:
    """Detect ``path``'s format and open it lazily. Use the reader as a context manager.

    A sharded checkpoint (its ``*.safetensors.index.json``, or the folder holding it) opens as
    one reader over all its shards."""
    path = Path(path)
    for fmt in REGISTRY:
        if fmt.claims is not None and fmt.claims(path):
            return fmt.open(path)
    return READERS[detect_format(path)](path)


def format_for_output(path: Path) -> str:
    """The format to write ``path`` in, from its suffix; UsageError for any other suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in OUTPUT_SUFFIXES:
        return OUTPUT_SUFFIXES[suffix]
    if suffix in _REFUSED_SUFFIXES:
        raise UsageError(f"{path}: {suffix} files {_REFUSED_SUFFIXES[suffix]}")
    shown = f"from the suffix {suffix!r}" if suffix else "without a suffix"
    raise UsageError(f"{path}: cannot tell the output format {shown}; use {_suffix_list()}")


def companion_outputs(output: Path, fmt: str, metadata: Mapping[str, Any] | None) -> list[Path]:
    """The files besides ``output`` that writing it in ``fmt`` from ``metadata`` makes (an ONNX
    model's external-data side file); the caller checks and places them with ``output``."""
    return list(BY_NAME[fmt].companion_paths(Path(output), metadata or {}))


def _suffix_list() -> str:
    """ ".npz, .h5 (or .hdf5) or .safetensors": every writable format's suffixes."""
    shown = [
        f.suffixes[0] + "".join(f" (or {s})" for s in f.suffixes[1:])
        for f in REGISTRY
        if f.suffixes
    ]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


def write_weights(
    path: Path,
    fmt: str,
    infos: Sequence[TensorInfo],
    arrays: Iterable[np.ndarray],
    metadata: Mapping[str, Any] | None = None,
    companions: Mapping[Path, Path] | None = None,
) -> None:
    """Write tensors to ``path`` in ``fmt``, consuming ``arrays`` (one per info, in order) one
    at a time. ``metadata`` is what a reader's ``metadata()`` returned; only metadata from the
    same format is used (h5 groups and attributes, safetensors ``__metadata__``). The file
    appears only once it is complete. A dtype or name the format cannot hold, or a file that
    cannot be written, is a UsageError; an array that does not match its info is a ValueError.
    ``companions`` maps each of ``companion_outputs`` to the temporary to write it to."""
    fmt_record = BY_NAME.get(fmt)
    if fmt_record is None or fmt_record.write is None:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    try:
        fmt_record.write_file(path, infos, arrays, metadata or {}, companions)
    except OSError as exc:  # missing folder, no permission, disk full
        raise UsageError(f"{path}: cannot write: {one_line(exc.strerror or exc)}") from exc
