"""Numbers both engine paths (numpy and the compiled kernels) must agree on, in one place.

They live apart from either path so that the kernels (``numba_kernels``) and the module that
decides when to use them (``jit``) import these, not each other: numba sees each one as a
compile-time constant, and the numpy path uses the same value.
"""

from __future__ import annotations

import numpy as np

MIN_ELEMENTS = 1 << 18
"""Tensors smaller than this (1 MB of float32) take the numpy path: compiled kernels pay off from
a few MB, and the numpy path is exact and already fast enough for small tensors."""

TILE = 2048
"""Columns per tile inside a kernel: the tile's float32 values and decoded values (16 kB) stay in
L1 between the encode loop and the reductions."""

DISABLE_ENV = "QCOMPRESS_NO_NUMBA"
"""Set to 1 to force the numpy path (for comparing the two: the artifact's bytes are the same)."""

TINY_STEP = 2.0**-20
"""A group whose range is a single value m != 0 still gets a step of |m| * 2^-20, so that
zp = -m / s is finite and code 0 decodes to m within float32 rounding (below s / 2)."""

F32_MAX = float(np.finfo(np.float32).max)
"""The largest finite float32: scales and bounds are clipped to it so they stay finite."""

SUM_LANES = 16
"""The fixed summation order: term j of a sum goes to partial sum j % SUM_LANES, each partial
sum adds its terms in index order starting from +0.0, and the partial sums are then added
0, 1, ..., SUM_LANES - 1. The partial sums are independent, so the compiled kernels vectorize
this order exactly (no reassociation: 16 lanes fill two AVX2 or one AVX-512 vector of float32,
and hide the add latency for float64), and numpy repeats it by reducing a (n / 16, 16) view
along its first axis, which it does row by row."""
