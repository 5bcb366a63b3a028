"""The artifact's entropy stage: a stored tensor may be kept as a coded byte stream instead.

Why a stage after packing: the layout (``layout``) fixes which stored tensors hold a tensor and
their raw dtype and shape, for every reader; this stage only changes how those bytes sit in the
file. A coded stored tensor is a 1-D uint8 tensor, and the recipe's ``coded`` map names its
coder; decoding gives back the raw tensor exactly, so everything above the reader is unchanged.
A coder is one :class:`Stage` in :data:`STAGES` (one module plus one registration line).

``code`` tries the stages that take the tensor's dtype, in order, and keeps the first that saves
bytes; a tensor no stage shrinks is stored raw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcompress.engine import entropy, lossless
from qcompress.formats.base import TensorInfo, numpy_dtype

MIN_BYTES = 4096
"""Stored tensors smaller than this stay plain: coding saves them a few hundred bytes at most
and costs a table and a pass, which a model of 100k tiny tensors would pay 100k times."""
INTEGER_DTYPES = frozenset(entropy.DTYPES)
FLOAT_WORDS = frozenset(("float16", "bfloat16", "float32", "float64"))


class CodingError(ValueError):
    """A coded stream that does not decode to the stored tensor the recipe names."""


@dataclass(frozen=True)
class Stage:
    """One coder: which raw dtypes it takes, and its two directions (``encode`` returns None
    when it saves nothing)."""

    name: str
    dtypes: frozenset[str]
    encode: Callable[[np.ndarray, int], np.ndarray | None]
    decode: Callable[[np.ndarray, TensorInfo, int], np.ndarray]


def _rans_encode(array: np.ndarray, threads: int) -> np.ndarray | None:
    coded = entropy.encode(array, threads=threads)
    return None if coded is None else coded.stream


def _rans_decode(stream: np.ndarray, info: TensorInfo, threads: int) -> np.ndarray:
    meta = entropy.CodedInfo(entropy.CODER, info.dtype, info.size)
    return entropy.decode(stream, meta, threads=threads)


def _planes_encode(array: np.ndarray, threads: int) -> np.ndarray | None:
    packed = lossless.compress(array, threads=threads)
    return None if packed is None else packed.stream


def _planes_decode(stream: np.ndarray, info: TensorInfo, threads: int) -> np.ndarray:
    dtype = numpy_dtype(info.dtype)
    meta = lossless.LosslessInfo(lossless.CODER, dtype.itemsize, info.size)
    return lossless.decompress(stream, meta, threads=threads).view(dtype)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(entropy.CODER, INTEGER_DTYPES, _rans_encode, _rans_decode),
        Stage(lossless.CODER, FLOAT_WORDS, _planes_encode, _planes_decode),
    )
}
"""Every coder an artifact may name, by its recipe name."""


def code(array: np.ndarray, threads: int = 1) -> tuple[np.ndarray, str | None]:
    """``array`` coded by the first stage that takes its dtype and saves bytes, and that stage's
    name; or ``array`` itself and None."""
    dtype = array.dtype.name
    if array.nbytes < MIN_BYTES:
        return array, None
    for stage in STAGES.values():
        if dtype in stage.dtypes and array.size:
            coded = stage.encode(array, threads)
            if coded is not None and coded.nbytes < array.nbytes:
                return coded, stage.name
    return array, None


def decode(stream: np.ndarray, info: TensorInfo, coder: str, threads: int = 1) -> np.ndarray:
    """The raw stored tensor ``info`` from its coded ``stream``; CodingError when it does not
    decode (a corrupt file) or ``coder`` does not take ``info``'s dtype."""
    stage = STAGES.get(coder)
    if stage is None or info.dtype not in stage.dtypes:
        raise CodingError(f"coder {coder!r} does not store {info.dtype} tensors")
    try:
        raw = stage.decode(np.asarray(stream).reshape(-1), info, threads)
    except entropy.CorruptStreamError as err:
        raise CodingError(str(err)) from None
    return raw.reshape(info.shape)


def check_coded(coder: object, info: TensorInfo) -> str | None:
    """Why ``coder`` cannot hold stored tensor ``info`` (an unknown coder, a dtype it does not
    take), or None when it can."""
    stage = STAGES.get(coder) if isinstance(coder, str) else None
    if stage is None:
        return f"coder {coder!r} is not one of {', '.join(STAGES)}"
    if info.dtype not in stage.dtypes:
        return f"coder {coder!r} does not store {info.dtype} tensors"
    return None


def coded_info(name: str, stream: np.ndarray) -> TensorInfo:
    """How a coded stream sits in the safetensors file: a 1-D uint8 tensor."""
    return TensorInfo(name, (int(stream.size),), "uint8")
