"""Train the bundled sample model and write it in every input format qcompress reads.

Why a real model: quantization error is only meaningful next to a task metric, so the samples
are a small MLP that actually classifies digits (scored by ``score.py``), not random tensors.
Why deterministic bytes: the committed files should only change when the training changes, so
archive dates and HDF5 object timestamps are pinned.

scikit-learn is needed by this script only (``pip install -e .[samples]``); tests and the
package read the committed outputs. Run from anywhere: ``python sample_models/make_samples.py``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
from safetensors.numpy import save
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
SEED = 0
TEST_SIZE = 0.25
HIDDEN = (128, 128)
MIN_ACCURACY = 0.96
MAX_FILE_BYTES = 1_000_000

# Keras layer names in model order; the PyTorch file calls the same layers fc1..fc3.
KERAS_LAYERS = ("dense", "dense_1", "dense_2")
KERAS_ACTIVATIONS = ("relu", "relu", "softmax")
KERAS_VERSION = "2.15.0"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can carry

Layers = list[tuple[np.ndarray, np.ndarray]]  # (kernel [in, out], bias [out]) per layer


def train() -> tuple[Layers, np.ndarray, np.ndarray, float]:
    """Fit the MLP and return its float32 layers, the held-out split and its test accuracy."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    clf = MLPClassifier(
        hidden_layer_sizes=HIDDEN, activation="relu", max_iter=500, random_state=SEED
    )
    clf.fit(x_train, y_train)
    if not np.array_equal(clf.classes_, np.arange(10)):
        raise RuntimeError(f"unexpected classes {clf.classes_}")
    layers = [
        (np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32))
        for w, b in zip(clf.coefs_, clf.intercepts_, strict=True)
    ]
    accuracy = float(clf.score(x_test, y_test))
    return layers, x_test, y_test, accuracy


def torch_tensors(layers: Layers) -> dict[str, np.ndarray]:
    """PyTorch ``nn.Linear`` names and [out, in] layout, plus an int64 tensor to pass through."""
    tensors: dict[str, np.ndarray] = {}
    for i, (kernel, bias) in enumerate(layers, start=1):
        tensors[f"fc{i}.weight"] = np.ascontiguousarray(kernel.T)
        tensors[f"fc{i}.bias"] = bias
    tensors["classes"] = np.arange(10, dtype=np.int64)
    return tensors


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` (stored, not deflated), but with fixed entry dates and attributes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.create_system = 3  # Unix, whatever the host
            info.external_attr = 0o644 << 16
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """``safetensors.numpy.save`` with its ``__metadata__`` keys in sorted order.

    The library lays out the file, but serialises ``__metadata__`` from a hash map whose key order
    changes between runs; re-dumping the same JSON with sorted metadata keys keeps the header's
    length and every offset, and makes the bytes reproducible.
    """
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf8")
    if len(text) > n:
        raise RuntimeError(f"{path.name}: canonical header is longer than the library's")
    path.write_bytes(data[:8] + text.ljust(n, b" ") + data[8 + n :])


def to_bfloat16(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float tensors rounded to bfloat16; everything else unchanged."""
    return {
        name: arr.astype(ml_dtypes.bfloat16) if arr.dtype.kind == "f" else arr
        for name, arr in tensors.items()
    }


def keras_model_config() -> dict[str, object]:
    """The Sequential config tf.keras 2.15 stores in ``model_config`` (legacy serialization)."""
    units = [HIDDEN[0], HIDDEN[1], 10]
    layers: list[dict[str, object]] = [
        {
            "class_name": "InputLayer",
            "config": {
                "batch_input_shape": [None, 64],
                "dtype": "float32",
                "sparse": False,
                "ragged": False,
                "name": "dense_input",
            },
        }
    ]
    for i, (name, act, n) in enumerate(zip(KERAS_LAYERS, KERAS_ACTIVATIONS, units, strict=True)):
        config: dict[str, object] = {"name": name, "trainable": True, "dtype": "float32"}
        if i == 0:
            config["batch_input_shape"] = [None, 64]
        config |= {
            "units": n,
            "activation": act,
            "use_bias": True,
            "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}},
            "kernel_regularizer": None,
            "bias_regularizer": None,
            "activity_regularizer": None,
            "kernel_constraint": None,
            "bias_constraint": None,
        }
        layers.append({"class_name": "Dense", "config": config})
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}


def _new_group(parent: h5py.Group, name: str) -> h5py.Group:
    """``parent.create_group(name)`` without the creation timestamp h5py stores by default."""
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    gid = h5py.h5g.create(parent.id, name.encode(), gcpl=gcpl)
    return h5py.Group(gid)


def _save_subset(group: h5py.Group, weights: list[tuple[str, np.ndarray]]) -> None:
    """Mirror keras ``save_subset_weights_to_hdf5_group``: a ``weight_names`` attr, then data."""
    group.attrs["weight_names"] = np.asarray([name.encode("utf8") for name, _ in weights])
    for name, value in weights:
        layer, leaf = name.split("/")
        sub = group[layer] if layer in group else _new_group(group, layer)
        sub.create_dataset(leaf, data=value, track_times=False)


def write_keras_h5(path: Path, layers: Layers) -> None:
    """The layout of tf.keras ``model.save("x.h5")`` (Keras 2, no optimizer), timestamps off.

    Root attrs ``keras_version``/``backend``/``model_config``; ``model_weights`` holding
    ``layer_names`` and one group per layer (sorted by name) whose ``weight_names`` point at
    ``<layer>/kernel:0`` [in, out] and ``<layer>/bias:0``; an empty ``top_level_model_weights``.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)  # the root group's own timestamps
    fid = h5py.h5f.create(str(path).encode(), h5py.h5f.ACC_TRUNC, fapl=fapl, fcpl=fcpl)
    with h5py.File(fid) as f:
        f.attrs["keras_version"] = KERAS_VERSION
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(keras_model_config()).encode("utf8")
        mw = _new_group(f, "model_weights")
        mw.attrs["layer_names"] = np.asarray([name.encode("utf8") for name in KERAS_LAYERS])
        mw.attrs["backend"] = b"tensorflow"
        mw.attrs["keras_version"] = KERAS_VERSION.encode("utf8")
        by_name = dict(zip(KERAS_LAYERS, layers, strict=True))
        for name in sorted(by_name):
            kernel, bias = by_name[name]
            _save_subset(
                _new_group(mw, name), [(f"{name}/kernel:0", kernel), (f"{name}/bias:0", bias)]
            )
        _save_subset(_new_group(mw, "top_level_model_weights"), [])


def main() -> None:
    """Train, write every sample file, and refuse to leave a bad or oversized sample behind."""
    layers, x_test, y_test, accuracy = train()
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"test accuracy {accuracy:.4f} is below {MIN_ACCURACY}")
    tensors = torch_tensors(layers)
    metadata = {"format": "pt", "source": "sklearn MLPClassifier on load_digits"}
    outputs = {
        "digits_mlp.npz": lambda p: write_npz(p, tensors),
        "digits_mlp.safetensors": lambda p: write_safetensors(p, tensors, metadata),
        "digits_mlp.bf16.safetensors": lambda p: write_safetensors(
            p, to_bfloat16(tensors), metadata
        ),
        "digits_mlp.h5": lambda p: write_keras_h5(p, layers),
        "digits_test.npz": lambda p: write_npz(p, {"x": x_test, "y": y_test}),
    }
    for name, write in outputs.items():
        path = HERE / name
        write(path)
        size = path.stat().st_size
        if size >= MAX_FILE_BYTES:
            raise SystemExit(f"{name} is {size} bytes, over the {MAX_FILE_BYTES} limit")
        print(f"{path.relative_to(HERE.parent)}: {size} bytes")
    print(f"float32 test accuracy {accuracy:.4f} ({len(y_test)} held-out samples)")


if __name__ == "__main__":
    main()
