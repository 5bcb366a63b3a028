"""GGML block quantization (GGUF tensor types) computed by qcompress, in llama.cpp's byte layout.

The ``gguf`` package can write K-quant bytes but cannot compute them; llama.cpp's encoders are
C, slow and single-threaded. Here the encoders are numpy plus small compiled searches
(``numba_kquants``): rows are reshaped to ``(n_blocks, block)`` and every block is encoded at
once. Layouts follow ggml-quants.c / gguf-py ``quants.py`` exactly, so llama.cpp,
ComfyUI-GGUF and ``gguf.quants.dequantize`` decode them.

Search: each group of 16 or 32 values gets the least-squared-error grid among a few candidates
(min-max widened by a fraction of a code, each refitted by least squares, as llama.cpp's
``make_qkx2_quants`` / ``make_qx_quants`` do, but scored by plain squared error rather than
llama.cpp's importance-like weights, which is what SQNR measures). The group steps and offsets
are then coded as 6-bit (Q4_K, Q5_K) or 8-bit (Q6_K) integers under float16 super-scales, and
the codes are chosen under the *decoded* grid, so what is scored is what is stored.

Decoders repeat gguf-py's float32 operations in its order, so ``decode`` equals
``gguf.quants.dequantize`` bit for bit (the tests check it). No file I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

QK_K = 256


@dataclass(frozen=True)
class BlockType:
    """One GGML quantization type: ``block`` values are stored in ``nbytes`` bytes."""

    name: str
    block: int
    nbytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.block


# The one table of supported block types (ggml's GGML_QUANT_SIZES for these types).
BLOCK_TYPES: dict[str, BlockType] = {
    t.name: t
    for t in (
        BlockType("Q4_0", 32, 18),
        BlockType("Q4_1", 32, 20),
        BlockType("Q5_0", 32, 22),
        BlockType("Q5_1", 32, 24),
        BlockType("Q8_0", 32, 34),
        BlockType("Q4_K", QK_K, 144),
        BlockType("Q5_K", QK_K, 176),
        BlockType("Q6_K", QK_K, 210),
        BlockType("IQ4_NL", 32, 18),
    )
}

# Candidate widenings (in codes) of the min-max grid; 0 is the plain min-max grid. A handful
# recovers nearly all the SQNR of llama.cpp's 20-step search at a fraction of its cost.
_AFFINE_OFFSETS = np.array([-1.0, -0.5, 0.0, 0.3, 0.6, 1.0, 1.5, 2.0], dtype=np.float32)
_SYMMETRIC_OFFSETS = np.array([0.0, -0.6, -1.2, -1.8, -2.6, 0.5], dtype=np.float32)


def block_type(name: str) -> BlockType:
    """The block type called ``name`` (e.g. "Q4_K"); ValueError naming the choices otherwise."""
    try:
        return BLOCK_TYPES[name.upper()]
    except KeyError:
        choices = list(BLOCK_TYPES)
        raise ValueError(f"unknown GGUF block type {name!r}; expected one of {choices}") from None


def fits(name: str, row_length: int) -> bool:
    """Whether rows of ``row_length`` values can be stored as ``name`` (whole blocks only)."""
    return row_length > 0 and row_length % BLOCK_TYPES[name].block == 0


def encode(x: np.ndarray, name: str) -> np.ndarray:
    """The ``name`` bytes of ``x`` (any shape whose last dimension is a multiple of the block):
    uint8 of shape ``(*x.shape[:-1], x.shape[-1] // block * nbytes)``, as GGUF stores them.

    ``x`` must be finite; it is converted to float32 first."""
    t = block_type(name)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _by_block(x, t.block, t.nbytes, _ENCODERS[t.name], f"values are not whole {t.name}")


def decode(data: np.ndarray, name: str) -> np.ndarray:
    """float32 values of ``name`` bytes (last dimension a multiple of the block's bytes), with
    exactly gguf-py's float32 operations, so the result equals ``gguf.quants.dequantize``."""
    t = block_type(name)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    return _by_block(data, t.nbytes, t.block, _DECODERS[t.name], f"bytes are not whole {t.name}")


def _by_block(
    a: np.ndarray, width: int, out_width: int, fn: Callable[[np.ndarray], np.ndarray], what: str
) -> np.ndarray:
    """``fn`` over the blocks of ``a`` (rows of ``width`` along its last dimension, each giving
    ``out_width`` values), shaped back like ``a``: encode and decode are this, either way."""
    if a.ndim == 0 or a.shape[-1] % width:
        raise ValueError(f"rows of {a.shape[-1:]} {what} blocks")
    blocks = a.reshape(-1, width)
    out = fn(blocks)
    assert out.shape == (blocks.shape[0], out_width)
    return out.reshape(*a.shape[:-1], a.shape[-1] // width * out_width)


# --- kernels: compiled when numba is there, else the same functions in Python ----------------


@cache
def _kernels() -> dict[str, Any]:
    from qcompress.engine import numba_kquants as k

    names = (
        "affine_search",
        "affine_pick",
        "symmetric_search",
        "affine_codes",
        "symmetric_codes",
        "pack_nibbles",
    )
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a base dependency
        return {n: getattr(k, n).py_func for n in names}
    return {n: getattr(k, n) for n in names}


def _f16(v: np.ndarray) -> np.ndarray:
    """float32 -> float16, saturating instead of overflowing to inf."""
    return np.clip(v, -65504.0, 65504.0).astype(np.float16)


def _as_bytes(*parts: np.ndarray) -> np.ndarray:
    """Concatenate per-block byte fields (each (n, k) of any dtype) into (n, total) uint8."""
    n = parts[0].shape[0]
    return np.concatenate([np.ascontiguousarray(p).view(np.uint8).reshape(n, -1) for p in parts], 1)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 2, k) codes -> (n, k) bytes: first half in the low nibbles, second in the high."""
    q = np.ascontiguousarray(q)
    out = np.empty((q.shape[0], q.shape[2]), np.uint8)
    _kernels()["pack_nibbles"](q, out)
    return out


# --- 32-value types: one float16 scale (and min) per block -----------------------------------


def _symmetric_small(blocks: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 steps and codes (offset by nmax, uint8) of the best symmetric grid per block."""
    k = _kernels()
    step = np.empty(blocks.shape[0], np.float32)
    k["symmetric_search"](blocks, nmax, _SYMMETRIC_OFFSETS, step)
    d16 = _f16(step)
    codes = np.empty(blocks.shape, np.uint8)
    k["symmetric_codes"](blocks, d16.astype(np.float32), nmax, codes)
    return d16, codes


def _affine_small(blocks: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float16 step, float16 min and codes of the best affine grid x ~ d * q + m per block."""
    n = blocks.shape[0]
    lo = blocks.min(axis=1)
    hi = blocks.max(axis=1)
    d16 = _f16((hi - lo) / np.float32(nmax))
    m16 = _f16(lo)
    d = d16.astype(np.float32)
    m = m16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[:, None] == 0, 0, np.rint((blocks - m[:, None]) / d[:, None]))
    codes = np.clip(t, 0, nmax).astype(np.uint8)
    del n
    return d16, m16, codes


def _encode_q8_0(blocks: np.ndarray) -> np.ndarray:
    amax = np.abs(blocks).max(axis=1)
    d16 = _f16(amax / np.float32(127))
    inv = _inverse(d16.astype(np.float32))
    q = np.clip(np.rint(blocks * inv[:, None]), -127, 127).astype(np.int8)
    return _as_bytes(d16[:, None], q)


def _encode_q4_0(blocks: np.ndarray) -> np.ndarray:
    d16, codes = _symmetric_small(blocks, 8)
    return _as_bytes(d16[:, None], _pack_nibbles(codes.reshape(-1, 2, 16)))


def _encode_q5_0(blocks: np.ndarray) -> np.ndarray:
    d16, codes = _symmetric_small(blocks, 16)
    qh = np.packbits(codes >> np.uint8(4), axis=1, bitorder="little")
    return _as_bytes(d16[:, None], qh, _pack_nibbles(codes.reshape(-1, 2, 16)))


def _encode_q4_1(blocks: np.ndarray) -> np.ndarray:
    d16, m16, codes = _affine_small(blocks, 15)
    return _as_bytes(d16[:, None], m16[:, None], _pack_nibbles(codes.reshape(-1, 2, 16)))


def _encode_q5_1(blocks: np.ndarray) -> np.ndarray:
    d16, m16, codes = _affine_small(blocks, 31)
    qh = np.packbits(codes >> np.uint8(4), axis=1, bitorder="little")
    return _as_bytes(d16[:, None], m16[:, None], qh, _pack_nibbles(codes.reshape(-1, 2, 16)))


# --- K-quants: blocks of 256 with integer-coded group scales ---------------------------------


def _kquant_affine(blocks: np.ndarray, nmax: int) -> tuple[np.ndarray, ...]:
    """Q4_K / Q5_K grids: per group of 32, x ~ (d * sc) * q - (dmin * mc) with 6-bit sc, mc.
    Returns float16 d, dmin (n,), uint8 sc, mc (n, 8) and codes (n, 8, 32)."""
    k = _kernels()
    n = blocks.shape[0]
    groups = blocks.reshape(n * 8, 32)
    step = np.empty(n * 8, np.float32)
    offset = np.empty(n * 8, np.float32)
    k["affine_search"](groups, nmax, _AFFINE_OFFSETS, step, offset)
    step = step.reshape(n, 8)
    offset = offset.reshape(n, 8)
    d16 = _f16(step.max(axis=1) / np.float32(63))
    dmin16 = _f16(offset.max(axis=1) / np.float32(63))
    d = d16.astype(np.float32)
    dmin = dmin16.astype(np.float32)
    sc = np.empty(n * 8, np.uint8)
    mc = np.empty(n * 8, np.uint8)
    codes = np.empty((n * 8, 32), np.uint8)
    k["affine_pick"](
        groups,
        np.repeat(d, 8),
        np.repeat(dmin, 8),
        step.reshape(-1),
        offset.reshape(-1),
        nmax,
        sc,
        mc,
        codes,
    )
    sc = sc.reshape(n, 8)
    mc = mc.reshape(n, 8)
    return d16, dmin16, sc, mc, codes.reshape(n, 8, 32)


def _pack_scales_k(sc: np.ndarray, mc: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 12 bytes of eight 6-bit scales and mins (ggml's ``get_scale_min_k4`` order)."""
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = mc[:, 0:4] | ((mc[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mc[:, 4:8] & 0x0F) << 4)
    return out


def _encode_q4_k(blocks: np.ndarray) -> np.ndarray:
    d16, dmin16, sc, mc, codes = _kquant_affine(blocks, 15)
    n = blocks.shape[0]
    qs = _pack_nibbles(codes.reshape(n, 4, 2, 32).reshape(n * 4, 2, 32)).reshape(n, 128)
    return _as_bytes(d16[:, None], dmin16[:, None], _pack_scales_k(sc, mc), qs)


def _encode_q5_k(blocks: np.ndarray) -> np.ndarray:
    d16, dmin16, sc, mc, codes = _kquant_affine(blocks, 31)
    n = blocks.shape[0]
    qs = _pack_nibbles(codes.reshape(n * 4, 2, 32)).reshape(n, 128)
    # bit i of qh[j] is the fifth bit of group i's value j
    high = (codes >> np.uint8(4)) & np.uint8(1)  # (n, 8, 32)
    qh = np.zeros((n, 32), np.uint8)
    for i in range(8):
        qh |= high[:, i] << np.uint8(i)
    return _as_bytes(d16[:, None], dmin16[:, None], _pack_scales_k(sc, mc), qh, qs)


def _encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    k = _kernels()
    n = blocks.shape[0]
    groups = blocks.reshape(n * 16, 16)
    step = np.empty(n * 16, np.float32)
    k["symmetric_search"](groups, 32, _SYMMETRIC_OFFSETS, step)
    step = step.reshape(n, 16)
    # The super-scale maps the largest-magnitude group step to -128 (its sign included).
    imax = np.abs(step).argmax(axis=1)
    smax = np.take_along_axis(step, imax[:, None], axis=1)[:, 0]
    d16 = _f16(smax / np.float32(-128))
    d = d16.astype(np.float32)
    sc = np.clip(np.rint(step * _inverse(d)[:, None]), -128, 127).astype(np.int8)
    gstep = (d[:, None] * sc.astype(np.float32)).reshape(-1)
    codes = np.empty((n * 16, 16), np.uint8)
    k["symmetric_codes"](groups, gstep, 32, codes)
    q = codes.reshape(n, 2, 4, 32)  # half, quarter, value: element h*128 + s*32 + j
    ql = np.empty((n, 2, 64), np.uint8)
    ql[:, :, :32] = (q[:, :, 0] & 0x0F) | ((q[:, :, 2] & 0x0F) << 4)
    ql[:, :, 32:] = (q[:, :, 1] & 0x0F) | ((q[:, :, 3] & 0x0F) << 4)
    hi = q >> np.uint8(4)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    return _as_bytes(ql.reshape(n, 128), qh.reshape(n, 64), sc, d16[:, None])


_ENCODERS = {
    "Q4_0": _encode_q4_0,
    "Q4_1": _encode_q4_1,
    "Q5_0": _encode_q5_0,
    "Q5_1": _encode_q5_1,
    "Q8_0": _encode_q8_0,
    "Q4_K": _encode_q4_k,
    "Q5_K": _encode_q5_k,
    "Q6_K": _encode_q6_k,
    "IQ4_NL": lambda blocks: _iq4nl().encode_blocks(blocks),
}


def _iq4nl() -> Any:
    from qcompress.engine import iq4nl

    return iq4nl


# --- decoders (gguf-py's operations, in its order) --------------------------------------------


def _f32(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, k: int) -> np.ndarray:
    """(n, m*k) bytes -> (n, m, 2, k) nibbles, low then high."""
    n = qs.shape[0]
    q = qs.reshape(n, -1, 1, k) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return q & np.uint8(0x0F)


def _high_bits32(qh: np.ndarray) -> np.ndarray:
    n = qh.shape[0]
    bits = np.ascontiguousarray(qh).view(np.uint32).reshape(n, 1) >> np.arange(32, dtype=np.uint32)
    return (bits & np.uint32(1)).astype(np.uint8)


def _decode_q8_0(b: np.ndarray) -> np.ndarray:
    return b[:, 2:].view(np.int8).astype(np.float32) * _f32(b[:, :2])


def _decode_q4_0(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 2:], 16).reshape(b.shape[0], 32).astype(np.int8) - np.int8(8)
    return _f32(b[:, :2]) * q.astype(np.float32)


def _decode_q4_1(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 4:], 16).reshape(b.shape[0], 32).astype(np.float32)
    return (_f32(b[:, :2]) * q) + _f32(b[:, 2:4])


def _decode_q5_0(b: np.ndarray) -> np.ndarray:
    ql = _nibbles(b[:, 6:], 16).reshape(b.shape[0], 32)
    q = (ql | (_high_bits32(b[:, 2:6]) << np.uint8(4))).astype(np.int8) - np.int8(16)
    return _f32(b[:, :2]) * q.astype(np.float32)


def _decode_q5_1(b: np.ndarray) -> np.ndarray:
    ql = _nibbles(b[:, 8:], 16).reshape(b.shape[0], 32)
    q = (ql | (_high_bits32(b[:, 4:8]) << np.uint8(4))).astype(np.float32)
    return (_f32(b[:, :2]) * q) + _f32(b[:, 2:4])


def _unpack_scales_k(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc, mn


def _decode_q4_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    sc, mn = _unpack_scales_k(b[:, 4:16])
    d = (_f32(b[:, 0:2]) * sc.astype(np.float32)).reshape(n, 8, 1)
    dm = (_f32(b[:, 2:4]) * mn.astype(np.float32)).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:], 32).reshape(n, 8, 32).astype(np.float32)
    return (d * q - dm).reshape(n, QK_K)


def _decode_q5_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    sc, mn = _unpack_scales_k(b[:, 4:16])
    d = (_f32(b[:, 0:2]) * sc.astype(np.float32)).reshape(n, 8, 1)
    dm = (_f32(b[:, 2:4]) * mn.astype(np.float32)).reshape(n, 8, 1)
    ql = _nibbles(b[:, 48:], 32).reshape(n, 8, 32)
    qh = b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    q = (ql | ((qh & np.uint8(1)) << np.uint8(4))).astype(np.float32)
    return (d * q - dm).reshape(n, QK_K)


def _decode_q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    scales = b[:, 192:208].view(np.int8).astype(np.float32)
    d = (_f32(b[:, 208:210]) * scales).reshape(n, 16, 1)
    ql = _nibbles(b[:, :128].reshape(n, 2, 64).reshape(n, 128), 64).reshape(n, 8, 32)
    qh = b[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    qh = (qh & np.uint8(3)).reshape(n, 8, 32)
    q = (ql | (qh << np.uint8(4))).astype(np.int8) - np.int8(32)
    return (d * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


_DECODERS = {
    "Q4_0": _decode_q4_0,
    "Q4_1": _decode_q4_1,
    "Q5_0": _decode_q5_0,
    "Q5_1": _decode_q5_1,
    "Q8_0": _decode_q8_0,
    "Q4_K": _decode_q4_k,
    "Q5_K": _decode_q5_k,
    "Q6_K": _decode_q6_k,
    "IQ4_NL": lambda b: _iq4nl().decode_blocks(b),
}
