"""Dense packing of codes: part of the artifact format ("bitstream-le" and "base3").

Bit order: the stream is little-endian at both levels. Code i occupies stream bits
[i * bits, (i + 1) * bits), its least significant bit first, and stream bit k is bit (k % 8)
(value 1 << (k % 8)) of byte k // 8. So at 4 bits byte j is code[2j] | code[2j+1] << 4, at 2 bits
code[4j] | code[4j+1] << 2 | code[4j+2] << 4 | code[4j+3] << 6, and at 3 bits byte 0 is
code[0] | code[1] << 3 | (code[2] & 3) << 6. At 8 bits the stream is the codes' bytes. The last
byte's unused high bits are zero. Signed (int8) codes are stored offset by 2^(bits-1), so the
stream holds unsigned values in [0, 2^bits - 1].

"base3" (2-bit symmetric codes only, whose narrow range {-1, 0, 1} has exactly 3 levels): five
codes per byte, 1.6 bits per code. Byte j = sum over i = 0..4 of (code[5j + i] + 1) * 3^i, so the
first code is the least significant base-3 digit and every byte is at most 242; the last byte's
missing codes are 0 (digit 1). E.g. codes [-1, 0, 1, 1, -1] -> 0 + 1*3 + 2*9 + 2*27 + 0*81 = 75.
"""

from __future__ import annotations

import numpy as np

from qcompress.engine.spec import BITS

CHUNK_CODES = 1 << 16
"""Codes packed or unpacked per step (a multiple of 8, so every chunk starts on a byte)."""

BITSTREAM, BASE3 = "bitstream-le", "base3"
PACKINGS: tuple[str, ...] = (BITSTREAM, BASE3)
BASE3_PER_BYTE = 5
_BASE3_TABLE = ((np.arange(243)[:, None] // 3 ** np.arange(BASE3_PER_BYTE)) % 3 - 1).astype(np.int8)
"""Row b: the five signed codes that byte b (< 243) holds, first code first."""


def packing_for(bits: int, scheme: str) -> str:
    """How sub-8-bit codes of ``bits`` bits and ``scheme`` are stored: "base3" for 2-bit
    symmetric codes (3 levels), else "bitstream-le"."""
    return BASE3 if bits == 2 and scheme == "symmetric" else BITSTREAM


def packed_nbytes(count: int, bits: int, packing: str = BITSTREAM) -> int:
    """Bytes holding ``count`` codes of ``bits`` bits: ceil(count * bits / 8) as a bit stream,
    ceil(count / 5) as base 3."""
    if _check_packing(bits, packing) == BASE3:
        return -(-count // BASE3_PER_BYTE)
    return (count * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int, packing: str = BITSTREAM) -> np.ndarray:
    """The 1-D uint8 packed form of ``codes`` (int8 = signed, uint8 = unsigned, any shape, read in
    C order). Raises ValueError if a code does not fit in ``bits`` bits (base 3: if the codes are
    not int8 in {-1, 0, 1})."""
    _check_bits(bits)
    codes = np.asarray(codes)
    if codes.dtype not in (np.int8, np.uint8):
        raise ValueError(f"codes must be int8 or uint8, not {codes.dtype}")
    if _check_packing(bits, packing) == BASE3:
        return _pack_base3(codes)
    u = np.ascontiguousarray(codes).reshape(-1).view(np.uint8)
    if codes.dtype == np.int8:
        u = u + np.uint8(1 << (bits - 1))  # wraps mod 256: exactly c + offset for in-range codes
    if u.size and int(u.max()) >= 1 << bits:
        kind = "signed" if codes.dtype == np.int8 else "unsigned"
        raise ValueError(f"a {kind} code does not fit in {bits} bits")
    if bits == 8:
        return u.copy()
    if bits in (2, 4):
        return _pack_aligned(u, bits)
    out = np.empty(packed_nbytes(u.size, bits), np.uint8)
    for i in range(0, u.size, CHUNK_CODES):  # chunks of whole bytes: CHUNK_CODES % 8 == 0
        part = _pack_words(u[i : i + CHUNK_CODES], bits)
        j = i * bits // 8
        out[j : j + part.size] = part[: out.size - j]
    return out


def _pack_aligned(u: np.ndarray, bits: int) -> np.ndarray:
    """Widths that divide 8: byte j holds codes [j * per, (j + 1) * per), the first in the low
    bits. 4 bits: two shifts on uint16 pairs (13x faster than strided ORs); 2 bits: strided ORs
    straight into the output, 6x faster than the word path (same bytes)."""
    per = 8 // bits
    n_full = u.size // per
    out = np.empty(packed_nbytes(u.size, bits), np.uint8)
    body = out[:n_full]
    if bits == 4:  # each little-endian uint16 holds two codes, c0 | c1 << 8: fold c1 down
        pairs = u[: n_full * 2].view("<u2")
        folded = pairs >> np.uint16(4)
        folded |= pairs
        np.copyto(body, folded, casting="unsafe")  # the low byte: c0 | c1 << 4
    else:
        np.copyto(body, u[: n_full * per : per])
        for j in range(1, per):
            body |= u[j : n_full * per : per] << np.uint8(j * bits)
    if n_full < out.size:  # the last byte's codes, high bits zero
        tail = u[n_full * per :]
        out[n_full] = sum(int(c) << (j * bits) for j, c in enumerate(tail))
    return out


def _pack_words(u: np.ndarray, bits: int) -> np.ndarray:
    """Bytes of ceil(len/8) 64-bit little-endian words, each holding 8 codes in its low bits.

    Read 8 codes as one little-endian word (code j in byte j), then merge neighbouring fields
    three times (bytes into 16-bit fields holding 2 codes, those into 32-bit fields holding 4,
    then 8 codes per word): each merge shifts the upper field of every pair down next to the
    lower one. Twelve whole-array operations instead of eight passes over a uint64 per code."""
    n8 = -(-u.size // 8)
    lanes = np.zeros(n8 * 8, np.uint8)
    lanes[: u.size] = u
    word = lanes.view("<u8").astype(np.uint64)
    for field in (8, 16, 32):
        low = np.uint64(_LOW_FIELDS[field])
        upper = word & ~low
        word &= low
        upper >>= np.uint64(field - bits * field // 8)  # the upper field's codes, moved down
        word |= upper
    return word.astype("<u8").view(np.uint8).reshape(n8, 8)[:, :bits].reshape(-1)


_LOW_FIELDS = {f: int("".join(["0" * f + "1" * f] * (32 // f)), 2) for f in (8, 16, 32)}
"""Masks of the lower field of every pair of ``f``-bit fields in a 64-bit word."""


def _pack_base3(codes: np.ndarray) -> np.ndarray:
    """Five signed codes in {-1, 0, 1} per byte, first code the least significant base-3 digit."""
    if codes.dtype != np.int8:
        raise ValueError("base-3 packing takes signed (int8) codes")
    u = np.ascontiguousarray(codes).reshape(-1).view(np.uint8) + np.uint8(1)  # digits 0..2
    if u.size and int(u.max()) > 2:
        raise ValueError("a signed code does not fit in {-1, 0, 1} (base-3 packing)")
    digits = np.ones((packed_nbytes(u.size, 2, BASE3), BASE3_PER_BYTE), np.uint8)  # pad: code 0
    digits.reshape(-1)[: u.size] = u
    out = digits[:, 4].copy()
    for i in (3, 2, 1, 0):  # Horner in uint8: at most 242, no overflow
        out *= np.uint8(3)
        out += digits[:, i]
    return out


def unpack_codes(
    packed: np.ndarray, bits: int, count: int, signed: bool, packing: str = BITSTREAM
) -> np.ndarray:
    """The first ``count`` codes of packed bytes from :func:`pack_codes`, 1-D, as int8 when
    ``signed`` else uint8 (base 3: always signed). Raises ValueError if the bytes are too few
    (base 3: or one exceeds 242)."""
    _check_bits(bits)
    packed = np.ascontiguousarray(packed).reshape(-1)
    if packed.dtype != np.uint8:
        raise ValueError(f"packed codes must be uint8, not {packed.dtype}")
    need = packed_nbytes(count, bits, packing)
    if packed.size < need:
        raise ValueError(f"{count} codes of {bits} bits need {need} bytes, got {packed.size}")
    if packing == BASE3:
        if not signed:
            raise ValueError("base-3 packing holds signed codes")
        body = packed[:need]
        if need and int(body.max()) >= len(_BASE3_TABLE):
            raise ValueError("a base-3 byte exceeds 242 (3^5 - 1)")
        return _BASE3_TABLE[body].reshape(-1)[:count].copy()
    if bits == 8:
        u = packed[:count].copy()
    else:
        u = np.empty(count, np.uint8)
        for i in range(0, count, CHUNK_CODES):
            n = min(CHUNK_CODES, count - i)
            j = i * bits // 8
            u[i : i + n] = _unpack_words(packed[j : j + packed_nbytes(n, bits)], bits)[:n]
    if signed:
        return (u - np.uint8(1 << (bits - 1))).view(np.int8)
    return u


def _unpack_words(stream: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`_pack_words`: 8 codes per ``bits`` bytes (the last group zero-padded)."""
    n8 = -(-stream.size // bits)
    raw = np.zeros((n8, 8), np.uint8)
    padded = np.zeros(n8 * bits, np.uint8)
    padded[: stream.size] = stream
    raw[:, :bits] = padded.reshape(n8, bits)
    word = raw.view("<u8").reshape(n8)
    mask = np.uint64((1 << bits) - 1)
    u = np.empty((n8, 8), np.uint8)
    for j in range(8):
        u[:, j] = (word >> np.uint64(j * bits)) & mask
    return u.reshape(-1)


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, not {bits}")


def _check_packing(bits: int, packing: str) -> str:
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, not {packing!r}")
    if packing == BASE3 and bits != 2:
        raise ValueError(f"base-3 packing holds 2-bit codes, not {bits}-bit")
    return packing
