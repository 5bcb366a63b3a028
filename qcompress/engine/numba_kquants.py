"""The numba kernels behind ``kquants``; importing this module imports numba.

Why compiled: the K-quant search scores several candidate grids per group of 16 or 32 values,
which numpy would do as dozens of passes over memory; here each group is read while it is in L1.

Exactness: compiled *without* fast-math (no fused multiply-add, no reordering), every sum runs in
a fixed sequential order and every constant is typed, so the chosen grids and codes are the same
bytes on any CPU, and the same as the Python versions of these functions (``kernel.py_func``),
which ``kquants`` runs when numba is missing.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from qcompress.engine.numba_cache import cache_enabled

CACHE = cache_enabled()
"""Whether numba caches the kernels on disk (see ``numba_cache.cache_enabled``): a read-only
install with a read-only HOME compiles them once per process instead of failing."""

exact = nb.njit(nogil=True, cache=CACHE, error_model="numpy")


LANES = 16
"""Groups searched side by side: the inner loops run over groups (each with its own sums), so
they fill SIMD registers without reordering any group's sums."""


@exact
def load_tile(x, b0, tile):
    """Groups b0 .. b0 + LANES of ``x`` into ``tile`` transposed (value, lane); missing groups
    past the end are zeros. Returns how many groups are real."""
    n, g = x.shape
    nt = min(LANES, n - b0)
    for i in range(g):
        for lane in range(LANES):
            tile[i, lane] = x[b0 + lane, i] if lane < nt else np.float32(0.0)
    return nt


@exact
def affine_search(x, nmax, offsets, step_out, min_out):
    """Per group (row of ``x``, float32): the step s >= 0 and offset m >= 0 of the grid
    x ~ s * q - m, q in [0, nmax], with the least squared error among candidate grids.

    Candidates: the min-max grid with ``offsets`` codes more (or fewer) across the range
    (llama.cpp's ``make_qkx2_quants`` idea), each refitted by least squares on its own codes.
    The lower bound is at most 0, since GGUF stores the offset as a non-negative code that is
    subtracted."""
    n, g = x.shape
    fnmax = np.float32(nmax)
    zero = np.float32(0.0)
    tile = np.empty((g, LANES), np.float32)
    lo = np.empty(LANES, np.float32)
    hi = np.empty(LANES, np.float32)
    sx = np.empty(LANES, np.float64)
    sxx = np.empty(LANES, np.float64)
    iscale = np.empty(LANES, np.float32)
    sl = np.empty(LANES, np.float32)
    sll = np.empty(LANES, np.float32)
    sxl = np.empty(LANES, np.float32)
    best_err = np.empty(LANES, np.float64)
    best_s = np.empty(LANES, np.float32)
    best_m = np.empty(LANES, np.float32)
    for b0 in range(0, n, LANES):
        nt = load_tile(x, b0, tile)
        for lane in range(LANES):
            lo[lane] = tile[0, lane]
            hi[lane] = tile[0, lane]
            sx[lane] = 0.0
            sxx[lane] = 0.0
        for i in range(g):
            for lane in range(LANES):
                v = tile[i, lane]
                lo[lane] = min(lo[lane], v)
                hi[lane] = max(hi[lane], v)
                sx[lane] += np.float64(v)
                sxx[lane] += np.float64(v) * np.float64(v)
        for lane in range(LANES):
            lo[lane] = min(lo[lane], zero)
            best_err[lane] = np.inf
            best_s[lane] = zero
            best_m[lane] = -lo[lane]
            if hi[lane] > lo[lane]:
                best_s[lane] = (hi[lane] - lo[lane]) / fnmax
        for c in range(offsets.size):
            for lane in range(LANES):
                iscale[lane] = zero
                if hi[lane] > lo[lane]:
                    iscale[lane] = (fnmax + offsets[c]) / (hi[lane] - lo[lane])
                sl[lane] = zero
                sll[lane] = zero
                sxl[lane] = zero
            for i in range(g):
                for lane in range(LANES):
                    v = tile[i, lane]
                    q = min(max(np.rint((v - lo[lane]) * iscale[lane]), zero), fnmax)
                    sl[lane] += q  # sl, sll: exact integers in float32
                    sll[lane] += q * q
                    sxl[lane] += q * v
            for lane in range(LANES):
                a_l = np.float64(sl[lane])
                a_ll = np.float64(sll[lane])
                a_xl = np.float64(sxl[lane])
                det = g * a_ll - a_l * a_l
                if det <= 0.0 or hi[lane] <= lo[lane]:
                    continue
                s = (g * a_xl - a_l * sx[lane]) / det
                m = (a_ll * sx[lane] - a_l * a_xl) / det  # the grid's value at code 0
                if m > 0.0:
                    m = 0.0
                    s = a_xl / a_ll
                if s <= 0.0:
                    continue
                err = sxx[lane] + s * s * a_ll + g * m * m + 2.0 * s * m * a_l
                err -= 2.0 * s * a_xl + 2.0 * m * sx[lane]
                if err < best_err[lane]:
                    best_err[lane] = err
                    best_s[lane] = np.float32(s)
                    best_m[lane] = np.float32(-m)
        for lane in range(nt):
            step_out[b0 + lane] = best_s[lane]
            min_out[b0 + lane] = best_m[lane]


@exact
def affine_pick(x, d, dmin, step, offset, nmax, sc_out, mc_out, codes_out):
    """Per group: the 6-bit codes (sc, mc) of its step and offset under the block's decoded
    super-scales ``d``, ``dmin`` (one per group here), and the group's codes under them.

    Among the floor and ceiling of each (4 pairs), the one whose grid, (d * sc) * q - dmin * mc
    exactly as GGUF decodes it, gives the least squared error wins. Rounding to the nearest code
    instead costs up to 1/(2 sc) of the step, which is large for the small-range groups of a
    heavy-tailed block. Codes are rint((x + dmin * mc) * (1 / (d * sc))), clipped to [0, nmax]."""
    n, g = x.shape
    fnmax = np.float32(nmax)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    top = np.float32(62.0)
    tile = np.empty((g, LANES), np.float32)
    s0 = np.empty(LANES, np.float32)
    m0 = np.empty(LANES, np.float32)
    gs = np.empty((4, LANES), np.float32)
    gi = np.empty((4, LANES), np.float32)
    gm = np.empty((4, LANES), np.float32)
    err = np.empty((4, LANES), np.float32)
    for b0 in range(0, n, LANES):
        nt = load_tile(x, b0, tile)
        for lane in range(LANES):
            s0[lane] = zero
            m0[lane] = zero
            if lane < nt:
                db = d[b0 + lane]
                mb = dmin[b0 + lane]
                if db > 0.0:
                    s0[lane] = min(max(np.floor(step[b0 + lane] / db), zero), top)
                if mb > 0.0:
                    m0[lane] = min(max(np.floor(offset[b0 + lane] / mb), zero), top)
            else:
                db = zero
                mb = zero
            for c in range(4):
                cm = m0[lane] + np.float32(c >> 1) if mb > 0.0 else zero
                gs[c, lane] = db * (s0[lane] + np.float32(c & 1))
                gi[c, lane] = one / gs[c, lane] if gs[c, lane] > 0.0 else zero
                gm[c, lane] = mb * cm
                err[c, lane] = zero
        for c in range(4):
            for i in range(g):
                for lane in range(LANES):
                    v = tile[i, lane]
                    q = min(max(np.rint((v + gm[c, lane]) * gi[c, lane]), zero), fnmax)
                    e = gs[c, lane] * q - gm[c, lane] - v
                    err[c, lane] += e * e
        for lane in range(nt):
            best = 0
            for c in range(1, 4):
                if err[c, lane] < err[best, lane]:
                    best = c
            b = b0 + lane
            sc_out[b] = np.uint8(s0[lane] + np.float32(best & 1))
            mc_out[b] = np.uint8(m0[lane] + np.float32(best >> 1)) if dmin[b] > 0.0 else 0
            inv = gi[best, lane]
            m = gm[best, lane]
            for i in range(g):
                codes_out[b, i] = np.uint8(min(max(np.rint((x[b, i] + m) * inv), zero), fnmax))


@exact
def symmetric_search(x, nmax, offsets, step_out):
    """Per group (row of ``x``, float32): the signed step s of the grid x ~ s * q,
    q in [-nmax, nmax - 1], with the least squared error among candidates (llama.cpp's
    ``make_qx_quants`` idea: the largest-magnitude value maps to -nmax, scaled by ``offsets``),
    each refitted by least squares on its own codes."""
    n, g = x.shape
    fnmax = np.float32(nmax)
    zero = np.float32(0.0)
    lo_q = -fnmax
    hi_q = fnmax - np.float32(1.0)
    tile = np.empty((g, LANES), np.float32)
    vmax = np.empty(LANES, np.float32)
    iscale = np.empty(LANES, np.float32)
    sll = np.empty(LANES, np.float32)
    sxl = np.empty(LANES, np.float32)
    best = np.empty(LANES, np.float64)
    best_s = np.empty(LANES, np.float32)
    for b0 in range(0, n, LANES):
        nt = load_tile(x, b0, tile)
        for lane in range(LANES):
            amax = zero
            vmax[lane] = zero
            for i in range(g):  # the first value of largest magnitude, as llama.cpp takes it
                v = tile[i, lane]
                if abs(v) > amax:
                    amax = abs(v)
                    vmax[lane] = v
            best[lane] = -1.0
            best_s[lane] = vmax[lane] / -fnmax
        for c in range(offsets.size):
            for lane in range(LANES):
                iscale[lane] = zero
                if vmax[lane] != 0.0:
                    iscale[lane] = -(fnmax + offsets[c]) / vmax[lane]
                sll[lane] = zero
                sxl[lane] = zero
            for i in range(g):
                for lane in range(LANES):
                    v = tile[i, lane]
                    q = min(max(np.rint(v * iscale[lane]), lo_q), hi_q)
                    sll[lane] += q * q  # an exact integer in float32
                    sxl[lane] += q * v
            for lane in range(LANES):
                if sll[lane] <= 0.0:
                    continue
                a_ll = np.float64(sll[lane])
                a_xl = np.float64(sxl[lane])
                score = a_xl * a_xl / a_ll  # the squared error is sum(x^2) - score
                if score > best[lane]:
                    best[lane] = score
                    best_s[lane] = np.float32(a_xl / a_ll)
        for lane in range(nt):
            step_out[b0 + lane] = best_s[lane] if vmax[lane] != 0.0 else zero


@exact
def affine_codes(x, step, offset, nmax, out):
    """Codes q = clip(rint((x + m) / s), 0, nmax) of each group under its decoded grid
    (0 where s is 0), as uint8."""
    n, g = x.shape
    fnmax = np.float32(nmax)
    zero = np.float32(0.0)
    for b in range(n):
        s = step[b]
        m = offset[b]
        if s == 0.0:
            for i in range(g):
                out[b, i] = 0
            continue
        for i in range(g):
            q = np.rint((x[b, i] + m) / s)
            out[b, i] = np.uint8(min(max(q, zero), fnmax))


@exact
def symmetric_codes(x, step, nmax, out):
    """Codes q = clip(rint(x / s), -nmax, nmax - 1) + nmax of each group (nmax where s is 0)."""
    n, g = x.shape
    fnmax = np.float32(nmax)
    lo_q = -fnmax
    hi_q = fnmax - np.float32(1.0)
    for b in range(n):
        s = step[b]
        if s == 0.0:
            for i in range(g):
                out[b, i] = np.uint8(nmax)
            continue
        for i in range(g):
            q = np.rint(x[b, i] / s)
            out[b, i] = np.uint8(min(max(q, lo_q), hi_q) + fnmax)


@exact
def pack_nibbles(codes, out):
    """(m, 2, k) codes -> (m, k) bytes: the first half's low 4 bits in the low nibbles, the
    second half's in the high ones (one pass; numpy needs three)."""
    m, _, k = codes.shape
    for r in range(m):
        for j in range(k):
            out[r, j] = (codes[r, 0, j] & np.uint8(0x0F)) | (codes[r, 1, j] << np.uint8(4))
