"""Helpers shared by the format modules: dtype names and array checks.

Writers write to the path they are given; making outputs atomic is the caller's job
(:mod:`qcompress.atomic`), since one command may write several files that must appear together.

Kept private: the public surface is ``qcompress.formats`` and the per-format modules.
"""

from __future__ import annotations

import functools

import numpy as np

from qcompress.formats.base import TensorInfo, numpy_dtype


def one_line(text: object) -> str:
    """Collapse an exception's text (HDF5 and zipfile messages span lines) into one line."""
    return " ".join(str(text).split())


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
