"""Models Keras 3 itself builds and saves (``.keras``, ``.weights.h5``, its legacy Keras 2 style
``.h5``), run through qcompress and loaded back by Keras: outputs compared, the axis of every
layer kind asserted from the report, Keras-quantized layers left as they were, optimizer state
dropped. Marked ``frameworks`` (needs keras; the torch backend). tf_keras is not installed, so
the Keras 2 layout is the one Keras 3 writes for ``model.save("m.h5")``."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from samples import run

pytestmark = pytest.mark.frameworks
os.environ.setdefault("KERAS_BACKEND", "torch")


@pytest.fixture(scope="module")
def keras() -> Any:
    return pytest.importorskip("keras")


def cnn(keras: Any) -> Any:
    keras.backend.clear_session()  # layer names count from 0 again
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, name="stem")(inp)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(x)
    x = keras.layers.Conv2DTranspose(16, 3)(x)
    x = keras.layers.SeparableConv2D(16, 3)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(40, name="head")(x)
    model = keras.Model(inp, out)
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.random((8, 12, 12, 3)), rng.random((8, 40)), verbose=0, epochs=1)
    return model


def sequence_model(keras: Any) -> Any:
    keras.backend.clear_session()
    inp = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(64, 32)(inp)
    x = keras.layers.MultiHeadAttention(4, 8)(x, x)
    x = keras.layers.LSTM(32, return_sequences=True)(x)
    x = keras.layers.GRU(32, return_sequences=True)(x)
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 48))(x)
    out = keras.layers.Dense(8)(x)
    return keras.Model(inp, out)


CNN_AXES = {  # tensor -> axis: Conv last, depthwise 2, transpose -2, separable 2 then last
    "layers/conv2d/vars/0": 3,
    "layers/depthwise_conv2d/vars/0": 2,
    "layers/conv2d_transpose/vars/0": 2,
    "layers/separable_conv2d/vars/0": 2,
    "layers/separable_conv2d/vars/1": 3,
    "layers/dense/vars/0": 1,
}
SEQUENCE_AXES = {
    "layers/embedding/vars/0": 0,
    "layers/multi_head_attention/query_dense/vars/0": 2,
    "layers/multi_head_attention/key_dense/vars/0": 2,
    "layers/multi_head_attention/value_dense/vars/0": 2,
    "layers/multi_head_attention/output_dense/vars/0": 2,
    "layers/lstm/cell/vars/0": 1,
    "layers/lstm/cell/vars/1": 1,
    "layers/gru/cell/vars/0": 1,
    "layers/gru/cell/vars/1": 1,
    "layers/einsum_dense/vars/0": 1,
    "layers/dense/vars/0": 1,
}


def quantize(path: Path, *extra: object) -> dict[str, Any]:
    result = run("quantize", path, "--min-elements", "1", "--json", "--force", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def close(a: np.ndarray, b: np.ndarray, rel: float) -> bool:
    return float(np.abs(a - b).max()) <= rel * float(np.abs(a).max())


def test_keras_archive_round_trip_and_axes(keras: Any, tmp_path: Path) -> None:
    model = cnn(keras)
    src = tmp_path / "cnn.keras"
    model.save(src)
    report = quantize(src)
    tensors = {t["name"]: t for t in report["tensors"]}
    for name, axis in CNN_AXES.items():
        assert tensors[name]["axis"] == axis, (name, tensors[name]["axis_rule"])
        assert tensors[name]["axis_rule"].startswith("Keras 3 ")
    # Adam's slots of the depthwise kernel take the kernel's axis
    slots = [t for t in report["tensors"] if t["name"].startswith("optimizer/")]
    dw_shape = tensors["layers/depthwise_conv2d/vars/0"]["shape"]
    assert [t["axis"] for t in slots if t["shape"] == dw_shape] == [2, 2]
    assert report["optimizer_state"]["fraction"] > 0.5
    out = tmp_path / "back.keras"
    assert run("dequantize", tmp_path / "cnn.qc.safetensors", "-o", out).exit_code == 0
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(out) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if name != "model.weights.h5":
                assert a.read(name) == b.read(name)
    back = keras.saving.load_model(out)
    x = np.random.default_rng(1).random((4, 12, 12, 3)).astype("float32")
    assert close(model.predict(x, verbose=0), back.predict(x, verbose=0), 0.05)


def test_weights_h5_and_sequence_layers(keras: Any, tmp_path: Path) -> None:
    model = sequence_model(keras)
    src = tmp_path / "seq.weights.h5"
    model.save_weights(src)
    tensors = {t["name"]: t for t in quantize(src)["tensors"]}
    for name, axis in SEQUENCE_AXES.items():
        assert tensors[name]["axis"] == axis, (name, tensors[name]["axis_rule"])
    out = tmp_path / "back.weights.h5"
    assert run("dequantize", tmp_path / "seq.weights.qc.safetensors", "-o", out).exit_code == 0
    fresh = sequence_model(keras)
    fresh.load_weights(out)
    x = np.random.default_rng(2).integers(0, 64, (3, 6)).astype("int32")
    assert close(model.predict(x, verbose=0), fresh.predict(x, verbose=0), 0.05)


def test_legacy_h5_keras2_layout_axes_and_drop_optimizer(keras: Any, tmp_path: Path) -> None:
    model = cnn(keras)
    src = tmp_path / "cnn.h5"
    model.save(src)
    report = quantize(src)
    tensors = {t["name"]: t for t in report["tensors"]}
    assert tensors["model_weights/depthwise_conv2d/depthwise_conv2d/kernel"]["axis"] == 2
    assert tensors["model_weights/conv2d_transpose/conv2d_transpose/kernel"]["axis"] == 2
    assert tensors["model_weights/head/head/kernel"]["axis"] == 1
    dropped = quantize(src, "--drop-optimizer")
    assert dropped["optimizer_state"]["dropped_tensors"] == dropped["optimizer_state"]["tensors"]
    assert all(d["name"].startswith("optimizer_weights/") for d in dropped["dropped"])
    out = tmp_path / "back.h5"
    assert run("dequantize", tmp_path / "cnn.qc.safetensors", "-o", out).exit_code == 0
    back = keras.saving.load_model(out, compile=False)
    x = np.random.default_rng(3).random((2, 12, 12, 3)).astype("float32")
    assert close(model.predict(x, verbose=0), back.predict(x, verbose=0), 0.05)


def test_drop_optimizer_archive_still_loads(keras: Any, tmp_path: Path) -> None:
    model = cnn(keras)
    src = tmp_path / "cnn.keras"
    model.save(src)
    report = quantize(src, "--drop-optimizer")
    assert report["optimizer_state"]["dropped_tensors"] > 0
    out = tmp_path / "slim.keras"
    assert run("dequantize", tmp_path / "cnn.qc.safetensors", "-o", out).exit_code == 0
    back = keras.saving.load_model(out)
    x = np.random.default_rng(4).random((2, 12, 12, 3)).astype("float32")
    assert close(model.predict(x, verbose=0), back.predict(x, verbose=0), 0.05)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_keras_quantized_layers_pass_through(keras: Any, tmp_path: Path, mode: str) -> None:
    # no MultiHeadAttention: Keras 3.15 cannot load its own quantized one back
    keras.backend.clear_session()
    inp = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(64, 32)(inp)
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 48))(x)
    model = keras.Model(inp, keras.layers.Dense(8)(x))
    model.quantize(mode)
    src = tmp_path / "q.keras"
    model.save(src)
    report = quantize(src)
    kinds = ("dense", "einsum_dense", "embedding")
    for t in report["tensors"]:
        if t["name"].split("/")[1] in kinds:
            assert t["action"] != "quantized", t["name"]
            assert "already quantized by Keras" in t["reason"], t["name"]
    out = tmp_path / "back.keras"
    assert run("dequantize", tmp_path / "q.qc.safetensors", "-o", out).exit_code == 0
    back = keras.saving.load_model(out)
    x = np.random.default_rng(5).integers(0, 64, (3, 6)).astype("int32")
    assert close(model.predict(x, verbose=0), back.predict(x, verbose=0), 0.05)
