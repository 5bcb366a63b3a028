"""Lossless float compression and the entropy stage, against zipnn and zstd, on one thread.

Run: ``python benchmarks/lossless.py [--n 16777216]``. Prints, for bfloat16 / float16 / float32
weights of ``0.02 N(0,1)`` (numpy ``default_rng(0)``), the stored size as a share of the input
and the compress / decompress speed in MB/s of input, for ``qcompress.engine.lossless`` and
``zipnn`` 0.5.4 (``threads=1``); and for int8 / int16 codes of a uniform step (the
variable-rate case) the coded bits per code against the order-0 entropy and zstd level 1, with
encode / decode speed in M codes/s and in MB/s of the float32 weights behind them. Times are
the best of three runs in process CPU time, so a busy machine skews them less (they still vary:
the kernels share caches with whatever else runs). Targets (issue 12): bfloat16 <= 67%, float32
<= 85%, >= 1 GB/s compress; codes within 0.03 bits of the entropy, encode >= 500 MB/s and
decode >= 1 GB/s of float32 weights.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from qcompress.engine import entropy, lossless


def best(fn: Callable[[], Any], runs: int = 3) -> tuple[float, Any]:
    out, times = None, []
    for _ in range(runs):
        t = time.process_time()
        out = fn()
        times.append(time.process_time() - t)
    return max(min(times), 1e-9), out


def floats(n: int) -> None:
    w = np.random.default_rng(0).normal(0, 0.02, n).astype(np.float32)
    print(f"lossless, {n:,} weights of 0.02 N(0,1): size % of input, MB/s compress / decompress")
    try:
        import zipnn
    except ImportError:
        zipnn = None
    for name, x in (
        ("bfloat16", w.astype(ml_dtypes.bfloat16)),
        ("float16", w.astype(np.float16)),
        ("float32", w),
    ):
        mb = x.nbytes / 1e6
        dt_c, packed = best(lambda x=x: lossless.compress(x))
        dt_d, back = best(lambda p=packed: lossless.decompress(p.stream, p.info))
        assert back.tobytes() == x.tobytes()
        row = f"  {name:9s} qcompress {packed.stream.size / x.nbytes:6.1%} "
        row += f"{mb / dt_c:7.0f} / {mb / dt_d:7.0f}"
        if zipnn is not None:
            z = zipnn.ZipNN(bytearray_dtype=name, threads=1)
            raw = x.tobytes()
            dt_zc, blob = best(lambda z=z, raw=raw: z.compress(raw))
            dt_zd, _ = best(lambda z=z, blob=blob: z.decompress(blob))
            row += f"   zipnn {len(blob) / x.nbytes:6.1%} {mb / dt_zc:7.0f} / {mb / dt_zd:7.0f}"
        print(row)


def codes(n: int) -> None:
    import zstandard

    rng = np.random.default_rng(0)
    print(
        f"entropy stage, {n:,} codes: bits per code (entropy, rans16, zstd -1), M codes/s, "
        "MB/s of float32 weights encode / decode"
    )
    cases = (
        ("int8 step 0.25 sigma", np.round(rng.standard_normal(n) / 0.25).astype(np.int8)),
        ("int16 step sigma/4096", np.round(rng.standard_normal(n) * 4096).astype(np.int16)),
        ("int16 t3 step 0.05", np.round(rng.standard_t(3, n) / 0.05).astype(np.int16)),
    )
    for name, x in cases:
        dt_e, coded = best(lambda x=x: entropy.encode(x))
        dt_d, back = best(lambda c=coded: entropy.decode(c.stream, c.info))
        assert np.array_equal(back, x)
        z = len(zstandard.ZstdCompressor(level=1).compress(x.tobytes())) * 8 / n
        print(
            f"  {name:22s} H {entropy.entropy_bits(x):6.3f}  rans16 "
            f"{coded.stream.size * 8 / n:6.3f}  zstd {z:6.3f}   "
            f"{n / dt_e / 1e6:5.0f} / {n / dt_d / 1e6:5.0f} M/s   "
            f"{4 * n / dt_e / 1e6:5.0f} / {4 * n / dt_d / 1e6:5.0f} MB/s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 24, help="weights per case")
    args = ap.parse_args()
    floats(args.n)
    codes(args.n)


if __name__ == "__main__":
    main()
