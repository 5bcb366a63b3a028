"""Write a model of many tiny tensors (default 100k, ~9 MB safetensors), as npz and safetensors.

Run: ``python benchmarks/many_tensors.py OUT_DIR [--tensors N]``. ``benchmarks/speed.py`` uses
``write_many`` to time ``inspect`` and ``quantize`` on such files: per-tensor overhead (a rescan
of every tensor, a thread hand-off, a header parse) shows here, and nowhere else, as time that
grows faster than the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# Shapes cycled over the tensors: a small matrix, a bias and a norm (float), an int step counter
# (passed through): ~30 bytes of data per tensor, ~90 with its safetensors header entry.
SHAPES: tuple[tuple[tuple[int, ...], str], ...] = (
    ((4, 4), "float32"),
    ((4,), "float32"),
    ((2,), "float32"),
    ((), "int64"),
)


def tensors(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        shape, dtype = SHAPES[i % len(SHAPES)]
        name = f"block.{i // len(SHAPES)}.t{i % len(SHAPES)}"
        out[name] = (
            rng.standard_normal(shape, dtype=np.float32)
            if dtype == "float32"
            else np.array(i, dtype=dtype)
        )
    return out


def write_many(folder: Path, n: int = 100_000) -> tuple[Path, Path]:
    """``many.npz`` and ``many.safetensors`` in ``folder``, each holding ``n`` tiny tensors."""
    from safetensors.numpy import save_file

    data = tensors(n)
    npz, st = folder / "many.npz", folder / "many.safetensors"
    np.savez(npz, **data)
    save_file(data, str(st))
    return npz, st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tensors", type=int, default=100_000)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    for path in write_many(args.folder, args.tensors):
        print(f"{path}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
