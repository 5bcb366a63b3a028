"""Keras files as Keras writes them, built here with h5py and zipfile (no Keras needed): the
Keras 3 ``.weights.h5`` layout and ``.keras`` archives, the axis each layer kind gets and the
rule the report names, layers Keras already quantized, optimizer state, ``--drop``, and damaged
archives. tests/test_keras3_frameworks.py does the same with models Keras itself saves."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from samples import assert_clean_error, run

from qcompress.errors import FormatError
from qcompress.formats import open_weights

RNG = np.random.default_rng(15)

# (group, shapes of vars/0.., the layer's own name): one of each layer kind Keras 3 saves.
LAYERS = {
    "layers/dense": ([(64, 32), (32,)], "head"),
    "layers/dense_1": ([(32, 16), (16,)], "dense_1"),
    "layers/conv2d": ([(3, 3, 8, 16), (16,)], "stem"),
    "layers/conv2d_transpose": ([(3, 3, 8, 16), (8,)], "up"),
    "layers/depthwise_conv2d": ([(3, 3, 16, 2), (32,)], "dw"),
    "layers/separable_conv2d": ([(3, 3, 16, 1), (1, 1, 16, 24), (24,)], "sep"),
    "layers/embedding": ([(100, 32)], "tok"),
    "layers/einsum_dense": ([(32, 48)], "ein"),
    "layers/multi_head_attention/query_dense": ([(32, 4, 8), (4, 8)], "query"),
    "layers/multi_head_attention/output_dense": ([(4, 8, 32), (32,)], "attention_output"),
    "layers/lstm/cell": ([(32, 64), (16, 64), (64,)], "lstm_cell"),
    "layers/gru/cell": ([(32, 48), (16, 48), (2, 48)], "gru_cell"),
    "layers/conv1d_transpose": ([(5, 8, 16), (8,)], "up1"),
}

# tensor -> (axis, words the rule must contain)
EXPECTED = {
    "layers/dense/vars/0": (1, "Keras 3 Dense 'head' kernel: axis 1"),
    "layers/dense_1/vars/0": (1, "Keras 3 Dense 'dense_1' kernel: axis 1"),
    "layers/conv2d/vars/0": (3, "Keras 3 Conv2D 'stem' kernel: axis 3"),
    "layers/conv2d_transpose/vars/0": (2, "Keras 3 Conv2DTranspose 'up' kernel: axis 2"),
    "layers/conv1d_transpose/vars/0": (1, "Keras 3 Conv1DTranspose 'up1' kernel: axis 1"),
    "layers/depthwise_conv2d/vars/0": (2, "Keras 3 DepthwiseConv2D 'dw' kernel: axis 2"),
    "layers/separable_conv2d/vars/0": (2, "Keras 3 SeparableConv2D 'sep' kernel: axis 2"),
    "layers/separable_conv2d/vars/1": (3, "Keras 3 SeparableConv2D 'sep' kernel: axis 3"),
    "layers/embedding/vars/0": (0, "Keras 3 Embedding 'tok' kernel: axis 0"),
    "layers/einsum_dense/vars/0": (1, "Keras 3 EinsumDense 'ein' kernel: axis 1"),
    "layers/multi_head_attention/query_dense/vars/0": (2, "equation abc,cde->abde"),
    "layers/multi_head_attention/output_dense/vars/0": (2, "equation abcd,cde->abe"),
    "layers/lstm/cell/vars/0": (1, "Keras 3 LSTMCell 'lstm_cell' kernel: axis 1"),
    "layers/lstm/cell/vars/1": (1, "Keras 3 LSTMCell 'lstm_cell' kernel: axis 1"),
    "layers/gru/cell/vars/0": (1, "Keras 3 GRUCell 'gru_cell' kernel: axis 1"),
    "layers/gru/cell/vars/1": (1, "Keras 3 GRUCell 'gru_cell' kernel: axis 1"),
    # Adam's m and v of the depthwise kernel: its shape, so its axis (not the layout's last)
    "optimizer/vars/2": (2, "optimizer slot like its parameter layers/depthwise_conv2d/vars/0"),
    "optimizer/vars/3": (2, "optimizer slot like its parameter layers/depthwise_conv2d/vars/0"),
}


def write_keras3_h5(path: Path, layers: dict = LAYERS, optimizer: bool = True) -> dict:
    """A ``.weights.h5`` in Keras 3's layout; the arrays written, by name."""
    arrays = {}
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "functional"
        f.create_group("layers/input_layer/vars").attrs["name"] = "input_layer"
        for group, (shapes, name) in layers.items():
            g = f.create_group(f"{group}/vars")
            g.attrs["name"] = name
            for i, shape in enumerate(shapes):
                a = RNG.standard_normal(shape).astype(np.float32)
                g.create_dataset(str(i), data=a)
                arrays[f"{group}/vars/{i}"] = a
        if optimizer:
            o = f.create_group("optimizer/vars")
            o.attrs["name"] = "adam"
            o.create_dataset("0", data=np.int64(7))
            o.create_dataset("1", data=np.float32(1e-3))
            for i in (2, 3):
                a = RNG.standard_normal((3, 3, 16, 2)).astype(np.float32)
                o.create_dataset(str(i), data=a)
                arrays[f"optimizer/vars/{i}"] = a
    return arrays


CONFIG = {
    "module": "keras",
    "class_name": "Functional",
    "config": {
        "name": "functional",
        "layers": [
            {"class_name": "InputLayer", "config": {"name": "input_layer"}},
            {"class_name": "Dense", "config": {"name": "head"}},
            # the kernel "cb" feeds output "c": axis 0, which no layout guess would give
            {"class_name": "EinsumDense", "config": {"name": "ein", "equation": "ab,cb->ac"}},
        ],
    },
}


def write_archive(path: Path, tmp: Path, *, config: object = CONFIG, extra: bool = True) -> dict:
    """A ``.keras`` zip with the entries Keras writes (and an asset); its entries' bytes."""
    weights = tmp / "inner.weights.h5"
    write_keras3_h5(
        weights,
        {"layers/dense": ([(64, 32), (32,)], "head"), "layers/einsum_dense": ([(48, 32)], "ein")},
        optimizer=False,
    )
    entries = {
        "metadata.json": b'{"keras_version": "3.15.1", "date_saved": "2026-12-01@23:00:00"}',
        "config.json": json.dumps(config).encode(),
        "model.weights.h5": weights.read_bytes(),
    }
    if extra:
        entries["assets/vocab.bin"] = bytes(range(256)) * 3  # not UTF-8: kept as base64
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            method = zipfile.ZIP_DEFLATED if name.startswith("assets/") else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(name, (2020, 5, 4, 3, 2, 0)), data, method)
    return entries


def report_of(path: Path) -> dict:
    return json.loads(path.read_text())


# --- axes --------------------------------------------------------------------------------


def test_keras3_weights_h5_reader_names_every_layer_kinds_axis(tmp_path: Path) -> None:
    path = tmp_path / "m.weights.h5"
    write_keras3_h5(path)
    with open_weights(path) as reader:
        hints = reader.axis_hints()
        assert reader.format == "h5"
        assert reader.optimizer_state() == {f"optimizer/vars/{i}" for i in range(4)}
    for name, (axis, rule) in EXPECTED.items():
        assert hints[name].axis == axis, name
        assert rule in hints[name].rule, (name, hints[name].rule)
    assert not any(n.endswith(("vars/1", "vars/2")) and n in hints for n in ["layers/dense/vars/1"])


def test_report_names_the_axis_rule_and_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "m.weights.h5"
    write_keras3_h5(path)
    result = run("quantize", path, "--min-elements", "1", "--quiet")
    assert result.exit_code == 0, result.output
    tensors = {t["name"]: t for t in report_of(tmp_path / "m.weights.qc.json")["tensors"]}
    for name, (axis, rule) in EXPECTED.items():
        assert tensors[name]["axis"] == axis, name
        assert rule in tensors[name]["axis_rule"]
    result = run("quantize", path, "--min-elements", "1", "--axis", "0", "--quiet", "--force")
    tensors = {t["name"]: t for t in report_of(tmp_path / "m.weights.qc.json")["tensors"]}
    assert tensors["layers/depthwise_conv2d/vars/0"]["axis"] == 0
    assert tensors["layers/depthwise_conv2d/vars/0"]["axis_rule"] == "axis 0 set by --axis"


def test_archive_config_gives_the_einsum_equation(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    write_archive(path, tmp_path)
    with open_weights(path) as reader:
        assert reader.format == "keras"
        hints = reader.axis_hints()
    assert hints["layers/einsum_dense/vars/0"].axis == 0
    assert "equation ab,cb->ac" in hints["layers/einsum_dense/vars/0"].rule
    assert hints["layers/dense/vars/0"].rule.startswith("Keras 3 Dense 'head'")


def write_keras2_h5(path: Path) -> None:
    """A Keras 2 full-model save: model_config, model_weights/, optimizer_weights/."""
    config = {
        "class_name": "Sequential",
        "config": {
            "layers": [
                {"class_name": "Conv2DTranspose", "config": {"name": "up"}},
                {"class_name": "Embedding", "config": {"name": "tok"}},
                {"class_name": "DepthwiseConv2D", "config": {"name": "dw"}},
            ]
        },
    }
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        w = f.create_group("model_weights")
        w.create_dataset("up/up/kernel:0", data=np.ones((3, 3, 8, 16), np.float32))
        w.create_dataset("tok/tok/embeddings:0", data=np.ones((100, 32), np.float32))
        w.create_dataset("dw/dw/depthwise_kernel:0", data=np.ones((3, 3, 16, 2), np.float32))
        o = f.create_group("optimizer_weights")
        o.create_dataset("Adam/iter:0", data=np.int64(3))
        o.create_dataset("Adam/dw/depthwise_kernel/m:0", data=np.ones((3, 3, 16, 2), np.float32))
        o.create_dataset("Adam/tok/embeddings/v:0", data=np.ones((100, 32), np.float32))


def test_keras2_model_config_gives_the_axes(tmp_path: Path) -> None:
    path = tmp_path / "k2.h5"
    write_keras2_h5(path)
    with open_weights(path) as reader:
        hints = reader.axis_hints()
        optimizer = reader.optimizer_state()
    assert hints["model_weights/up/up/kernel:0"].axis == 2
    assert "Keras 2 Conv2DTranspose 'up' kernel" in hints["model_weights/up/up/kernel:0"].rule
    assert hints["model_weights/tok/tok/embeddings:0"].axis == 0
    assert hints["model_weights/dw/dw/depthwise_kernel:0"].axis == 2
    assert hints["optimizer_weights/Adam/dw/depthwise_kernel/m:0"].axis == 2
    assert hints["optimizer_weights/Adam/tok/embeddings/v:0"].axis == 0
    assert len(optimizer) == 3


# --- layers Keras already quantized ------------------------------------------------------


def test_int8_and_int4_layers_pass_through_untouched(tmp_path: Path) -> None:
    path = tmp_path / "q.weights.h5"
    scale = RNG.random((1, 1, 64, 32)).astype(np.float32)  # 4-D, big: would be quantized
    with h5py.File(path, "w") as f:
        f.create_group("vars")
        g = f.create_group("layers/einsum_dense/vars")
        g.create_dataset("0", data=RNG.integers(-127, 127, (32, 64, 32), dtype=np.int8))
        g.create_dataset("1", data=scale)
        d = f.create_group("layers/dense/vars")  # int4: packed two per int8, plus a zero
        d.create_dataset("0", data=RNG.integers(-128, 127, (32, 64), dtype=np.int8))
        d.create_dataset("1", data=RNG.random((64,)).astype(np.float32))
        d.create_dataset("2", data=RNG.random((64, 64)).astype(np.float32))
    result = run("quantize", path, "--min-elements", "1", "--quiet")
    assert result.exit_code == 0, result.output
    tensors = {t["name"]: t for t in report_of(tmp_path / "q.weights.qc.json")["tensors"]}
    assert all(t["action"] != "quantized" for t in tensors.values())
    assert "already quantized by Keras" in tensors["layers/einsum_dense/vars/1"]["reason"]
    assert "already quantized by Keras" in tensors["layers/dense/vars/2"]["reason"]
    out = tmp_path / "back.weights.h5"
    assert run("dequantize", tmp_path / "q.weights.qc.safetensors", "-o", out).exit_code == 0
    with h5py.File(out) as f, h5py.File(path) as g:
        for name in ("layers/einsum_dense/vars/1", "layers/dense/vars/0", "layers/dense/vars/2"):
            assert f[name][()].tobytes() == g[name][()].tobytes()


# --- .keras archives ---------------------------------------------------------------------


def test_archive_round_trip_keeps_other_entries_byte_for_byte(tmp_path: Path) -> None:
    src = tmp_path / "model.keras"
    entries = write_archive(src, tmp_path)
    assert run("quantize", src, "--min-elements", "1", "--quiet").exit_code == 0
    out = tmp_path / "out.keras"
    result = run("dequantize", tmp_path / "model.qc.safetensors", "-o", out)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as zf, zipfile.ZipFile(src) as orig:
        assert zf.namelist() == list(entries)
        for info in zf.infolist():
            if info.filename != "model.weights.h5":
                assert zf.read(info) == entries[info.filename]
                old = orig.getinfo(info.filename)
                assert (info.date_time, info.compress_type) == (old.date_time, old.compress_type)
        weights = tmp_path / "w.h5"
        weights.write_bytes(zf.read("model.weights.h5"))
    with h5py.File(weights) as f:
        assert f["layers/dense/vars"].attrs["name"] == "head"
        kernel = f["layers/dense/vars/0"][()]
    with h5py.File(tmp_path / "inner.weights.h5") as f:
        original = f["layers/dense/vars/0"][()]
    assert kernel.shape == original.shape
    assert np.abs(kernel - original).max() < 0.05  # 8-bit per channel
    # the weights alone, for model.load_weights: groups and their name attributes kept
    alone = tmp_path / "alone.weights.h5"
    assert run("dequantize", tmp_path / "model.qc.safetensors", "-o", alone).exit_code == 0
    with h5py.File(alone) as f:
        assert f["layers/einsum_dense/vars"].attrs["name"] == "ein"
        assert "layers/input_layer/vars" in f


def test_archive_detected_by_content_and_npz_named_keras_is_npz(tmp_path: Path) -> None:
    renamed = tmp_path / "model.bin"
    write_archive(renamed, tmp_path)
    with open_weights(renamed) as reader:
        assert reader.format == "keras"
    npz = tmp_path / "weights.keras"
    with open(npz, "wb") as fh:
        np.savez(fh, w=np.ones((2, 2), np.float32))
    with open_weights(npz) as reader:
        assert reader.format == "npz"


def test_archive_folder_reads_and_writes_a_keras_zip(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    folder.mkdir()
    zipped = tmp_path / "model.keras"
    entries = write_archive(zipped, tmp_path, extra=False)
    for name, data in entries.items():
        (folder / name).write_bytes(data)
    result = run("quantize", folder, "-o", tmp_path / "f.qc.safetensors", "--quiet")
    assert result.exit_code == 0, result.output
    out = tmp_path / "f.keras"
    assert run("dequantize", tmp_path / "f.qc.safetensors", "-o", out).exit_code == 0
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(entries)
        assert zf.read("config.json") == entries["config.json"]


def test_keras_output_needs_a_keras_source(tmp_path: Path) -> None:
    src = tmp_path / "m.npz"
    np.savez(src, w=np.ones((4, 4), np.float32))
    assert run("quantize", src, "--quiet").exit_code == 0
    result = run("dequantize", tmp_path / "m.qc.safetensors", "-o", tmp_path / "m.keras")
    assert_clean_error(result, "only an artifact made from a .keras archive")
    assert not (tmp_path / "m.keras").exists()


# --- damaged archives --------------------------------------------------------------------


def test_truncated_archive_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    write_archive(path, tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_clean_error(run("inspect", path), str(path), "truncated or corrupt")


@pytest.mark.parametrize(
    ("drop", "message"),
    [("config.json", "has no config.json"), ("model.weights.h5", "has no model.weights.h5")],
)
def test_archive_missing_entries(tmp_path: Path, drop: str, message: str) -> None:
    whole = tmp_path / "whole.keras"
    entries = write_archive(whole, tmp_path)
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            if name != drop:
                zf.writestr(name, data)
    assert_clean_error(run("inspect", path), str(path), message)


def zip_of(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_archive_bad_config_and_bad_weights(tmp_path: Path) -> None:
    good = {"config.json": b"{}", "metadata.json": b"{}"}
    hdf5_garbage = b"\x89HDF\r\n\x1a\n" + b"\0" * 100
    path = zip_of(tmp_path / "a.keras", {**good, "config.json": b"{not", "model.weights.h5": b""})
    assert_clean_error(run("inspect", path), str(path), "config.json is not valid JSON")
    path = zip_of(tmp_path / "b.keras", {**good, "model.weights.h5": hdf5_garbage})
    assert_clean_error(run("inspect", path), str(path), "entry 'model.weights.h5': ")
    with pytest.raises(FormatError, match=r"b\.keras: entry 'model\.weights\.h5': "):
        open_weights(path)


# --- optimizer state and --drop ----------------------------------------------------------


def test_drop_optimizer_keras3_and_keras2(tmp_path: Path) -> None:
    k3 = tmp_path / "m.weights.h5"
    write_keras3_h5(k3)
    result = run("quantize", k3, "--drop-optimizer")
    assert result.exit_code == 0, result.output
    assert "optimizer state: 4 tensors" in result.stderr and "dropped" in result.stderr
    report = report_of(tmp_path / "m.weights.qc.json")
    assert {d["name"] for d in report["dropped"]} == {f"optimizer/vars/{i}" for i in range(4)}
    assert report["optimizer_state"]["dropped_tensors"] == 4
    assert report["options"]["drop"] == ["optimizer_weights/*", "optimizer/*"]
    assert not any(t["name"].startswith("optimizer/") for t in report["tensors"])
    out = tmp_path / "back.weights.h5"
    assert run("dequantize", tmp_path / "m.weights.qc.safetensors", "-o", out).exit_code == 0
    with h5py.File(out) as f:
        assert "optimizer/vars/2" not in f and "layers/dense/vars/0" in f
    k2 = tmp_path / "k2.h5"
    write_keras2_h5(k2)
    assert run("quantize", k2, "--drop-optimizer", "--quiet").exit_code == 0
    report = report_of(tmp_path / "k2.qc.json")
    assert len(report["dropped"]) == 3
    assert all(d["matched"] == "optimizer_weights/*" for d in report["dropped"])


def test_optimizer_state_is_summarised_when_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.weights.h5"
    write_keras3_h5(path)
    result = run("quantize", path)
    assert result.exit_code == 0
    assert "kept (--drop-optimizer leaves it out)" in result.stderr
    state = report_of(tmp_path / "m.weights.qc.json")["optimizer_state"]
    total = sum(a.nbytes for a in write_keras3_h5(tmp_path / "again.h5").values())
    assert state["tensors"] == 4 and state["dropped_tensors"] == 0
    assert state["bytes"] == 2 * 3 * 3 * 16 * 2 * 4 + 8 + 4
    assert 0 < state["fraction"] < state["bytes"] / (total * 0.9)


def test_drop_glob_warns_when_it_matches_nothing_and_refuses_dropping_all(tmp_path: Path) -> None:
    path = tmp_path / "m.weights.h5"
    write_keras3_h5(path)
    result = run("quantize", path, "--drop", "layers/lstm/*", "--drop", "nope*", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "--drop 'nope*' matches no tensor" in report["warnings"]
    assert {d["matched"] for d in report["dropped"]} == {"layers/lstm/*"}
    assert_clean_error(run("quantize", path, "--drop", "*", "--force"), "--drop leaves no tensor")


def test_budget_leaves_optimizer_state_float(tmp_path: Path) -> None:
    path = tmp_path / "m.weights.h5"
    write_keras3_h5(path)
    result = run("quantize", path, "--target-bpw", "4", "--min-elements", "1", "--json")
    assert result.exit_code == 0, result.output
    tensors = {t["name"]: t for t in json.loads(result.stdout)["tensors"]}
    slot = tensors["optimizer/vars/2"]
    assert slot["action"] == "kept" and "outside the --target-bpw 4 budget" in slot["reason"]
    assert tensors["layers/depthwise_conv2d/vars/0"]["action"] == "quantized"


# --- sharded save_weights ----------------------------------------------------------------


def write_sharded(tmp: Path) -> Path:
    """Two shards in Keras 3's layout and their ``.weights.json`` index."""
    a = write_keras3_h5(tmp / "m_00000.weights.h5", {"layers/dense": LAYERS["layers/dense"]})
    b = write_keras3_h5(
        tmp / "m_00001.weights.h5",
        {"layers/depthwise_conv2d": LAYERS["layers/depthwise_conv2d"]},
        optimizer=False,
    )
    index = {
        "metadata": {"total_size": 1.0},
        "weight_map": {
            "/layers/dense/vars": ["m_00000.weights.h5"],
            "/optimizer/vars": ["m_00000.weights.h5"],
            "/layers/depthwise_conv2d/vars": ["m_00001.weights.h5"],
        },
    }
    path = tmp / "m.weights.json"
    path.write_text(json.dumps(index))
    assert a and b
    return path


def test_sharded_weights_read_as_one_file_and_rebuild_unsharded(tmp_path: Path) -> None:
    path = write_sharded(tmp_path)
    with open_weights(path) as reader:
        names = [i.name for i in reader.tensor_infos()]
        assert reader.axis_hints()["layers/depthwise_conv2d/vars/0"].axis == 2
        assert "optimizer/vars/2" in reader.optimizer_state()
    assert "layers/dense/vars/0" in names and "layers/depthwise_conv2d/vars/1" in names
    assert run("quantize", path, "--quiet").exit_code == 0
    out = tmp_path / "one.weights.h5"
    assert run("dequantize", tmp_path / "m.weights.qc.safetensors", "-o", out).exit_code == 0
    with h5py.File(out) as f:
        assert f["layers/depthwise_conv2d/vars"].attrs["name"] == "dw"
        assert f["layers/dense/vars/0"].shape == (64, 32)


@pytest.mark.parametrize(
    ("shard", "message"),
    [("gone_00000.weights.h5", "is missing"), ("../m_00000.weights.h5", "plain file name")],
)
def test_sharded_index_pointing_wrong_is_refused(tmp_path: Path, shard: str, message: str) -> None:
    path = write_sharded(tmp_path)
    doc = json.loads(path.read_text())
    doc["weight_map"]["/layers/dense/vars"] = [shard]
    path.write_text(json.dumps(doc))
    assert_clean_error(run("inspect", path), str(path), message)
