"""Helpers shared by the format modules: dtype names and array checks.

Writers write to the path they are given; making outputs atomic is the caller's job
(:mod:`qcompress.atomic`), since one command may write several files that must appear together.

Kept private: the public surface is ``qcompress.formats`` and the per-format modules.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompress.errors import FormatError, InputError, UsageError
from qcompress.formats.base import TensorInfo, numpy_dtype

QUANT_METHOD = "compressed-tensors"
"""The ``quant_method`` in a compressed-tensors checkpoint's ``config.json``."""


def is_compressed_tensors_dir(path: Path) -> bool:
    """True if ``path`` is a folder whose config.json names compressed-tensors quantization.

    Here, not in ``compressed_tensors``, because two formats ask it: that format claims such a
    folder, and the sharded-safetensors index finder leaves it alone (a compressed-tensors
    checkpoint may hold a ``*.safetensors.index.json`` of its own packed tensors)."""
    path = Path(path)
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        return False
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    qc = doc.get("quantization_config") if isinstance(doc, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD


def shown(path: Path | str) -> str:
    """A path as messages show it: on one line (a newline in a name is escaped as ``\\n``)."""
    return str(path).replace("\n", "\\n").replace("\r", "\\r")


def require_regular_file(path: Path, what: str = "file") -> int:
    """Size of ``path`` if it is a regular file (symlinks followed); otherwise an InputError.

    Checked before any ``open``: opening a FIFO for reading blocks until a writer appears, so a
    FIFO named ``model.npz`` would hang the command forever; a device node could stream without
    end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{shown(path)}: no such {what}") from None
    except PermissionError:
        raise InputError(f"{shown(path)}: permission denied") from None
    except OSError as exc:
        raise cannot_read(path, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{shown(path)}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{shown(path)}: not a regular file (a FIFO, socket or device?)")
    return st.st_size


def cannot_read(path: Path | str, exc: OSError) -> InputError:
    """The error for a file the operating system would not read (EIO, EACCES, ...): one line
    naming the file and the system's reason."""
    return InputError(f"{shown(path)}: cannot read: {one_line(exc.strerror or exc)}")


def read_json(path: Path, what: str) -> Any:
    """``path`` parsed as JSON: an InputError if it cannot be read, a FormatError saying it is
    not ``what`` ("valid JSON", "a valid index JSON") if it does not parse."""
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise cannot_read(path, exc) from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{shown(path)}: not {what} ({one_line(exc)})") from None


def read_exactly(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    """Fill ``buffer`` from ``fd`` at ``offset`` with ``pread``-style reads. A short read (the
    file shrank since it was opened) is an InputError naming ``path``: reading a memory map
    there would kill the process with SIGBUS instead."""
    done = 0
    total = len(buffer)
    while done < total:
        try:
            n = os.preadv(fd, [buffer[done:]], offset + done)
        except OSError as exc:
            raise cannot_read(path, exc) from None
        if n == 0:
            raise InputError(
                f"{shown(path)}: file ended at byte {offset + done}, before the data it declares "
                "(truncated, or changed while qcompress was reading it?)"
            )
        done += n


def one_line(text: object) -> str:
    """Collapse an exception's text (HDF5 and zipfile messages span lines) into one line."""
    return " ".join(str(text).split())


def check_names(path: Path, infos: Sequence[TensorInfo], fmt: str, nul: bool = False) -> None:
    """Refuse, before anything is written, a tensor name the format ``fmt`` would not keep
    exactly: text that is not Unicode (lone surrogates), NUL unless ``nul`` (zip and HDF5 cut
    names there, so
    ``a\\x00b`` and ``a\\x00c`` would merge into ``a``), and the same name twice. Format rules
    on top of these (HDF5 paths, reserved names) are checked by each writer."""
    seen: set[str] = set()
    for info in infos:
        try:
            info.name.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"{shown(path)}: tensor {info.name!r} has a name that is not valid Unicode text, "
                f"which {fmt} cannot store"
            ) from None
        if not nul and "\x00" in info.name:
            raise UsageError(
                f"{shown(path)}: tensor {info.name!r} has a NUL character in its name, which "
                f"{fmt} cannot store (it would cut the name there); write .safetensors instead"
            )
        if info.name in seen:
            raise UsageError(f"{shown(path)}: tensor name {info.name!r} appears twice")
        seen.add(info.name)


def check_empty_shape(path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """A zero-element tensor holds no bytes, so a file can declare any other dimensions for it;
    numpy cannot make an array whose non-zero dimensions multiply past its index range
    (``[2**40, 2**40, 0]``). Refuse those on open, naming the tensor, instead of failing later."""
    if 0 not in shape:
        return
    try:
        np.empty(shape, dtype=dtype)
    except (ValueError, OverflowError):
        raise FormatError(
            f"{shown(path)}: tensor {name!r} has shape {list(shape)}: no elements, but "
            "dimensions too large for any array; fix or remove it"
        ) from None


@functools.lru_cache(maxsize=1024)
def dtype_name(dt: np.dtype) -> str:
    """The name a ``TensorInfo`` carries: ``dt.name`` ("float32", "bfloat16"), or ``dt.str``
    ("|S10", "<U3") for fixed-length strings, whose ``name`` ("bytes80") does not parse back.
    Cached: numpy computes ``dt.name`` in Python (~10 us), which a model of 100k tiny tensors
    would pay per tensor and per check."""
    if dt.kind in "SU":
        return dt.str
    return dt.name


def to_dtype(name: str) -> np.dtype:
    """Inverse of ``dtype_name``, always in native byte order (ml_dtypes loaded only if needed)."""
    dt = numpy_dtype(name)
    return dt.newbyteorder("=") if dt.byteorder not in "=|" else dt


def check_array(info: TensorInfo, array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a C-contiguous array, or raise ValueError when it does not match
    ``info``. A mismatch means the caller paired the wrong array with an info: a programming
    error, not a user error, so it is not a QCompressError."""
    array = np.asarray(array)
    if tuple(array.shape) != tuple(info.shape):
        raise ValueError(
            f"tensor {info.name!r}: array shape {array.shape} does not match info {info.shape}"
        )
    if dtype_name(array.dtype) != info.dtype and array.dtype != to_dtype(info.dtype):
        raise ValueError(
            f"tensor {info.name!r}: array dtype {array.dtype} does not match info {info.dtype}"
        )
    if array.dtype.byteorder not in "=|":
        array = array.astype(array.dtype.newbyteorder("="))
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    return array if array.flags.c_contiguous else array.copy(order="C")
