"""Score any copy of the digits sample MLP on its held-out split.

Why: SQNR says how far quantized weights moved; test accuracy says whether the model still works.
This runs the same float32 numpy forward pass on any weight file (npz, safetensors in f32 or bf16,
Keras h5, or a file qcompress dequantized), read through ``qcompress.formats.open_weights``, so the
numbers compare across formats and the project's readers are exercised on a real model.

    python sample_models/score.py FILE [FILE...]
    -> FILE: accuracy 0.9733 (438/450)

Import-safe (no work at import time): ``accuracy``, ``predictions``, ``read_layers``,
``load_test_split``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qcompress.errors import QCompressError
from qcompress.formats import open_weights

HERE = Path(__file__).resolve().parent
TEST_SPLIT = HERE / "digits_test.npz"
N_LAYERS = 3

# PyTorch nn.Linear: fc1.weight [out, in], fc1.bias; any prefix ("model.fc1.weight") is allowed.
_TORCH_NAME = re.compile(r"(?:^|[./])fc(?P<n>\d+)\.(?P<kind>weight|bias)$")
# Keras 2 h5: model_weights/dense_1/dense_1/kernel:0 [in, out]; dense, dense_1, dense_2 in order.
_KERAS_NAME = re.compile(r"(?:^|/)dense(?:_(?P<n>\d+))?/(?P<kind>kernel|bias)(?::\d+)?$")

Layer = tuple[np.ndarray, np.ndarray]  # (kernel [in, out], bias [out]), float32, C-contiguous


def load_test_split(path: Path = TEST_SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """The held-out inputs (float32 [n, 64], already scaled to [0, 1]) and labels (int64 [n])."""
    with np.load(path, allow_pickle=False) as data:
        return data["x"].astype(np.float32), data["y"].astype(np.int64)


def _layer_slot(name: str) -> tuple[int, str, bool] | None:
    """(layer index, "kernel"/"bias", stored as [out, in]) for a known tensor name, else None."""
    if m := _TORCH_NAME.search(name):
        kind = "kernel" if m["kind"] == "weight" else "bias"
        return int(m["n"]) - 1, kind, True
    if m := _KERAS_NAME.search(name):
        return int(m["n"] or 0), m["kind"], False
    return None


def read_layers(path: str | Path) -> list[Layer]:
    """The three dense layers of a weight file, normalised to float32 [in, out] kernels.

    One canonical layout (rather than ``x @ w.T`` for PyTorch files) keeps the arithmetic
    identical across formats, so equal weights give bit-identical predictions.
    """
    found: dict[tuple[int, str], np.ndarray] = {}
    with open_weights(Path(path)) as reader:
        for info in reader.tensor_infos():
            slot = _layer_slot(info.name)
            if slot is None:
                continue
            index, kind, out_first = slot
            if (index, kind) in found:
                raise ValueError(f"{path}: more than one tensor for layer {index + 1} {kind}")
            value = np.asarray(reader.read(info.name)).astype(np.float32)  # bf16 too
            found[index, kind] = value.T if kind == "kernel" and out_first else value
    expected = [(i, kind) for i in range(N_LAYERS) for kind in ("kernel", "bias")]
    if sorted(found) != sorted(expected):
        missing = [f"layer {i + 1} {kind}" for i, kind in expected if (i, kind) not in found]
        extra = [f"layer {i + 1} {kind}" for i, kind in sorted(found) if i >= N_LAYERS]
        raise ValueError(
            f"{path}: not the 3-layer digits MLP (fc1..fc3 or dense..dense_2): "
            f"missing {missing}, unexpected {extra}"
        )
    return [
        (np.ascontiguousarray(found[i, "kernel"]), np.ascontiguousarray(found[i, "bias"]))
        for i in range(N_LAYERS)
    ]


def forward(layers: Sequence[Layer], x: np.ndarray) -> np.ndarray:
    """Logits of the ReLU MLP (softmax is left out: it does not change the argmax)."""
    h = x.astype(np.float32)
    for i, (kernel, bias) in enumerate(layers):
        if h.shape[1] != kernel.shape[0] or kernel.shape[1] != bias.shape[0]:
            raise ValueError(f"layer {i + 1}: shapes {h.shape} @ {kernel.shape} + {bias.shape}")
        h = h @ kernel + bias
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0, out=h)
    return h


def predictions(path: str | Path, x: np.ndarray | None = None) -> np.ndarray:
    """Predicted class per test sample (or per row of ``x``)."""
    if x is None:
        x, _ = load_test_split()
    return forward(read_layers(path), x).argmax(axis=1)


def accuracy(path: str | Path) -> float:
    """Fraction of the held-out digits the weights in ``path`` classify correctly."""
    x, y = load_test_split()
    return float(np.mean(predictions(path, x) == y))


def main(argv: Sequence[str] | None = None) -> int:
    """Print one accuracy line per file; exit 2 if a file cannot be scored."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python sample_models/score.py FILE [FILE...]", file=sys.stderr)
        return 2
    x, y = load_test_split()
    status = 0
    for p in paths:
        try:
            correct = int(np.sum(predictions(p, x) == y))
        except (QCompressError, OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"{p}: accuracy {correct / len(y):.4f} ({correct}/{len(y)})")
    return status


if __name__ == "__main__":
    sys.exit(main())
