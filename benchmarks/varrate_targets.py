"""Issue 12's targets for variable-rate codes on 0.02*N(0,1) and 0.02*t(3), 4096x4096 float32
(numpy default_rng(0) and (1)): SQNR at <= 4.5 bits per weight, bits at Q4_0's 21.32 dB, bits
at SZ3's absolute bounds, and one-thread encode/decode speed.

Bits per weight count every stored byte (codes after the entropy stage, and the steps). With
``qcompress.engine.entropy`` present the codes are priced by its ``coded_nbytes`` (the exact
coded size); without it by their order-0 entropy (what an ideal coder spends), and the table says
which. Run: ``python -m benchmarks.varrate_targets [--size N]`` (not in CI).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from qcompress.engine.uniform import (
    UniformSpec,
    code_entropy,
    uniform_dequantize,
    uniform_quantize_with_error,
)


def coded_bits(codes: np.ndarray) -> tuple[float, str]:
    """Bits the codes cost after the entropy stage, and how they were priced."""
    try:
        from qcompress.engine.entropy import coded_nbytes
    except ImportError:
        return code_entropy(codes) * codes.size, "order-0 entropy"
    return 8.0 * coded_nbytes(codes), "coded_nbytes"


def bpw(u, n: int) -> tuple[float, str]:
    bits, how = coded_bits(u.codes)
    return (bits + 8 * u.step.nbytes) / n, how


def sz3_bpw(x: np.ndarray, bound: float) -> float | None:
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        return None
    config = szConfig()
    config.errorBoundMode = szErrorBoundMode.ABS
    config.absErrorBound = bound
    stream, _ = sz.compress(x, config)
    return 8 * stream.nbytes / x.size


def best_at_bpw(x: np.ndarray, budget: float) -> tuple[float, float]:
    """The highest SQNR target (0.05 dB steps) whose codes fit ``budget`` bits per weight."""
    lo, hi = 10.0, 40.0
    while hi - lo > 0.02:
        mid = (lo + hi) / 2
        u, _ = uniform_quantize_with_error(x, UniformSpec("sqnr", mid))
        if bpw(u, x.size)[0] <= budget:
            lo = mid
        else:
            hi = mid
    u, stats = uniform_quantize_with_error(x, UniformSpec("sqnr", lo))
    return stats.sqnr_db, bpw(u, x.size)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    n = ap.parse_args().size
    sets = {
        "gaussian": (0.02 * np.random.default_rng(0).standard_normal((n, n))).astype(np.float32),
        "student-t3": (0.02 * np.random.default_rng(1).standard_t(3, (n, n))).astype(np.float32),
    }
    for name, x in sets.items():
        db, bits = best_at_bpw(x, 4.5)
        print(f"{name}: {db:.2f} dB at {bits:.3f} bpw (target <= 4.5 bpw)")
        u, stats = uniform_quantize_with_error(x, UniformSpec("sqnr", 21.32))
        bits, how = bpw(u, x.size)
        print(f"{name}: {stats.sqnr_db:.2f} dB at {bits:.3f} bpw ({how})")
        for bound in (0.0025, 0.0035):
            u, stats = uniform_quantize_with_error(x, UniformSpec("abs", bound))
            ours = bpw(u, x.size)[0]
            theirs = sz3_bpw(x, bound)
            vs = "" if theirs is None else f", SZ3 {theirs:.3f} bpw ({1 - ours / theirs:+.1%})"
            print(f"{name}: abs {bound}: {ours:.3f} bpw, max err {stats.max_abs_error:.6g}{vs}")
        spec = UniformSpec("abs", 0.0025)
        uniform_quantize_with_error(x[:64], spec)  # compile outside the timing
        enc = min(_timed(uniform_quantize_with_error, x, spec) for _ in range(3))
        u, _ = uniform_quantize_with_error(x, spec)
        dec = min(_timed(uniform_dequantize, u) for _ in range(3))
        mb = x.nbytes / 1e6
        print(f"{name}: encode {mb / enc:.0f} MB/s, decode {mb / dec:.0f} MB/s (one thread)")


def _timed(fn: Callable[..., object], *args: object) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
