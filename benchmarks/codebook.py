"""Codebook codes against issue 13's fixed-rate targets: SQNR and bits per weight (every stored
byte, from the artifact layout) on 0.02*N(0,1) and 0.02*t(3) float32 matrices.

    PYTHONPATH=. python benchmarks/codebook.py [--rows 4096]

Targets (issue 13): >= 22.6 / 20.2 dB at <= 4.25 bpw, >= 17.3 / 14.5 dB at <= 3.44 bpw.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qcompress import engine
from qcompress.artifact.layout import stored_nbytes
from qcompress.config import QuantizeOptions
from qcompress.formats.base import TensorInfo
from qcompress.quantize.policy import _spec

MODES = (
    ("uniform 4-bit (default)", dict(bits=4)),
    ("iq4nl 4-bit", dict(bits=4, codebook="iq4nl")),
    ("nf4 4-bit", dict(bits=4, codebook="nf4")),
    ("fit 4-bit", dict(bits=4, codebook="fit")),
    ("uniform 3-bit (default)", dict(bits=3)),
    ("fit 3-bit", dict(bits=3, codebook="fit")),
)


def matrices(rows: int) -> list[tuple[str, np.ndarray]]:
    n = 0.02 * np.random.default_rng(0).standard_normal((rows, 4096), dtype=np.float32)
    t = (0.02 * np.random.default_rng(1).standard_t(3, (rows, 4096))).astype(np.float32)
    return [("0.02*N(0,1)", n), ("0.02*t(3)", t)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    args = parser.parse_args()
    print(f"| matrix ({args.rows}x4096) | mode | bits/weight | SQNR dB | seconds |")
    print("|---|---|---|---|---|")
    for label, x in matrices(args.rows):
        info = TensorInfo("w", x.shape, "float32")
        for name, kw in MODES:
            spec = _spec(info, "pytorch", QuantizeOptions(**kw))
            t0 = time.perf_counter()
            _, stats = engine.quantize_with_error(x, spec)
            dt = time.perf_counter() - t0
            bpw = 8 * stored_nbytes(info, spec) / x.size
            print(f"| {label} | {name} | {bpw:.3f} | {stats.sqnr_db:.2f} | {dt:.0f} |", flush=True)


if __name__ == "__main__":
    main()
