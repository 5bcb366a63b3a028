"""The numba kernels behind ``jit``; importing this module imports numba.

See ``jit`` for why they exist and what is exact. Kept apart so that numba's on-disk cache
works: it caches top-level functions only (``numba_cache`` decides where the cache lives, or
that there is none, before this module is imported). Every kernel that computes a stored number or a
choice is ``exact``: compiled without fast-math, so no sum is reordered and no multiply-add is
fused (numba contracts nothing without fastmath "contract"; tests/test_golden.py checks the
machine code). Sums that must vectorize use ``constants.SUM_LANES`` independent partial sums.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from qcompress.engine.constants import F32_MAX, SUM_LANES, TILE, TINY_STEP
from qcompress.engine.numba_cache import cache_enabled

CACHE = cache_enabled()
"""Whether numba caches the kernels on disk (see ``numba_cache.cache_enabled``)."""

exact = nb.njit(nogil=True, cache=CACHE, error_model="numpy")


# Loops index views from 0 (``for i in range(x.size)``): an index the compiler cannot prove
# non-negative gets numba's wrap-around branch, which stops vectorization.


@exact
def lane_sums(x, xh, d, off, acc_e, acc_s):
    """d = xh - x in float64, and the SUM_LANES partial sums of d^2 and x^2 (``elementwise``' order)
    continued in ``acc_e`` and ``acc_s``: element i is term off + i of its row. The partial sums
    are independent, so the body loop vectorizes without reordering any of them."""
    n = x.size
    i = 0
    lane = off % SUM_LANES
    while i < n and lane != 0:  # up to the next multiple of SUM_LANES
        xv = np.float64(x[i])
        e = np.float64(xh[i]) - xv
        d[i] = e
        acc_e[lane] += e * e
        acc_s[lane] += xv * xv
        i += 1
        lane = lane + 1 if lane + 1 < SUM_LANES else 0
    blocks = (n - i) // SUM_LANES
    for b in range(blocks):
        base = i + b * SUM_LANES
        for j in range(SUM_LANES):
            xv = np.float64(x[base + j])
            e = np.float64(xh[base + j]) - xv
            d[base + j] = e
            acc_e[j] += e * e
            acc_s[j] += xv * xv
    i += blocks * SUM_LANES
    for j in range(n - i):
        xv = np.float64(x[i + j])
        e = np.float64(xh[i + j]) - xv
        d[i + j] = e
        acc_e[j] += e * e
        acc_s[j] += xv * xv


@exact
def combine(acc):
    """kernels.combine_lanes: the partial sums added in lane order."""
    total = acc[0]
    for lane in range(1, acc.size):
        total += acc[lane]
    return total


@exact
def abs_max_bits(di):
    # max |d| through the int64 view: integer max vectorizes without fast-math, and for
    # non-negative doubles the bit patterns order as the values do.
    m = 0
    for i in range(di.size):
        v = di[i] & 0x7FFFFFFFFFFFFFFF
        m = v if v > m else m
    return m


@exact
def encode_stats(rows, glen, inv, zp, scale, qlo, qhi, codes, sse_out, sig_out, mab_out):
    """Codes of every element and, per row, sum d^2, sum x^2 (in ``constants.SUM_LANES`` order,
    as metrics.row_sums) and max |d| (as the int64 bits of the float64) with
    d = decode(code) - x in float64."""
    n, cols = rows.shape
    xh = np.empty(TILE, np.float32)
    d = np.empty(TILE, np.float64)
    di = d.view(np.int64)
    acc_e = np.zeros(SUM_LANES)
    acc_s = np.zeros(SUM_LANES)
    fq_lo = np.float32(qlo)
    fq_hi = np.float32(qhi)
    for r in range(n):
        row = rows[r]
        crow = codes[r]
        acc_e[:] = 0.0
        acc_s[:] = 0.0
        mab = 0
        c0 = 0
        while c0 < cols:
            c1 = min(cols, c0 + TILE)
            if glen < TILE:  # whole groups (and the ragged last one) in this tile
                c1 = max(c0 + glen, c0 + (c1 - c0) // glen * glen)
                c1 = min(c1, cols)
            g = c0 // glen
            c = c0
            while c < c1:  # group by group, without slicing (a view per group costs more)
                e = min(c1, (g + 1) * glen)
                iv = inv[r, g]
                zz = zp[r, g]
                ss = scale[r, g]
                base = np.uint64(c0)  # unsigned indices: no wrap-around branch, so it vectorizes
                for i in range(np.uint64(c), np.uint64(e)):
                    t = np.rint(row[i] * iv + zz)
                    t = min(max(t, fq_lo), fq_hi)
                    crow[i] = t
                    xh[i - base] = (t - zz) * ss
                c = e
                g += 1
            n_t = c1 - c0
            lane_sums(row[c0:c1], xh[:n_t], d[:n_t], c0, acc_e, acc_s)
            m = abs_max_bits(di[:n_t])
            mab = m if m > mab else mab
            c0 = c1
        sse_out[r] = combine(acc_e)
        sig_out[r] = combine(acc_s)
        mab_out[r] = mab


# Min and max are exact in any order, except for the sign of a zero bound (which codec makes
# +0.0 on both paths); a NaN or an Inf is found from its exponent bits instead, and then the
# bounds are not used. So the loop may vectorize.
unordered = nb.njit(nogil=True, cache=CACHE, error_model="numpy", fastmath={"nnan", "ninf", "nsz"})


@unordered
def group_minmax(rows, glen, lo, hi):
    """Per (row, group) min and max (the sign of a zero bound is arbitrary). Returns the number
    of rows holding a NaN or an Inf: when it is not 0, the bounds mean nothing."""
    n, cols = rows.shape
    ng = lo.shape[1]
    bits = rows.view(np.int32)
    bad_rows = 0
    for r in range(n):
        row = rows[r]
        row_bits = bits[r]
        bad = 0
        for c in range(cols):  # its own loop: an integer OR next to the min/max stops them
            bad |= row_bits[c] & 0x7F800000 == 0x7F800000  # vectorizing
        bad_rows += bad
        for g in range(ng):
            c0 = np.uint64(g * glen)
            c1 = np.uint64(min(cols, g * glen + glen))
            a = row[c0]
            b = row[c0]
            for c in range(c0, c1):
                v = row[c]
                a = v if v < a else a
                b = v if v > b else b
            lo[r, g] = a
            hi[r, g] = b
    return bad_rows


@exact
def min_need(lo, hi, smin, k, qmax, need):
    """level2._needed_step(lo, hi, m) with m from level2._min_codes(lo, smin, k): the same
    operations, element by element (the min codes themselves are not kept)."""
    n, ng = lo.shape
    for r in range(n):
        for g in range(ng):
            clo = np.float64(lo[r, g])
            sm32 = smin[r, g]
            smd = np.float64(sm32)
            ratio = clo / smd if smd != 0 else 0.0
            mc = np.ceil(ratio) if smd < 0 else np.floor(ratio)
            mc = min(max(mc, 0.0), k)
            m = np.float32(sm32 * np.float32(mc))
            bump = (np.float64(m) > clo) & (smd < 0) & (mc < k)
            mc = mc + 1.0 if bump else mc
            m64 = np.float64(np.float32(sm32 * np.float32(mc)))
            v = np.float64(hi[r, g]) - m64
            v = (v if v > 0.0 else 0.0) / qmax  # as np.maximum(v, 0.0): +0.0 for -0.0 too
            need[r, g] = max(v, abs(m64) * TINY_STEP)


LANES = 64
"""Groups searched side by side, one per SIMD lane: every loop over lanes is elementwise, so it
vectorizes with exact (non-reassociated) float32 arithmetic, and no branch depends on data.
Each lane's grid is a chain of dependent divisions, so more lanes than one vector holds let the
core overlap the chains of several vectors (64 lanes: the search is ~13% faster than with 16, for
groups of 32)."""

NARROW_LANES = 16
"""Lanes used for groups longer than ``WIDE_MAX_GROUP``: their buffer stays small, and a chunk's
short last batch wastes fewer lanes. Lanes beyond it score empty groups (no work)."""

WIDE_MAX_GROUP = 64
"""Groups up to this length are searched ``LANES`` at a time (a 16 kB buffer at most)."""


@exact
def lane_grids(c_lo, c_hi, st, sm, k, qmax, affine, known, mc_in, s_out, z_out, sc_out, mc_out):
    """level2.encode_params for one candidate per lane: float32 scale and zero-point as the
    decoder rebuilds them (the same operations, as selects instead of masked numpy calls), and
    the scale and min codes (as float64 integers; the min code is 0 when symmetric). With
    ``known``, the min codes are ``mc_in``'s: those found before for the same lower bounds (the
    min code depends on the lower bound and the level-2 min step only)."""
    big = np.float32(F32_MAX)
    for lane in range(LANES):
        clo = c_lo[lane]
        chi = c_hi[lane]
        smd = np.float64(sm[lane])
        std = np.float64(st[lane])
        mc = 0.0
        if affine:
            if known:
                mc = mc_in[lane]
            else:
                ratio = clo / smd if smd != 0 else 0.0
                mc = np.ceil(ratio) if smd < 0 else np.floor(ratio)
                mc = min(max(mc, 0.0), k)
                m = np.float32(sm[lane] * np.float32(mc))
                bump = (np.float64(m) > clo) & (smd < 0) & (mc < k)
                mc = mc + 1.0 if bump else mc
            m = np.float32(sm[lane] * np.float32(mc))
            need = max(chi - np.float64(m), 0.0) / qmax
            need = max(need, abs(np.float64(m)) * TINY_STEP)
        else:
            m = np.float32(0)
            need = max(abs(clo), abs(chi)) / qmax
        ratio = need / std if std > 0 else 0.0
        sc = min(max(np.ceil(ratio), 0.0), k)
        low = (std * sc < need) & (sc < k)
        sc = sc + 1.0 if low else sc
        scale = np.float32(st[lane] * np.float32(sc))
        zp = np.float32(0)
        if affine:
            zp = np.float32(-m / scale) if scale > 0 else np.float32(0)
            zp = min(max(zp, -big), big)
            top = (qmax - np.float64(zp)) * np.float64(scale)
            short = (top < chi) & (sc < k)
            sc = sc + 1.0 if short else sc
            scale2 = np.float32(st[lane] * np.float32(sc))
            zp2 = np.float32(-m / scale2) if scale2 > 0 else np.float32(0)
            zp2 = min(max(zp2, -big), big)
            scale = scale2 if short else scale
            zp = zp2 if short else zp
        s_out[lane] = scale
        z_out[lane] = zp
        sc_out[lane] = sc
        mc_out[lane] = mc


@exact
def lane_scores(xt, inside, masked, s, z, fq_lo, fq_hi, il, acc, err):
    """elementwise.squared_error of each lane's group (column ``lane`` of ``xt``, (glen, lanes);
    ``masked``: only where ``inside`` is not 0) under its grid: float32 errors summed in
    ``constants.SUM_LANES`` order, element j into ``acc[j % SUM_LANES, lane]``, then the partial
    sums in lane order (into ``acc[0]``). The loops over lanes are elementwise, so they
    vectorize without reordering any sum. ``il`` is scratch for 1/scale."""
    width = xt.shape[1]
    for lane in range(width):
        sl = s[lane]
        il[lane] = np.float32(1) / sl if sl != 0 else np.float32(0)
    acc[:, :] = 0
    for j in range(xt.shape[0]):
        a = acc[j % SUM_LANES]
        x_j = xt[j]
        if masked:
            in_j = inside[j]
            for lane in range(width):
                xv = x_j[lane]
                t = np.rint(xv * il[lane] + z[lane])
                t = min(max(t, fq_lo), fq_hi)
                e = (t - z[lane]) * s[lane] - xv
                a[lane] += e * e if in_j[lane] != 0 else np.float32(0)
        else:
            for lane in range(width):
                xv = x_j[lane]
                t = np.rint(xv * il[lane] + z[lane])
                t = min(max(t, fq_lo), fq_hi)
                e = (t - z[lane]) * s[lane] - xv
                a[lane] += e * e
    total = acc[0]
    for k in range(1, SUM_LANES):
        a = acc[k]
        for lane in range(width):
            total[lane] += a[lane]
    for lane in range(width):
        err[lane] = total[lane]


@exact
def lane_candidates(mode, idx, shrinks, lo, hi, amp, base_lo, base_hi, c_lo, c_hi):
    """Bounds of candidate ``idx[lane]`` per lane, as ranges._mse_range builds them: mode 0
    symmetric, 1 the affine lower bound (upper at base_hi), 2 the affine upper bound."""
    for lane in range(LANES):
        t = shrinks[idx[lane]]
        if mode == 0:
            c_hi[lane] = min(hi[lane], t * amp[lane])
            c_lo[lane] = min(max(lo[lane], -t * amp[lane]), c_hi[lane])
        elif mode == 1:
            c_lo[lane] = min(max(lo[lane], lo[lane] * t), base_hi[lane])
            c_hi[lane] = base_hi[lane]
        else:
            c_lo[lane] = base_lo[lane]
            c_hi[lane] = max(min(hi[lane], hi[lane] * t), base_lo[lane])


@exact
def blend_rows(mask, cand, best):
    """best = cand, row by row, in the lanes where ``mask`` is not 0: a blend that vectorizes
    (a per-lane branch on a comparison of errors would be mispredicted about half the time)."""
    for i in range(cand.shape[0]):
        c_row = cand[i]
        b_row = best[i]
        for lane in range(cand.shape[1]):
            b_row[lane] = c_row[lane] if mask[lane] != 0 else b_row[lane]


@exact
def store_lanes(r, g, w, sc, mc, s, z, sc_out, mc_out, s_out, z_out):
    """Write the first ``w`` lanes' scale and min codes, scale and zero-point to the groups
    (r, g), (r, g + 1), ... in C order over (rows, groups)."""
    ng = sc_out.shape[1]
    for lane in range(w):
        sc_out[r, g] = np.uint8(sc[lane])
        mc_out[r, g] = np.uint8(mc[lane])
        s_out[r, g] = s[lane]
        z_out[r, g] = z[lane]
        g += 1
        if g == ng:
            g = 0
            r += 1


@exact
def mse_search_l2(
    rows,
    glen,
    lo,
    hi,
    step,
    smin,
    k,
    qlo,
    qhi,
    shrinks,
    stride,
    affine,
    min_gain,
    sc_out,
    mc_out,
    s_out,
    z_out,
):
    """ranges._mse_range with level-2 grids: the same candidates in the same order, for
    ``LANES`` (or ``NARROW_LANES``) groups (consecutive in C order over (rows, groups)) at a
    time, each group's values copied once into a small buffer that every candidate reads from L1.

    Writes each group's scale and min codes and its float32 scale and zero-point: what
    level2.encode_params gives for the chosen range (the same operations, see lane_grids), so
    the caller needs no second pass over the parameters."""
    n_rows, cols = rows.shape
    ng = lo.shape[1]
    total = n_rows * ng
    qmax = np.float64(qhi - qlo) if affine else np.float64(qhi)
    fq_lo = np.float32(qlo)
    fq_hi = np.float32(qhi)
    keep = 1.0 - min_gain
    n = shrinks.size
    width = LANES if glen <= WIDE_MAX_GROUP else NARROW_LANES
    xt = np.zeros((glen, width), np.float32)  # a group per column, read from L1 by every grid
    inside = np.ones((glen, width), np.float32)  # 1 where xt holds a value, 0 in padding
    acc = np.zeros((SUM_LANES, width), np.float32)
    il = np.zeros(width, np.float32)
    f64 = [np.zeros(LANES) for _ in range(7)]
    g_lo, g_hi, amp, base_lo, base_hi, base_mc, m_cmp = f64
    # The candidate's and the best range's state, a row each, by dtype (see ``blend_rows``):
    # error, bounds, shrink index, scale and min codes; scale and zero-point.
    cand = np.zeros((6, LANES))
    best = np.zeros((6, LANES))
    err, c_lo, c_hi, c_idx, sc, mc = cand[0], cand[1], cand[2], cand[3], cand[4], cand[5]
    b_err, b_lo, b_hi, b_idx, b_sc, b_mc = best[0], best[1], best[2], best[3], best[4], best[5]
    cand32 = np.zeros((2, LANES), np.float32)
    best32 = np.zeros((2, LANES), np.float32)
    s, z, b_s, b_z = cand32[0], cand32[1], best32[0], best32[1]
    g_st = np.zeros(LANES, np.float32)
    g_sm = np.zeros(LANES, np.float32)
    idx = np.zeros(LANES, np.int64)
    center = np.zeros(LANES, np.int64)
    modes = (1, 2) if affine else (0, -1)
    for f0 in range(0, total, width):
        w = min(width, total - f0)
        r0 = f0 // ng  # the batch's first group; the others follow in C order
        g0 = f0 - r0 * ng
        r = r0
        g = g0
        masked = False
        for lane in range(LANES):
            # A short last batch repeats its last group; lanes past ``width`` score nothing.
            c0 = g * glen
            if lane < width:
                m = min(cols, c0 + glen) - c0
                for j in range(glen):
                    xt[j, lane] = rows[r, c0 + j] if j < m else np.float32(0)
                    inside[j, lane] = 1 if j < m else 0
                masked |= m < glen
            g_lo[lane] = lo[r, g]
            g_hi[lane] = hi[r, g]
            amp[lane] = max(abs(g_lo[lane]), abs(g_hi[lane]))
            g_st[lane] = step[r, g]
            g_sm[lane] = smin[r, g]
            b_lo[lane] = g_lo[lane]
            b_hi[lane] = g_hi[lane]
            if lane + 1 < w:
                g += 1
                if g == ng:
                    g = 0
                    r += 1
        lane_grids(b_lo, b_hi, g_st, g_sm, k, qmax, affine, False, b_mc, b_s, b_z, b_sc, b_mc)
        lane_scores(xt, inside, masked, b_s, b_z, fq_lo, fq_hi, il, acc, b_err)
        for mode in modes:
            if mode < 0:
                break
            for lane in range(LANES):
                base_lo[lane] = b_lo[lane]
                base_hi[lane] = b_hi[lane]
                base_mc[lane] = b_mc[lane]  # the min code of base_lo: b_mc is b_lo's
                b_idx[lane] = 0
            known = mode == 2  # only the upper bound moves: every candidate has base_lo
            sweep_at = stride
            step_now = 0
            while True:
                # The coarse pass (every stride-th shrink, same for all lanes), then for each
                # halving step the two neighbours of each lane's best (its best again where a
                # neighbour falls outside the list, which is never "better").
                if sweep_at < n:
                    for lane in range(LANES):
                        idx[lane] = sweep_at
                    sweep_at += stride
                    passes = 1
                else:
                    if step_now == 0:
                        step_now = stride // 2
                    elif step_now == -1:
                        break
                    if step_now == 0:  # stride 1: no refinement
                        break
                    passes = 2
                    for lane in range(LANES):
                        center[lane] = np.int64(b_idx[lane])
                for p in range(passes):
                    if passes == 2:
                        sign = -1 if p == 0 else 1
                        valid = 0
                        for lane in range(LANES):
                            j = center[lane] + sign * step_now
                            ok = 1 <= j < n
                            idx[lane] = j if ok else center[lane]
                            valid += ok
                        if valid == 0:  # every lane would re-score its best: nothing to do
                            continue
                    lane_candidates(
                        mode, idx, shrinks, g_lo, g_hi, amp, base_lo, base_hi, c_lo, c_hi
                    )
                    lane_grids(
                        c_lo, c_hi, g_st, g_sm, k, qmax, affine, known, base_mc, s, z, sc, mc
                    )
                    lane_scores(xt, inside, masked, s, z, fq_lo, fq_hi, il, acc, err)
                    for lane in range(LANES):
                        c_idx[lane] = idx[lane]
                        m_cmp[lane] = 1 if err[lane] < b_err[lane] * keep else 0
                    blend_rows(m_cmp, cand, best)
                    blend_rows(m_cmp, cand32, best32)
                if passes == 2:
                    step_now = step_now // 2 if step_now > 1 else -1
        store_lanes(r0, g0, w, b_sc, b_mc, b_s, b_z, sc_out, mc_out, s_out, z_out)


@exact
def lane_error(xt, inside, masked, w, s, z, inv, fq_lo, fq_hi, err):
    """Per lane (the first ``w`` of a (glen, lanes) block), refine._score's squared error of its
    grid (scale ``s``, zero-point ``z``, 1/scale ``inv``): s² times the float32 sum, in element
    order, of (q - u)², u the unrounded code (lanes side by side, so the loop over lanes
    vectorizes without reordering any sum). ``masked``: count only where ``inside`` is not 0."""
    for lane in range(w):
        err[lane] = 0
    for j in range(xt.shape[0]):
        if masked:
            for lane in range(w):
                u = xt[j, lane] * inv[lane] + z[lane]
                r = min(max(np.rint(u), fq_lo), fq_hi) - u
                err[lane] += r * r if inside[j, lane] != 0 else np.float32(0)
        else:
            for lane in range(w):
                u = xt[j, lane] * inv[lane] + z[lane]
                r = min(max(np.rint(u), fq_lo), fq_hi) - u
                err[lane] += r * r
    for lane in range(w):
        err[lane] *= s[lane] * s[lane]


@exact
def lane_fit_sums(xt, inside, w, z, inv, fq_lo, fq_hi, s1, s2, sqx):
    """Per lane, the float32 sums of q, q² and q·x over its grid's codes q: refine._score's
    other sums, in the same order."""
    for lane in range(w):
        s1[lane] = 0
        s2[lane] = 0
        sqx[lane] = 0
    for j in range(xt.shape[0]):
        for lane in range(w):
            xv = xt[j, lane]
            t = np.rint(xv * inv[lane] + z[lane])
            t = min(max(t, fq_lo), fq_hi) * inside[j, lane]
            s1[lane] += t
            s2[lane] += t * t
            sqx[lane] += t * xv


@exact
def lane_decode(sc, mc, st, sm, w, s, z, inv):
    """level2.decode_params for the first ``w`` lanes: the float32 scale, zero-point and 1/scale
    (as Grid.float32 gives it) of scale and min codes ``sc``, ``mc``."""
    big = np.float32(F32_MAX)
    for lane in range(w):
        scale = np.float32(st[lane] * sc[lane])
        m = np.float32(sm[lane] * mc[lane])
        zp = np.float32(-m / scale) if scale > 0 else np.float32(0)
        s[lane] = scale
        z[lane] = min(max(zp, -big), big)
        inv[lane] = np.float32(1) / scale if scale != 0 else np.float32(0)


@exact
def refine_l2(
    rows,
    glen,
    lo,
    hi,
    step,
    smin,
    k,
    qlo,
    qhi,
    rounds,
    offsets,
    min_gain,
    sc_out,
    mc_out,
    s_out,
    z_out,
):
    """refine.refine_affine for a chunk of rows, ``LANES`` (or ``NARROW_LANES``) groups at a time,
    each group a column of a (glen, lanes) buffer read from L1 by every grid it scores.

    Only the squared error is summed for every candidate; the fit's sums are taken once per round
    from the best grid (the same values refine._score gives for it). Writes each group's scale
    and min codes and its float32 scale and zero-point."""
    n_rows, cols = rows.shape
    ng = lo.shape[1]
    total = n_rows * ng
    qmax = np.float64(qhi - qlo)
    fq_lo = np.float32(qlo)
    fq_hi = np.float32(qhi)
    keep = np.float32(1.0 - min_gain)
    width = LANES if glen <= WIDE_MAX_GROUP else NARROW_LANES
    xt = np.zeros((glen, width), np.float32)
    inside = np.ones((glen, width), np.float32)  # 1 where xt holds a value, 0 in padding
    f64 = [np.zeros(LANES) for _ in range(5)]  # LANES: lane_grids computes all of them
    g_lo, g_hi, base, sc64, mc64 = f64
    f32 = [np.zeros(LANES, np.float32) for _ in range(10)]
    g_st, g_sm, sx, s1, s2, sqx, m_cmp, s, z, inv = f32
    # The candidate's and the best grid's error and codes, a row each (see ``blend_rows``).
    cand = np.zeros((3, LANES), np.float32)
    best = np.zeros((3, LANES), np.float32)
    err, c_sc, c_mc = cand[0], cand[1], cand[2]
    b_err, b_sc, b_mc = best[0], best[1], best[2]
    ok = np.zeros(LANES, np.bool_)
    n_l = np.zeros(LANES, np.int64)
    whole = cols == ng * glen
    flat = rows.reshape(-1)  # rows is C-contiguous (a chunk of the row view)
    for f0 in range(0, total, width):
        w = min(width, total - f0)
        if whole:  # the batch is one block of w * glen values: transpose it
            block = flat[f0 * glen : (f0 + w) * glen]
            for j in range(glen):
                for lane in range(w):
                    xt[j, lane] = block[lane * glen + j]
            for lane in range(w):
                n_l[lane] = glen
        else:
            for lane in range(w):
                f = f0 + lane
                r = f // ng
                c0 = (f - r * ng) * glen
                m = min(cols, c0 + glen) - c0
                n_l[lane] = m
                for j in range(glen):
                    xt[j, lane] = rows[r, c0 + j] if j < m else np.float32(0)
                    inside[j, lane] = 1 if j < m else 0
        for lane in range(w):
            sx[lane] = 0
        for j in range(glen):
            for lane in range(w):
                sx[lane] += xt[j, lane]
        r0 = f0 // ng  # the batch's first group is (r0, g0); the others follow in C order
        g0 = f0 - r0 * ng
        r = r0
        g = g0
        for lane in range(w):
            g_lo[lane] = lo[r, g]
            g_hi[lane] = hi[r, g]
            g_st[lane] = step[r, g]
            g_sm[lane] = smin[r, g]
            g += 1
            if g == ng:
                g = 0
                r += 1
        lane_grids(g_lo, g_hi, g_st, g_sm, k, qmax, True, False, mc64, s, z, sc64, mc64)
        for lane in range(w):  # the min-max start
            b_sc[lane] = sc64[lane]
            b_mc[lane] = mc64[lane]
        lane_decode(b_sc, b_mc, g_st, g_sm, w, s, z, inv)
        lane_error(xt, inside, not whole, w, s, z, inv, fq_lo, fq_hi, b_err)
        for rnd in range(rounds):
            if rnd > 0:
                lane_decode(b_sc, b_mc, g_st, g_sm, w, s, z, inv)
            lane_fit_sums(xt, inside, w, z, inv, fq_lo, fq_hi, s1, s2, sqx)
            for lane in range(w):  # the least-squares fit to the best grid's codes, float64
                cnt = np.float64(n_l[lane])
                t1 = np.float64(s1[lane])
                t2 = np.float64(s2[lane])
                tx = np.float64(sqx[lane])
                x1 = np.float64(sx[lane])
                det = cnt * t2 - t1 * t1
                good = det > 0
                s_fit = (cnt * tx - t1 * x1) / det if good else 0.0
                m_fit = (x1 - s_fit * t1) / cnt
                std = np.float64(g_st[lane])
                smd = np.float64(g_sm[lane])
                good = good & (std > 0) & np.isfinite(s_fit) & np.isfinite(m_fit)
                base[lane] = np.rint(s_fit / std) if good else 0.0
                mcode = np.rint(m_fit / smd) if smd != 0 else 0.0
                c_mc[lane] = min(max(mcode, 0.0), k) if good else b_mc[lane]
                ok[lane] = good
            for o in offsets:
                for lane in range(w):
                    c = np.float32(min(max(base[lane] + o, 1.0), k))
                    c_sc[lane] = c if ok[lane] else b_sc[lane]
                lane_decode(c_sc, c_mc, g_st, g_sm, w, s, z, inv)
                lane_error(xt, inside, not whole, w, s, z, inv, fq_lo, fq_hi, err)
                for lane in range(w):
                    m_cmp[lane] = 1 if err[lane] < b_err[lane] * keep else 0
                blend_rows(m_cmp, cand, best)
        lane_decode(b_sc, b_mc, g_st, g_sm, w, s, z, inv)
        store_lanes(r0, g0, w, b_sc, b_mc, s, z, sc_out, mc_out, s_out, z_out)
