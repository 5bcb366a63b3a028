"""ONNX models (qcompress.formats.onnx): detection by content, the tensors listed, the axis each
consuming op gives, rebuilding into the source graph (inline and external data), and clean
one-line errors for damaged models. Needs only the ``onnx`` package (in ``.[dev]``); running the
models with onnxruntime is in test_onnx_runtime.py (``frameworks``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_factory import EXPECTED_AXES, cnn_model, save
from samples import assert_clean_error, run

from qcompress.formats import detect_format, open_weights

FLOATS = list(EXPECTED_AXES)  # every 2-D+ float tensor of cnn_model


def quantize(model: Path, *args: object) -> tuple[Path, dict]:
    art = model.with_name(model.stem + ".qc.safetensors")
    result = run("quantize", model, "-o", art, "--quiet", "--min-elements", 1, *args)
    assert result.exit_code == 0, result.output
    return art, json.loads(model.with_name(model.stem + ".qc.json").read_text())


def test_detected_by_content_not_name(tmp_path: Path) -> None:
    path = save(cnn_model(), tmp_path / "weights.bin")
    assert detect_format(path) == "onnx"
    with open_weights(path) as reader:
        names = [i.name for i in reader.tensor_infos()]
    # initializers in graph order, then the Constant node's output name
    assert names == [
        "conv.weight",
        "conv.bias",
        "deconv.weight",
        "shape",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "mm.weight",
        "shared.weight",
        "unused.weight",
        "const.weight",
    ]


def test_inspect_lists_the_tensors_of_an_external_data_model(tmp_path: Path) -> None:
    path = save(cnn_model(), tmp_path / "m.onnx", external="weights.bin")
    result = run("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["format"] == "onnx"
    shapes = {t["name"]: t["shape"] for t in doc["tensors"]}
    assert shapes["fc1.weight"] == [16, 1024] and shapes["const.weight"] == [10, 10]


@pytest.mark.parametrize(
    "head",
    [b"\x08\x00" + b"\x12" * 14, b"\x08\x08\x99" + b"\x00" * 13, b"\x09\x08\x12\x01a" + b"\0" * 11],
)
def test_other_bytes_are_not_onnx(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "x.onnx"
    path.write_bytes(head)
    assert_clean_error(run("inspect", path), "not a weight file", "ONNX")


def test_axis_follows_the_consuming_op(tmp_path: Path) -> None:
    path = save(cnn_model(), tmp_path / "m.onnx")
    with open_weights(path) as reader:
        hints = reader.axis_hints()
    assert {n: (hints[n].axis, hints[n].rule) for n in EXPECTED_AXES} == EXPECTED_AXES
    _, report = quantize(path)
    got = {t["name"]: (t["axis"], t["axis_rule"]) for t in report["tensors"]}
    assert {n: got[n] for n in EXPECTED_AXES} == EXPECTED_AXES
    kinds = {t["name"]: t["action"] for t in report["tensors"]}
    assert kinds["shape"] == "passthrough" and kinds["conv.bias"] == "kept"


def test_explicit_axis_beats_the_op(tmp_path: Path) -> None:
    _, report = quantize(save(cnn_model(), tmp_path / "m.onnx"), "--axis", 0)
    mm = next(t for t in report["tensors"] if t["name"] == "mm.weight")
    assert (mm["axis"], mm["axis_rule"]) == (0, "axis 0 set by --axis")


def test_gather_table_and_1d_matmul(tmp_path: Path) -> None:
    table = numpy_helper.from_array(np.ones((6, 4), np.float32), "emb")
    vec = numpy_helper.from_array(np.ones((4,), np.float32), "vec")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0),
            helper.make_node("MatMul", ["e", "vec"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [table, vec],
    )
    path = tmp_path / "g.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    with open_weights(path) as reader:
        hints = reader.axis_hints()
    assert (hints["emb"].axis, hints["emb"].rule) == (
        0,
        "ONNX Gather data (a lookup table): one scale per entry, axis 0",
    )
    assert hints["vec"].rule == "ONNX: used by MatMul input 1, no channel rule: default axis 0"


def test_kept_round_trip_is_the_source_byte_for_byte(tmp_path: Path) -> None:
    """Everything but the tensors' data comes from the source: with every tensor kept, the
    rebuilt model is the source model's own serialization, graph, opsets and metadata included."""
    model = cnn_model()
    path = save(model, tmp_path / "m.onnx")
    art, _ = quantize(path, "--keep", "*")
    out = tmp_path / "r.onnx"
    assert run("dequantize", art, "-o", out).exit_code == 0
    assert out.read_bytes() == path.read_bytes()
    assert run("compare", path, out).exit_code == 0


def test_quantized_round_trip_rewrites_only_the_tensors(tmp_path: Path) -> None:
    path = save(cnn_model(), tmp_path / "m.onnx")
    art, report = quantize(path, "--bits", 4)
    out = tmp_path / "r.onnx"
    assert run("dequantize", art, "-o", out).exit_code == 0
    src, got = onnx.load(str(path)), onnx.load(str(out))
    onnx.checker.check_model(got)
    assert got.graph.node[:8] == src.graph.node[:8]  # the nodes before the Constant: unchanged
    assert (got.opset_import, got.metadata_props, got.producer_name) == (
        src.opset_import,
        src.metadata_props,
        src.producer_name,
    )
    max_err = {t["name"]: t["max_abs_error"] for t in report["tensors"]}
    with open_weights(path) as a, open_weights(out) as b:
        for info in a.tensor_infos():
            x, y = a.read(info.name), b.read(info.name)
            assert x.dtype == y.dtype and x.shape == y.shape
            err = float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
            assert err == pytest.approx(max_err[info.name], rel=1e-6, abs=1e-12), info.name
            if info.name in FLOATS:
                assert err > 0, info.name  # really quantized
            if info.name == "shape":
                assert np.array_equal(x, y)


def test_external_data_round_trip(tmp_path: Path) -> None:
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    path = save(cnn_model(), src_dir / "m.onnx", external="weights.bin")
    source_side = (src_dir / "weights.bin").read_bytes()
    with open_weights(path) as reader:
        assert reader.read("fc1.weight").shape == (16, 1024)
    art, _ = quantize(path)
    out = tmp_path / "r.onnx"
    result = run("dequantize", art, "-o", out)
    assert result.exit_code == 0, result.output
    assert (src_dir / "weights.bin").read_bytes() == source_side  # never written over
    rebuilt = onnx.load(str(out), load_external_data=False)
    external = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in rebuilt.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }
    # the tensors that were external in the source, now all in r.onnx.data
    src = onnx.load(str(path), load_external_data=False)
    was = {t.name for t in src.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert set(external) == was and "fc1.weight" in was
    assert {e["location"] for e in external.values()} == {"r.onnx.data"}
    big = int(external["fc1.weight"]["offset"])
    assert big % 64 == 0
    full = onnx.load(str(out))  # onnx's own loader resolves the side file
    onnx.checker.check_model(full)
    with open_weights(path) as a, open_weights(out) as b:
        for name in was:
            assert np.max(np.abs(a.read(name) - b.read(name))) < 0.05, name


def test_external_side_file_is_never_overwritten_without_force(tmp_path: Path) -> None:
    path = save(cnn_model(), tmp_path / "m.onnx", external="m.onnx.data")
    art, _ = quantize(path)
    out = tmp_path / "r.onnx"
    (tmp_path / "r.onnx.data").write_bytes(b"keep me")
    assert_clean_error(run("dequantize", art, "-o", out), "r.onnx.data", "already exists")
    assert not out.exists() and (tmp_path / "r.onnx.data").read_bytes() == b"keep me"
    assert run("dequantize", art, "-o", out, "--force").exit_code == 0
    assert onnx.load(str(out)).graph.initializer[0].name == "conv.weight"


def test_float16_and_bfloat16_keep_their_dtype(tmp_path: Path) -> None:
    model = cnn_model(dtype="float16")
    bf = np.arange(32, dtype=np.float32).reshape(4, 8).astype(ml_dtypes.bfloat16)
    t = helper.make_tensor("bf", TensorProto.BFLOAT16, [4, 8], bf.view(np.uint16).tobytes(), True)
    model.graph.initializer.append(t)
    path = save(model, tmp_path / "h.onnx")
    art, _ = quantize(path)
    out = tmp_path / "r.onnx"
    assert run("dequantize", art, "-o", out).exit_code == 0
    with open_weights(out) as reader:
        dtypes = {i.name: i.dtype for i in reader.tensor_infos()}
        assert np.abs(reader.read("bf").astype(np.float32) - bf.astype(np.float32)).max() < 0.2
    assert dtypes["conv.weight"] == "float16" and dtypes["bf"] == "bfloat16"
    result = run("dequantize", art, "-o", tmp_path / "f.onnx", "--dtype", "float32")
    assert_clean_error(result, "f.onnx", "'conv.weight'", "float16", "--dtype original")


def test_typed_fields_read_like_raw_data(tmp_path: Path) -> None:
    """Values in float_data / int32_data / int64_data (helper.make_tensor without raw=True)."""
    vals = {
        "f32": (TensorProto.FLOAT, np.float32, [1.5, -2.0, 3.25, 0.0]),
        "f16": (TensorProto.FLOAT16, np.float16, [1.5, -2.0, 3.25, 65504.0]),
        "f64": (TensorProto.DOUBLE, np.float64, [1e-300, -2.0, 3.25, 0.0]),
        "i64": (TensorProto.INT64, np.int64, [1, -(2**40), 3, 0]),
        "i8": (TensorProto.INT8, np.int8, [1, -128, 127, 0]),
        "b": (TensorProto.BOOL, np.bool_, [True, False, True, True]),
    }
    inits = []
    for name, (dt, _, v) in vals.items():
        t = helper.make_tensor(name, dt, [2, 2], v)  # float16 goes to int32_data as bits
        assert not t.HasField("raw_data")
        inits.append(t)
    graph = helper.make_graph([], "t", [], [], inits)
    path = tmp_path / "t.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    with open_weights(path) as reader:
        for name, (_, npdt, v) in vals.items():
            assert np.array_equal(reader.read(name), np.array(v, dtype=npdt).reshape(2, 2)), name


def test_strings_and_subgraphs_stay_in_the_graph(tmp_path: Path) -> None:
    text = helper.make_tensor("words", TensorProto.STRING, [2], [b"a", b"b"])
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph([], "t", [], [], [text, weight])
    path = tmp_path / "s.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    with open_weights(path) as reader:
        assert [i.name for i in reader.tensor_infos()] == ["w"]
    art, _ = quantize(path, "--keep", "*")
    assert run("dequantize", art, "-o", tmp_path / "r.onnx").exit_code == 0
    assert onnx.load(str(tmp_path / "r.onnx")).graph.initializer[0] == text


def test_onnx_output_from_another_format_holds_the_weights_only(tmp_path: Path) -> None:
    npz = tmp_path / "w.npz"
    np.savez(npz, w=np.ones((64, 64), np.float32), ids=np.arange(3))
    assert run("quantize", npz, "--quiet").exit_code == 0
    result = run("dequantize", tmp_path / "w.qc.safetensors", "-o", tmp_path / "w.onnx")
    assert result.exit_code == 0, result.output
    assert "wrote the weights only (initializers, no nodes)" in result.stderr
    model = onnx.load(str(tmp_path / "w.onnx"))
    onnx.checker.check_model(model)
    assert len(model.graph.node) == 0
    assert [t.name for t in model.graph.initializer] == ["w", "ids"]
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[1]), np.arange(3))


def test_dropped_tensors_leave_the_graph_only_if_unused(tmp_path: Path) -> None:
    path = save(cnn_model(), tmp_path / "m.onnx")
    art, report = quantize(path, "--drop", "unused.weight")
    assert [d["name"] for d in report["dropped"]] == ["unused.weight"]
    out = tmp_path / "r.onnx"
    assert run("dequantize", art, "-o", out).exit_code == 0
    rebuilt = onnx.load(str(out))
    onnx.checker.check_model(rebuilt)
    names = [t.name for t in rebuilt.graph.initializer]
    assert "unused.weight" not in names and "mm.weight" in names

    art, _ = quantize(path, "--drop", "mm.weight", "--drop", "const.weight", "--force")
    result = run("dequantize", art, "-o", tmp_path / "bad.onnx")
    assert_clean_error(result, "bad.onnx", "uses tensor 'mm.weight'", "--drop")
    assert not (tmp_path / "bad.onnx").exists()


def test_unused_constant_node_is_taken_out(tmp_path: Path) -> None:
    from qcompress.formats.onnx import write_onnx

    model = cnn_model()
    const = helper.make_node("Constant", [], ["spare"], value=numpy_helper.from_array(np.ones(3)))
    model.graph.node.append(const)
    path = save(model, tmp_path / "m.onnx")
    with open_weights(path) as reader:
        meta = reader.metadata()
        infos = [i for i in reader.tensor_infos() if i.name != "spare"]
        arrays = [reader.read(i.name) for i in infos]
    write_onnx(tmp_path / "r.onnx", infos, arrays, meta)
    rebuilt = onnx.load(str(tmp_path / "r.onnx"))
    assert [n.op_type for n in rebuilt.graph.node] == [n.op_type for n in model.graph.node][:-1]


def test_extra_tensor_has_no_place(tmp_path: Path) -> None:
    from qcompress.errors import UsageError
    from qcompress.formats.base import TensorInfo
    from qcompress.formats.onnx import write_onnx

    path = save(cnn_model(), tmp_path / "m.onnx")
    with open_weights(path) as reader:
        meta = reader.metadata()
        infos = reader.tensor_infos()
        arrays = [reader.read(i.name) for i in infos]
    with pytest.raises(UsageError, match="'x' has no place in the ONNX graph"):
        write_onnx(
            tmp_path / "r.onnx",
            [*infos, TensorInfo("x", (1,), "int8")],
            [*arrays, np.ones(1)],
            meta,
        )


def test_missing_onnx_package_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    path = save(cnn_model(), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert_clean_error(run("inspect", path), "m.onnx", "needs the onnx package", "qcompress[onnx]")


# --- damaged models: one line, exit 2, nothing written -----------------------------------


def test_truncated_protobuf(tmp_path: Path) -> None:
    path = save(cnn_model(), tmp_path / "m.onnx")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 7, 40):
        path.write_bytes(data[:cut])
        result = run("quantize", path)
        assert_clean_error(result, "m.onnx", "truncated or corrupt ONNX model")
        assert not (tmp_path / "m.qc.safetensors").exists()


def test_model_without_a_graph(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=8, producer_name="x").SerializeToString())
    assert_clean_error(run("inspect", path), "m.onnx", "has no graph")


def _external(tmp_path: Path, **edit: str) -> Path:
    """A model whose big tensors are in weights.bin, with fc1.weight's external entries edited."""
    path = save(cnn_model(), tmp_path / "m.onnx", external="weights.bin")
    model = onnx.load(str(path), load_external_data=False)
    t = next(t for t in model.graph.initializer if t.name == "fc1.weight")
    for entry in t.external_data:
        if entry.key in edit:
            entry.value = edit[entry.key]
    onnx.save_model(model, str(path))
    return path


def test_missing_external_file(tmp_path: Path) -> None:
    path = save(cnn_model(), tmp_path / "m.onnx", external="weights.bin")
    (tmp_path / "weights.bin").unlink()
    assert_clean_error(run("inspect", path), "weights.bin", "no such external data file")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_path_escaping_the_folder(tmp_path: Path, location: str) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 70000)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = _external(model_dir, location=location)
    assert_clean_error(run("quantize", path), "'fc1.weight'", "outside the model's folder")
    assert not (model_dir / "m.qc.safetensors").exists()


def test_external_symlink_leading_out(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 70000)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = _external(model_dir, location="link.bin")
    (model_dir / "link.bin").symlink_to(tmp_path / "outside.bin")
    assert_clean_error(run("inspect", path), "'fc1.weight'", "outside the model's folder")


def test_external_wrong_sizes(tmp_path: Path) -> None:
    path = _external(tmp_path, length="12")
    assert_clean_error(run("inspect", path), "'fc1.weight'", "declares 12 external bytes")
    path = _external(tmp_path, offset="999999999")
    assert_clean_error(run("inspect", path), "'fc1.weight'", "weights.bin", "truncated?")
    path = _external(tmp_path, offset="x")
    assert_clean_error(run("inspect", path), "'fc1.weight'", "no number")


def test_external_file_truncated(tmp_path: Path) -> None:
    path = save(cnn_model(), tmp_path / "m.onnx", external="weights.bin")
    side = tmp_path / "weights.bin"
    side.write_bytes(side.read_bytes()[:1000])
    assert_clean_error(run("quantize", path), "m.onnx", "needs bytes", "truncated?")


def test_inline_wrong_sizes(tmp_path: Path) -> None:
    model = cnn_model()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert_clean_error(run("inspect", path), "'conv.weight'", "holds 860 data bytes", "needs 864")
    bad = TensorProto(name="t", dims=[2, 3], data_type=TensorProto.FLOAT, float_data=[1.0, 2.0])
    path.write_bytes(
        helper.make_model(helper.make_graph([], "g", [], [], [bad])).SerializeToString()
    )
    assert_clean_error(run("inspect", path), "'t'", "holds 2 values", "needs 6")


def test_duplicate_tensor_names(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    const = helper.make_node("Constant", [], ["w"], value=w)
    path = tmp_path / "d.onnx"
    path.write_bytes(
        helper.make_model(helper.make_graph([const], "g", [], [], [w])).SerializeToString()
    )
    assert_clean_error(run("inspect", path), "'w'", "defined twice")


def test_absurd_empty_shape(tmp_path: Path) -> None:
    t = TensorProto(name="e", dims=[2**40, 2**40, 0], data_type=TensorProto.FLOAT)
    path = tmp_path / "e.onnx"
    path.write_bytes(helper.make_model(helper.make_graph([], "g", [], [], [t])).SerializeToString())
    assert_clean_error(run("inspect", path), "'e'", "no elements, but dimensions too large")


def test_damaged_graph_record(tmp_path: Path) -> None:
    from qcompress.artifact.recipe import RecipeError, check_source
    from qcompress.errors import UsageError
    from qcompress.formats.onnx import write_onnx

    source = {"format": "onnx", "layout": "pytorch", "metadata": {"format": "onnx"}}
    for bad in ("not base64!", None, 7):
        source["metadata"]["model"] = bad
        with pytest.raises(RecipeError, match="not base64"):
            check_source(source, [])
    with pytest.raises(UsageError, match="record of the ONNX graph is damaged"):
        write_onnx(tmp_path / "r.onnx", [], [], {"format": "onnx", "model": "AAAA"})
    assert not (tmp_path / "r.onnx").exists()
