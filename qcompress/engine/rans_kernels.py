"""The rANS loops behind ``entropy``, as plain Python that numba compiles (``entropy._kernels``).

Why plain Python: the same source runs compiled (numba, ``nogil``, no fast-math) or, without
numba or with ``QCOMPRESS_NO_NUMBA=1``, interpreted; both give the same bytes, since every value
is an integer below 2^48 held in int64 and nothing depends on the machine.

The coder: four interleaved rANS states of 63 bits (lane = symbol index mod 4), 32-bit
renormalisation words, probabilities quantised to 2^16 (``SCALE_BITS``); states stay in
[2^31, 2^63), so the coding loss of the state's finite size is ~2^-15 bits per symbol.
A symbol is a token (a bucket of ``2^shift`` consecutive values, or the escape token) coded
with its frequency, followed by ``shift`` raw bits (a uniform step of frequency
2^(16 - shift)), or, after an escape, the value's whole offset in ``ebits`` raw bits (two steps
above 16 bits). The encoder walks the symbols backwards and fills ``out`` from its end; the
decoder reads forwards.
"""

from __future__ import annotations

import numpy as np

LANES = 4
SCALE_BITS = 16
LOW = 1 << 31
"""The lower bound of a state: states live in [2^31, 2^63)."""
FLUSH = 47
"""A step of frequency f first emits a word when the state is >= f << FLUSH (L / 2^16 * 2^32)."""


def encode_chunk(x, lo, shift, tokmap, freq, rcp, cum, esc, ebits, out):
    """Code ``x`` (any integer dtype) into the tail of ``out``; returns where it starts.

    ``tokmap[(x - lo) >> shift]`` is each value's token; ``freq``/``cum`` (int64) the tokens'
    quantised frequencies and cumulative starts, ``rcp`` (float64) 1 / freq; ``esc`` the escape
    token (-1: none). The state's division by a frequency is a multiplication by ``rcp`` whose
    quotient is then corrected to the exact one (it is off by at most one), a few times faster
    than a 64-bit division and the same integer on any machine.
    ``out`` (uint32) must hold 3 * x.size + 2 * LANES words (at most three steps per symbol).
    """
    st = np.full(LANES, LOW, dtype=np.int64)
    pos = out.size
    mask = (1 << shift) - 1
    n = x.size
    for j in range(n):
        i = n - 1 - j
        lane = i & (LANES - 1)
        s = st[lane]
        v = np.int64(x[i]) - lo
        t = tokmap[v >> shift]
        if t == esc:
            if ebits > 16:
                # the decoder reads the high part first, so the low 16 bits go in first
                fk = np.int64(1)
                if (s >> FLUSH) >= fk:
                    pos -= 1
                    out[pos] = s & 0xFFFFFFFF
                    s >>= 32
                s = (s << 16) + (v & 0xFFFF)
                k = ebits - 16
                u = v >> 16
            else:
                k = ebits
                u = v
        else:
            k = shift
            u = v & mask
        if k > 0:
            fk = np.int64(1) << (16 - k)
            if (s >> FLUSH) >= fk:
                pos -= 1
                out[pos] = s & 0xFFFFFFFF
                s >>= 32
            s = ((s >> (16 - k)) << 16) + (s & (fk - 1)) + (u << (16 - k))
        f = freq[t]
        if (s >> FLUSH) >= f:
            pos -= 1
            out[pos] = s & 0xFFFFFFFF
            s >>= 32
        q = np.int64(np.float64(s) * rcp[t])
        r = s - q * f
        while r < 0:
            q -= 1
            r += f
        while r >= f:
            q += 1
            r -= f
        s = (q << 16) + r + cum[t]
        st[lane] = s
    for lane in range(LANES - 1, -1, -1):
        pos -= 1
        out[pos] = st[lane] & 0xFFFFFFFF
        pos -= 1
        out[pos] = st[lane] >> 32
    return pos


def decode_chunk(words, lo, shift, slots, base, esc, ebits, out):
    """Decode ``out.size`` symbols from ``words`` (uint32) into ``out``; returns True when the
    stream ends exactly where it should with every state back at its start (else it is corrupt:
    ``out`` may then hold garbage, never more than it was given).

    ``slots[slot]`` (int64) packs, for each of the 2^16 slots, its token's frequency (bits 32
    up), the slot's offset inside the token (bits 16-31) and the token (bits 0-15): one load
    per symbol instead of three dependent ones."""
    nw = words.size
    if nw < 2 * LANES:
        return False
    st = np.empty(LANES, dtype=np.int64)
    for lane in range(LANES):
        st[lane] = (np.int64(words[2 * lane]) << 32) | np.int64(words[2 * lane + 1])
    pos = 2 * LANES
    for i in range(out.size):
        lane = i & (LANES - 1)
        s = st[lane]
        if s < LOW:
            return False
        e = slots[s & 0xFFFF]
        t = e & 0xFFFF
        s = (e >> 32) * (s >> 16) + ((e >> 16) & 0xFFFF)
        if s < LOW:
            if pos >= nw:
                return False
            s = (s << 32) | np.int64(words[pos])
            pos += 1
        k = (ebits - 16 if ebits > 16 else ebits) if t == esc else shift
        u = np.int64(0)
        if k > 0:
            slot = s & 0xFFFF
            u = slot >> (16 - k)
            s = ((s >> 16) << (16 - k)) + (slot & ((np.int64(1) << (16 - k)) - 1))
            if s < LOW:
                if pos >= nw:
                    return False
                s = (s << 32) | np.int64(words[pos])
                pos += 1
        if t == esc and ebits > 16:
            slot = s & 0xFFFF
            u = (u << 16) | slot
            s = s >> 16
            if s < LOW:
                if pos >= nw:
                    return False
                s = (s << 32) | np.int64(words[pos])
                pos += 1
            v = u
        elif t == esc:
            v = u
        else:
            v = base[t] + u
        out[i] = v + lo
        st[lane] = s
    if pos != nw:
        return False
    for lane in range(LANES):  # a loop, not all(): numba compiles this  # noqa: SIM110
        if st[lane] != LOW:
            return False
    return True


def histogram(x, lo, h):
    """h[v - lo] += 1 for every v of x (``h`` int64, long enough): np.bincount without its
    int64 copy of x."""
    for i in range(x.size):
        h[np.int64(x[i]) - lo] += 1
