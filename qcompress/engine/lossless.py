"""Lossless float compression by byte planes: the exact bits back, NaN payloads, -0 and
denormals included.

Why byte planes (as ZipNN does): in a float's bits the exponent is highly predictable (weights
of one tensor share a few binades: ~2.7 bits of entropy in 8) while the mantissa is nearly
random. Rotating each word left by one bit moves the sign to the lowest bit, so the top byte of
a bfloat16 or float32 is exactly its exponent (float16: the 5-bit exponent and 3 mantissa bits).
Each byte plane is then entropy-coded (``entropy``, order-0 rANS) when its histogram says that
saves at least ``MIN_SAVING`` of it, and stored raw otherwise: the near-random mantissa planes
cost one histogram pass, not a coding pass.

Stream layout (little-endian int64 header): magic, word size, count, then per plane its kind
(0 raw, 1 entropy-coded) and its byte length; then the planes, lowest byte first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompress.engine import entropy

CODER = "planes1"
"""The lossless coder's name in recipes and reports."""
MAGIC = 0x31454E414C50  # "PLANE1"
MIN_SAVING = 0.02
"""A plane is coded only when its estimated size is at least 2% below its raw size."""
WORDS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class LosslessInfo:
    """What a recipe records about a losslessly compressed tensor."""

    coder: str
    itemsize: int
    count: int


@dataclass(frozen=True)
class Compressed:
    stream: np.ndarray  # uint8
    info: LosslessInfo


def compress(values: np.ndarray, threads: int = 1) -> Compressed | None:
    """The byte-plane stream of a float tensor's bits (2-, 4- or 8-byte words, any float dtype:
    float16, bfloat16, float32, float64), or None when it would save nothing."""
    x = np.ascontiguousarray(values).reshape(-1)
    is_float = x.dtype.kind == "f" or x.dtype.name == "bfloat16"
    if x.dtype.itemsize not in WORDS or not is_float:
        raise ValueError(f"lossless float compression takes 2-, 4- or 8-byte floats, not {x.dtype}")
    if x.size == 0:
        return None
    size = x.dtype.itemsize
    planes = _split(x.view(WORDS[size]), size)
    kinds, blobs = [], []
    for plane in planes:
        coded = None
        if entropy.estimated_bits(plane) <= 8 * plane.size * (1 - MIN_SAVING):
            coded = entropy.encode(plane, threads=threads)
        kinds.append(0 if coded is None else 1)
        blobs.append(plane if coded is None else coded.stream)
    head = np.array(
        [MAGIC, size, x.size, *(v for k, b in zip(kinds, blobs, strict=True) for v in (k, b.size))],
        dtype="<i8",
    )
    stream = np.concatenate([head.view(np.uint8), *blobs])
    if stream.size >= x.nbytes:
        return None
    return Compressed(stream, LosslessInfo(CODER, size, int(x.size)))


def decompress(stream: np.ndarray, info: LosslessInfo, threads: int = 1) -> np.ndarray:
    """The words ``compress`` was given, as unsigned integers of ``info.itemsize`` bytes (view them
    as the original dtype); raises ``entropy.CorruptStreamError`` on a stream that does not fit."""
    raw = np.ascontiguousarray(stream, dtype=np.uint8).reshape(-1)
    size, count = info.itemsize, info.count
    nh = 8 * (3 + 2 * size)
    if info.coder != CODER or size not in WORDS or raw.size < nh:
        raise entropy.CorruptStreamError("not a lossless float stream (wrong coder or truncated)")
    head = raw[:nh].view("<i8")
    if int(head[0]) != MAGIC or int(head[1]) != size or int(head[2]) != count:
        raise entropy.CorruptStreamError("lossless float stream header does not match the tensor")
    planes = []
    at = nh
    for p in range(size):
        kind, length = int(head[3 + 2 * p]), int(head[4 + 2 * p])
        if kind not in (0, 1) or length < 0 or at + length > raw.size:
            raise entropy.CorruptStreamError("lossless float stream plane table is corrupt")
        blob = raw[at : at + length]
        at += length
        if kind == 0:
            if length != count:
                raise entropy.CorruptStreamError("lossless float stream raw plane has a wrong size")
            planes.append(blob)
        else:
            info_p = entropy.CodedInfo(entropy.CODER, "uint8", count)
            planes.append(entropy.decode(blob, info_p, threads=threads))
    if at != raw.size:
        raise entropy.CorruptStreamError("lossless float stream has trailing bytes")
    return _join(planes, size)


def _split(words: np.ndarray, size: int) -> list[np.ndarray]:
    bits = np.array(8 * size - 1, dtype=words.dtype)
    rotated = (words << np.array(1, dtype=words.dtype)) | (words >> bits)
    as_bytes = rotated.astype(words.dtype.newbyteorder("<"), copy=False).view(np.uint8)
    as_bytes = as_bytes.reshape(-1, size)
    return [np.ascontiguousarray(as_bytes[:, p]) for p in range(size)]


def _join(planes: list[np.ndarray], size: int) -> np.ndarray:
    count = planes[0].size
    as_bytes = np.empty((count, size), dtype=np.uint8)
    for p, plane in enumerate(planes):
        as_bytes[:, p] = plane
    word = WORDS[size]
    rotated = as_bytes.reshape(-1).view(np.dtype(word).newbyteorder("<")).astype(word)
    bits = np.array(8 * size - 1, dtype=word)
    return (rotated >> np.array(1, dtype=word)) | (rotated << bits)
