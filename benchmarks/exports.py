"""GGUF block encoders: SQNR and single-thread speed per type, against the targets of issue 14.

Run: ``python benchmarks/exports.py`` (``--quick`` for 1024x4096 instead of 4096x4096).

Data: a 4096x4096 ``0.02 * N(0, 1)`` matrix (numpy ``default_rng(0)``) and a ``0.02 * t(3)``
one (``default_rng(1)``), as in the issue. Targets: llama.cpp's own encoder (no importance
matrix) on the same rows, Q4_K >= 22.93 / 20.79 dB, Q5_K >= 28.84 / 26.64, Q6_K >= 35.01 / 31.90,
and >= 270 MB/s for Q4_K on one thread (10x llama.cpp's 27 MB/s). gguf's numpy Q4_0 / Q8_0
encoders are timed on the same data for scale. Speed is MB/s of float32 input, best of 3 runs,
in CPU time of this process (a shared machine steals wall time, not CPU time); numba's compile
is excluded (a warm-up call on a small matrix first).

The numbers are printed, not asserted: a busy machine is slower, never wrong.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np

from qcompress.engine import kquants

TARGETS = {
    "Q4_K": (22.93, 20.79, 270.0),
    "Q5_K": (28.84, 26.64, None),
    "Q6_K": (35.01, 31.90, None),
}


def sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
    x64 = x.astype(np.float64)
    return float(10 * np.log10((x64**2).sum() / ((x64 - y) ** 2).sum()))


def cpu_best(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024x4096 matrices")
    args = ap.parse_args()
    rows = 1024 if args.quick else 4096
    normal = (0.02 * np.random.default_rng(0).standard_normal((4096, 4096))).astype(np.float32)
    heavy = (0.02 * np.random.default_rng(1).standard_t(3, (4096, 4096))).astype(np.float32)
    normal, heavy = normal[:rows], heavy[:rows]
    mb = normal.nbytes / 1e6
    print(f"{rows}x4096 float32 ({mb:.0f} MB), one thread, CPU time, best of 3")
    print(f"{'type':8} {'bpw':>6} {'N(0,1) dB':>10} {'t(3) dB':>9} {'MB/s':>7}   target")
    for name, t in kquants.BLOCK_TYPES.items():
        kquants.encode(normal[:8], name)  # compile / load the kernels
        data: list[np.ndarray] = []
        secs = cpu_best(lambda n=name, data=data: data.append(kquants.encode(normal, n)))
        s_n = sqnr_db(normal, kquants.decode(data[-1], name))
        s_t = sqnr_db(heavy, kquants.decode(kquants.encode(heavy, name), name))
        target = ""
        if name in TARGETS:
            tn, tt, speed = TARGETS[name]
            ok = s_n >= tn and s_t >= tt and (speed is None or mb / secs >= speed)
            target = f">= {tn} / {tt} dB" + (f", >= {speed:.0f} MB/s" if speed else "")
            target += "  ok" if ok else "  MISSED"
        print(
            f"{name:8} {t.bits_per_weight:6.3f} {s_n:10.2f} {s_t:9.2f} {mb / secs:7.0f}   {target}"
        )
    try:
        from gguf import GGMLQuantizationType, quants
    except ImportError:
        print("(gguf not installed: pip install 'qcompress[bench]' for its numpy encoders)")
        return
    for name in ("Q4_0", "Q8_0"):
        qt = GGMLQuantizationType[name]
        out: list[np.ndarray] = []
        secs = cpu_best(lambda q=qt, out=out: out.append(quants.quantize(normal, q)), repeats=1)
        s_n = sqnr_db(normal, quants.dequantize(out[-1], qt))
        s_t = sqnr_db(heavy, quants.dequantize(quants.quantize(heavy, qt), qt))
        print(
            f"gguf {name:3} {kquants.BLOCK_TYPES[name].bits_per_weight:6.3f} "
            f"{s_n:10.2f} {s_t:9.2f} {mb / secs:7.0f}   (gguf-py numpy encoder)"
        )


if __name__ == "__main__":
    main()
