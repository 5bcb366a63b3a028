"""The compiled kernel of variable-rate codes (``uniform``); importing this imports numba.

One pass per row: code = rint(x * inv), x_hat = code * step in float32, and the row's error sums
in the engine's fixed order (``numba_kernels.lane_sums``), so the numpy path of ``uniform`` gives
the same codes and the same sums. Compiled without fast-math, as every ``exact`` kernel.
"""

from __future__ import annotations

import numpy as np

from qcompress.engine.constants import SUM_LANES, TILE
from qcompress.engine.numba_kernels import abs_max_bits, combine, exact, lane_sums


@exact
def uniform_encode_stats(rows, inv, step, codes, sse_out, sig_out, mab_out):
    """Codes of every element of (n, cols) ``rows`` with row r's ``inv[r]`` and ``step[r]``,
    and per row sum d^2, sum x^2 and max |d| (int64 bits of the float64), d = x_hat - x."""
    n, cols = rows.shape
    xh = np.empty(TILE, np.float32)
    d = np.empty(TILE, np.float64)
    di = d.view(np.int64)
    acc_e = np.zeros(SUM_LANES)
    acc_s = np.zeros(SUM_LANES)
    for r in range(n):
        row = rows[r]
        crow = codes[r]
        iv = inv[r]
        ss = step[r]
        acc_e[:] = 0.0
        acc_s[:] = 0.0
        mab = 0
        for c0 in range(0, cols, TILE):
            c1 = min(cols, c0 + TILE)
            base = np.uint64(c0)
            for i in range(np.uint64(c0), np.uint64(c1)):
                t = np.rint(row[i] * iv)
                crow[i] = t
                xh[i - base] = t * ss
            n_t = c1 - c0
            lane_sums(row[c0:c1], xh[:n_t], d[:n_t], c0, acc_e, acc_s)
            m = abs_max_bits(di[:n_t])
            mab = m if m > mab else mab
        sse_out[r] = combine(acc_e)
        sig_out[r] = combine(acc_s)
        mab_out[r] = mab


@exact
def uniform_decode(codes, step, out):
    """out[r] = codes[r] * step[r] in float32 (codes of at most 24 bits: exact in float32)."""
    n, cols = codes.shape
    for r in range(n):
        ss = step[r]
        crow = codes[r]
        orow = out[r]
        for i in range(cols):
            orow[i] = np.float32(crow[i]) * ss
