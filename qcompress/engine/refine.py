"""The "mse" range method for affine groups of 4-8-bit codes with second-level scales (the 4-7-bit
defaults): least-squares refinement on the second level's lattice of grids.

Why not the shrink sweep of ``ranges``: under second-level scales every grid a group can have is
a pair of integer codes (scale code sc, min code mc), so the search can move on that lattice
directly. From the min-max grid, each round fits x ≈ m + s·q by least squares to the codes q the
best grid so far gives (closed form), rounds s and m onto the lattice, and scores that grid and
its neighbours one scale code up and down (``OFFSETS``); a grid replaces the best only if it cuts
the squared error by more than ``ranges.MSE_MIN_GAIN``, so the result is never worse than
min-max. ``ROUNDS`` rounds score 1 + 2 x 3 = 7 grids where the shrink sweep scores 15, and a
lattice grid costs a few operations where a shrink candidate costs the level-2 encoding with its
divisions. On benchmarks/quality.py's sets, against the sweep: -0.07 to +0.02 dB for the 4- and
5-bit defaults (groups of 32), -0.16 to +0.09 dB for other 4-bit groupings, +0.05 to +0.17 dB at
6-7 bits. At 2-3 bits it is up to 0.1 dB worse on Gaussian groups (better on heavy-tailed ones):
those keep the sweep, whose deep clips low bits need (``applies``).

Exactness: every sum (squared error, and the fit's sums of q, q², q·x and x) is a float32 sum in
element order, per group, here and in the compiled kernel (``numba_kernels.refine_l2``), and the
fit is the same float64 operations in both; so both paths choose the same grids bit for bit, on
any CPU. Grids are decoded by ``level2.decode_params`` and codes are elementwise.encode's: the
search scores the grids that will be stored (their error measured in steps, see ``_score``).
"""

from __future__ import annotations

import numpy as np

from qcompress.engine import level2
from qcompress.engine.params import Grid, code_range
from qcompress.engine.ranges import MSE_DEEP_BITS, MSE_MIN_GAIN
from qcompress.engine.spec import QuantSpec

ROUNDS = 2
"""Least-squares rounds after the min-max start. A third round adds 0.01-0.03 dB at 4 bits for 3
more grids per group; one round alone loses 0.06-0.18 dB."""

OFFSETS = (0, 1, -1)
"""Scale codes tried around each round's fitted scale: rounding s to the nearest code alone loses
about 0.5 dB at 4 bits; its neighbours recover that. (Without +1: 0.06-0.08 dB less at 4 bits,
for a 10% faster 4-bit quantization.)"""


def applies(spec: QuantSpec) -> bool:
    """Whether ``spec``'s "mse" range search is this refinement (given second-level scales):
    affine codes of more than ``ranges.MSE_DEEP_BITS`` bits."""
    return spec.range_method == "mse" and spec.scheme == "affine" and spec.bits > MSE_DEEP_BITS


def refine_affine(c: level2.Chunk, spec: QuantSpec) -> tuple[Grid, np.ndarray, np.ndarray]:
    """The chosen grid of every group of the chunk ``c``, with its scale and min codes (uint8,
    (rows, n_groups)), as ``level2.encode_params`` returns them."""
    assert spec.scale_bits is not None and spec.scheme == "affine" and c.smin is not None
    rows, glen, lo, hi, step, smin = c.rows, c.glen, c.lo, c.hi, c.step, c.smin
    k = 2**spec.scale_bits - 1
    shape = lo.shape
    cols = rows.shape[1]
    xt, inside = _columns(rows, glen, shape[1])
    st = step.reshape(-1)
    sm = smin.reshape(-1)
    qlo, qhi = code_range(spec.bits, "affine")
    _, sc, mc = level2.encode_params(lo, hi, step, smin, spec)  # the min-max start
    b_sc = sc.reshape(-1).astype(np.float64)
    b_mc = mc.reshape(-1).astype(np.float64)
    best = _score(xt, inside, b_sc, b_mc, st, sm, qlo, qhi)
    count = np.full(shape, float(glen))
    count[:, -1] = cols - (shape[1] - 1) * glen  # each row's last group may be ragged
    count = count.reshape(-1)
    with np.errstate(over="ignore"):  # values near ±3.4e38: an inf sum fits nothing
        sx = _sum(xt).astype(np.float64)
    st64 = st.astype(np.float64)
    sm64 = sm.astype(np.float64)
    keep = np.float32(1.0 - MSE_MIN_GAIN)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(ROUNDS):
            s1, s2, sqx = (a.astype(np.float64) for a in best[1:])
            det = count * s2 - s1 * s1
            ok = det > 0
            s_fit = np.where(ok, (count * sqx - s1 * sx) / det, 0.0)
            m_fit = (sx - s_fit * s1) / count
            ok &= (st64 > 0) & np.isfinite(s_fit) & np.isfinite(m_fit)
            base = np.where(ok, np.rint(s_fit / st64), b_sc)
            m_code = np.where(sm64 != 0, np.rint(m_fit / sm64), 0.0)
            m_code = np.where(ok, np.clip(m_code, 0, k), b_mc)
            for o in OFFSETS:  # a group without a fit scores its best again: never "better"
                c_sc = np.where(ok, np.clip(base + o, 1, k), b_sc)
                cand = _score(xt, inside, c_sc, m_code, st, sm, qlo, qhi)
                better = cand[0] < best[0] * keep
                best = tuple(np.where(better, c, b) for c, b in zip(cand, best, strict=True))
                b_sc = np.where(better, c_sc, b_sc)
                b_mc = np.where(better, m_code, b_mc)
    sc = b_sc.reshape(shape).astype(np.uint8)
    mc = b_mc.reshape(shape).astype(np.uint8)
    scale, zp = level2.decode_params(sc, mc, step, smin)
    return level2._grid(scale, zp, spec), sc, mc


def _columns(rows: np.ndarray, glen: int, ng: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Every group as a column of a (glen, groups) float32 array, zero-padded, and where the
    padding is (None when every group is full)."""
    n_rows, cols = rows.shape
    padded = np.zeros((n_rows, ng * glen), np.float32)
    padded[:, :cols] = rows
    xt = np.ascontiguousarray(padded.reshape(n_rows * ng, glen).T)
    if cols == ng * glen:
        return xt, None
    inside = np.zeros((n_rows, ng * glen), bool)
    inside[:, :cols] = True
    return xt, np.ascontiguousarray(inside.reshape(n_rows * ng, glen).T)


def _sum(a: np.ndarray) -> np.ndarray:
    """Column sums of a (glen, groups) float32 array, added in element order (numpy's own
    reductions pick their order; the compiled kernel must be able to repeat this one)."""
    acc = np.zeros(a.shape[1], np.float32)
    for row in a:
        acc += row
    return acc


def _score(
    xt: np.ndarray,
    inside: np.ndarray | None,
    sc: np.ndarray,
    mc: np.ndarray,
    st: np.ndarray,
    sm: np.ndarray,
    qlo: int,
    qhi: int,
) -> tuple[np.ndarray, ...]:
    """float32 (squared error, sum q, sum q², sum q·x) per group for the grid of codes (sc, mc).

    The codes q are elementwise.encode's. The error is measured in steps, as scale² · Σ (q - u)²
    with u = x / scale + zero-point the unrounded code: the decoded error up to float32
    rounding (far below ``ranges.MSE_MIN_GAIN``), for two operations per element fewer."""
    scale, zp = level2.decode_params(sc, mc, st, sm)
    assert zp is not None
    inv = np.zeros_like(scale)
    np.divide(np.float32(1), scale, out=inv, where=scale != 0)
    with np.errstate(over="ignore", invalid="ignore"):
        u = xt * inv
        u += zp
        t = np.rint(u)
        np.clip(t, qlo, qhi, out=t)
        r = t - u
        r *= r
    if inside is not None:
        r[~inside] = 0
        t[~inside] = 0
    with np.errstate(over="ignore", invalid="ignore"):  # values near ±3.4e38: inf sums
        return _sum(r) * (scale * scale), _sum(t), _sum(t * t), _sum(t * xt)
