"""Weight-file formats behind one interface: detect, open lazily, write streaming.

Input format is decided by content (magic bytes), never by the file name, so a safetensors
file called ``model.npz`` still opens as safetensors. Output format is decided by suffix,
since there are no bytes yet to look at.

The h5 module (h5py and the HDF5 library: a tenth of a second or more to load) is imported only
when an HDF5 file is read or written, so commands on npz and safetensors files start faster.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompress.errors import FormatError, InputError, UsageError
from qcompress.formats._common import one_line
from qcompress.formats.base import Layout, TensorInfo, WeightReader
from qcompress.formats.compressed_tensors import CompressedTensorsReader, is_compressed_tensors_dir
from qcompress.formats.gguf import MAGIC as GGUF_MAGIC
from qcompress.formats.gguf import GgufReader
from qcompress.formats.npz import NpzReader, write_npz
from qcompress.formats.safetensors import (
    CODE_DTYPES,
    DTYPE_CODES,
    MAX_HEADER_BYTES,
    SafetensorsReader,
    encode_header,
    tensor_nbytes,
    write_safetensors,
)
from qcompress.formats.sharded import ShardedReader, find_index, read_index

__all__ = [
    "CODE_DTYPES",
    "DTYPE_CODES",
    "FORMATS",
    "OUTPUT_SUFFIXES",
    "READERS",
    "Layout",
    "TensorInfo",
    "WeightReader",
    "detect_format",
    "encode_header",
    "format_for_output",
    "open_weights",
    "tensor_nbytes",
    "write_weights",
]

FORMATS = ("npz", "h5", "safetensors")


def _h5_reader(path: Path) -> WeightReader:
    from qcompress.formats.h5 import H5Reader

    return H5Reader(path)


READERS: dict[str, Callable[[Path], WeightReader]] = {
    "npz": NpzReader,
    "h5": _h5_reader,
    "safetensors": SafetensorsReader,
    "gguf": GgufReader,  # read only: GGUF is written by ``qcompress export``
}

# Output suffix -> format. ".keras" is deliberately absent: Keras 3 ".keras" files are zip
# archives (config + model.weights.h5), not HDF5.
OUTPUT_SUFFIXES: dict[str, str] = {
    ".npz": "npz",
    ".h5": "h5",
    ".hdf5": "h5",
    ".safetensors": "safetensors",
}

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; the end record of an empty zip


def _check_input_file(path: Path) -> int:
    """Size of ``path`` if it is a non-empty regular file; otherwise a one-line InputError."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not a weight file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    return st.st_size


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
            if head.startswith(_HDF5_MAGIC):
                return "h5"
            if head[:4] in _ZIP_MAGICS:
                return "npz"
            if head.startswith(GGUF_MAGIC):
                return "gguf"
            if len(head) >= 9 and head[8:9] == b"{":
                header_len = int.from_bytes(head[:8], "little")
                if header_len <= MAX_HEADER_BYTES:
                    return "safetensors"
            offset = 512
            while offset + len(_HDF5_MAGIC) <= size:
                fh.seek(offset)
                if fh.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC:
                    return "h5"
                offset *= 2
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size < 9:
        plural = "byte" if size == 1 else "bytes"
        kind = "HDF5" if _HDF5_MAGIC.startswith(head) else "npz" if _is_zip_prefix(head) else ""
        what = f"the start of an {kind} file" if kind else "too short to be a weight file"
        raise FormatError(f"{path}: only {size} {plural}, {what} (truncated?)")
    raise FormatError(
        f"{path}: not a weight file (expected .npz, HDF5, safetensors or GGUF content)"
    )


def _is_zip_prefix(head: bytes) -> bool:
    return any(m.startswith(head) for m in _ZIP_MAGICS)


def open_weights(path: Path) -> WeightReader:
    """Detect ``path``'s format and open it lazily. Use the reader as a context manager.

    A sharded checkpoint (its ``*.safetensors.index.json``, or the folder holding it) opens as
    one reader over all its shards."""
    path = Path(path)
    if is_compressed_tensors_dir(path):
        return CompressedTensorsReader(path)
    index = find_index(path)
    if index is not None:
        return ShardedReader(read_index(index))
    return READERS[detect_format(path)](path)


def format_for_output(path: Path) -> str:
    """The format to write ``path`` in, from its suffix; UsageError for any other suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in OUTPUT_SUFFIXES:
        return OUTPUT_SUFFIXES[suffix]
    if suffix == ".keras":
        raise UsageError(
            f"{path}: .keras files are Keras 3 zip archives, which qcompress does not write; "
            "use .h5 (Keras loads it with load_weights)"
        )
    shown = f"from the suffix {suffix!r}" if suffix else "without a suffix"
    raise UsageError(
        f"{path}: cannot tell the output format {shown}; use .npz, .h5 (or .hdf5) or .safetensors"
    )


def write_weights(
    path: Path,
    fmt: str,
    infos: Sequence[TensorInfo],
    arrays: Iterable[np.ndarray],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write tensors to ``path`` in ``fmt``, consuming ``arrays`` (one per info, in order) one
    at a time. ``metadata`` is what a reader's ``metadata()`` returned; only metadata from the
    same format is used (h5 groups and attributes, safetensors ``__metadata__``). The file
    appears only once it is complete. A dtype or name the format cannot hold, or a file that
    cannot be written, is a UsageError; an array that does not match its info is a ValueError."""
    meta = dict(metadata or {})
    try:
        if fmt == "npz":
            write_npz(path, infos, arrays)
        elif fmt == "h5":
            from qcompress.formats.h5 import write_h5

            write_h5(path, infos, arrays, meta if meta.get("format") == "h5" else None)
        elif fmt == "safetensors":
            st_meta = meta.get("__metadata__") if meta.get("format") == "safetensors" else None
            write_safetensors(path, infos, arrays, st_meta)
        else:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    except OSError as exc:  # missing folder, no permission, disk full
        raise UsageError(f"{path}: cannot write: {one_line(exc.strerror or exc)}") from exc
