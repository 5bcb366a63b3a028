"""GGUF: qcompress's block encoders against the gguf package's decoder, the export command, and
GGUF files as inputs to inspect / compare / dequantize."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from samples import assert_clean_error, run

from qcompress.engine import kquants
from qcompress.engine import numba_kquants as compiled
from qcompress.errors import QCompressError
from qcompress.formats import open_weights

gguf = pytest.importorskip("gguf")

TYPES = tuple(kquants.BLOCK_TYPES)


def hard_rows() -> np.ndarray:
    """Rows of 512 with the cases block encoders get wrong: all-zero and constant blocks, tiny
    and large magnitudes, one outlier, all-negative and all-positive blocks, heavy tails."""
    r = np.random.default_rng(7)
    x = (0.02 * r.standard_t(4, (16, 512))).astype(np.float32)
    x[0, :256] = 0
    x[1, :32] = 0.5
    x[2] *= 1e-6
    x[3] *= 1e3
    x[4, 7] = 40.0
    x[5] = -np.abs(x[5])
    x[6] = np.abs(x[6]) + 0.1
    x[7, ::2] = 0
    return x


def sqnr(x: np.ndarray, y: np.ndarray) -> float:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return float(10 * np.log10((x64**2).sum() / ((x64 - y64) ** 2).sum()))


# --- engine: bytes that gguf decodes to exactly qcompress's values -----------------------------


@pytest.mark.parametrize("name", TYPES)
def test_gguf_decodes_our_bytes_to_exactly_our_values(name: str) -> None:
    x = hard_rows()
    data = kquants.encode(x, name)
    t = kquants.BLOCK_TYPES[name]
    assert data.shape == (16, 512 // t.block * t.nbytes)
    ours = kquants.decode(data, name)
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[name])
    assert ours.dtype == theirs.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))  # max difference 0
    assert np.isfinite(ours).all()
    assert (ours[0, :256] == 0).all()  # an all-zero block decodes to zeros


@pytest.mark.parametrize("name", TYPES)
def test_decoder_layout_matches_gguf_on_random_blocks(name: str) -> None:
    """Random bytes in every field (finite float16 scales), so each bit of the layout counts."""
    t = kquants.BLOCK_TYPES[name]
    r = np.random.default_rng(len(name) + t.nbytes)
    blocks = r.integers(0, 256, (64, t.nbytes), dtype=np.uint8)
    # float16 fields: positions by type (d and dmin first, Q6_K's d last)
    halves = {"Q6_K": [t.nbytes - 2]}.get(name, [0, 2] if name in ("Q4_1", "Q5_1") else [0])
    if name in ("Q4_K", "Q5_K"):
        halves = [0, 2]
    for h in halves:
        blocks[:, h : h + 2] = r.uniform(-2, 2, 64).astype(np.float16).view(np.uint8).reshape(64, 2)
    ours = kquants.decode(blocks.reshape(-1), name)
    theirs = gguf.quants.dequantize(blocks.reshape(-1), gguf.GGMLQuantizationType[name])
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("name", TYPES)
def test_encode_of_decoded_values_is_close_and_ordered_by_bits(name: str) -> None:
    """More bits, less error; each type at least as good as gguf's own numpy encoder where it
    has one (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), on Gaussian weights."""
    x = (0.02 * np.random.default_rng(0).standard_normal((64, 1024))).astype(np.float32)
    ours = sqnr(x, kquants.decode(kquants.encode(x, name), name))
    floor = {"Q4_0": 21.0, "Q4_1": 21.5, "Q5_0": 27.0, "Q5_1": 27.5, "Q8_0": 44.0}
    floor |= {"Q4_K": 22.8, "Q5_K": 28.8, "Q6_K": 35.0, "IQ4_NL": 22.4}
    assert ours >= floor[name]
    qtype = gguf.GGMLQuantizationType[name]
    if name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        ref = gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype)
        assert ours >= sqnr(x, ref) - 0.01


def test_k_quants_beat_the_32_blocks_of_the_same_size() -> None:
    """Q4_K stores 4.5 bits per weight like Q4_0 and must be clearly better on heavy tails."""
    x = (0.02 * np.random.default_rng(1).standard_t(3, (64, 1024))).astype(np.float32)
    q4k = sqnr(x, kquants.decode(kquants.encode(x, "Q4_K"), "Q4_K"))
    qt = gguf.GGMLQuantizationType.Q4_0
    q40 = sqnr(x, gguf.quants.dequantize(gguf.quants.quantize(x, qt), qt))
    assert q4k > q40 + 1.5


GOLDEN = {
    "Q4_0": "719b432fde555aaa",
    "Q4_1": "14ec905f6edf8b17",
    "Q5_0": "cb1b8cd6d33192c1",
    "Q5_1": "e18dad8b0a1dc48a",
    "Q8_0": "e63a8c7af579883b",
    "Q4_K": "5245fb51a6a26528",
    "Q5_K": "65fd84358a0279c0",
    "Q6_K": "e3c25528d87e4a73",
    "IQ4_NL": "8ceeeab6b148901d",
}


@pytest.mark.parametrize("name", TYPES)
def test_golden_bytes(name: str) -> None:
    r = np.random.default_rng(7)
    x = (0.02 * r.standard_t(4, (16, 512))).astype(np.float32)
    x[0, :256] = 0
    x[1, :32] = 0.5
    x[2] *= 1e-6
    digest = hashlib.sha256(kquants.encode(x, name).tobytes()).hexdigest()[:16]
    assert digest == GOLDEN[name]


@pytest.mark.parametrize("name", ["affine_search", "affine_pick", "symmetric_search"])
def test_compiled_kernels_equal_their_python_versions(name: str) -> None:
    """Same outputs with and without numba: the kernels' float32 arithmetic is exact."""
    x = hard_rows()[:, :64].reshape(-1, 32).copy()
    n = x.shape[0]
    kernel = getattr(compiled, name)
    outs = []
    for fn in (kernel, kernel.py_func):
        if name == "affine_search":
            res = [np.empty(n, np.float32), np.empty(n, np.float32)]
            fn(x, 15, kquants._AFFINE_OFFSETS, *res)
        elif name == "symmetric_search":
            res = [np.empty(n, np.float32)]
            fn(x, 8, kquants._SYMMETRIC_OFFSETS, *res)
        else:
            step = np.abs(x).max(axis=1) / 15
            d = np.full(n, step.max() / 63, np.float32)
            res = [np.empty(n, np.uint8), np.empty(n, np.uint8), np.empty((n, 32), np.uint8)]
            fn(x, d, d / 2, step.astype(np.float32), step.astype(np.float32) * 3, 15, *res)
        outs.append(res)
    for a, b in zip(*outs, strict=True):
        assert np.array_equal(a, b)


def test_encode_refuses_partial_blocks() -> None:
    with pytest.raises(ValueError, match="not whole Q4_K blocks"):
        kquants.encode(np.zeros((2, 300), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="unknown GGUF block type"):
        kquants.encode(np.zeros((2, 256), np.float32), "Q3_X")


# --- export -----------------------------------------------------------------------------------


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """Weights of every kind export has a rule for."""
    r = np.random.default_rng(0)
    path = tmp_path / "m.safetensors"
    save_file(
        {
            "a.weight": (0.02 * r.standard_normal((64, 512))).astype(np.float32),
            "a.bias": r.standard_normal(64).astype(np.float32),
            "b.weight": r.standard_normal((48, 96)).astype(np.float32),  # rows: 96, not 256
            "c.weight": r.standard_normal((40, 100)).astype(np.float16),  # rows: not even 32
            "conv.weight": r.standard_normal((32, 16, 4, 4)).astype(np.float32),
            "small.weight": r.standard_normal((4, 8)).astype(np.float32),
            "steps": np.arange(10, dtype=np.int64),
        },
        path,
    )
    return path


def export_json(*args: object) -> dict:
    result = run("export", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_export_gguf_rules_fallbacks_and_exact_decode(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    res = export_json(model, "--to", "gguf", "-o", out)
    by = {t["name"]: t for t in res["tensors"]}
    assert by["a.weight"]["gguf_type"] == "Q4_K"
    assert by["a.bias"]["gguf_type"] == "F32"
    assert by["small.weight"]["gguf_type"] == "F32"
    assert by["steps"]["gguf_type"] == "I64"
    assert by["conv.weight"]["gguf_type"] == "Q4_K"
    assert by["conv.weight"]["stored_shape"] == [32, 256]
    assert by["b.weight"]["gguf_type"] == "Q4_0"
    assert by["b.weight"]["fallback"] == {
        "wanted": "Q4_K",
        "used": "Q4_0",
        "extra_bits": 0,
        "extra_bits_per_weight": 0.0,
    }
    assert by["c.weight"]["gguf_type"] == "F16"
    assert by["c.weight"]["fallback"]["extra_bits"] == 4000 * 16 - 4000 * 9 // 2
    assert {f["name"] for f in res["fallbacks"]} == {"b.weight", "c.weight"}
    assert res["totals"]["fallbacks"] == 2
    assert res["verified"] is True
    assert by["a.weight"]["sqnr_db"] > 22

    reader = gguf.GGUFReader(out)
    assert bytes(reader.get_field("general.architecture").parts[-1]).decode() == "qcompress"
    field = reader.get_field("comfy.gguf.orig_shape.conv.weight")
    assert [int(field.parts[i][0]) for i in field.data] == [32, 16, 4, 4]
    src = load_file(model)
    for t in reader.tensors:
        # gguf's ne is innermost first: the numpy shape reversed
        stored = tuple(by[t.name].get("stored_shape", by[t.name]["shape"]))
        assert tuple(int(d) for d in reversed(t.shape.tolist())) == stored
        if t.tensor_type.name == "I64":
            assert np.array_equal(np.asarray(t.data), src[t.name])
            continue
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        mine = (
            kquants.decode(np.asarray(t.data), t.tensor_type.name)
            if (t.tensor_type.name in kquants.BLOCK_TYPES)
            else values
        )
        assert np.array_equal(mine, values)
        err = values.reshape(src[t.name].shape).astype(np.float64) - src[t.name]
        assert np.isclose((err**2).mean(), by[t.name]["mse"], rtol=1e-6, atol=0)

    # qcompress dequantize of the GGUF gives exactly gguf's values, in the original shapes
    back = tmp_path / "back.safetensors"
    assert run("dequantize", out, "-o", back).exit_code == 0
    rebuilt = load_file(back)
    conv = next(t for t in reader.tensors if t.name == "conv.weight")
    expect = gguf.quants.dequantize(np.asarray(conv.data), conv.tensor_type).reshape(32, 16, 4, 4)
    assert np.array_equal(rebuilt["conv.weight"], expect)
    assert rebuilt["c.weight"].dtype == np.float16
    assert np.array_equal(rebuilt["steps"], src["steps"])


def test_export_is_byte_identical_across_runs(model: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    export_json(model, "--to", "gguf", "-o", a, "--type", "Q5_K")
    export_json(model, "--to", "gguf", "-o", b, "--type", "Q5_K")
    assert a.read_bytes() == b.read_bytes()


def test_no_fallback_exits_2_naming_the_tensors(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    result = run("export", model, "--to", "gguf", "-o", out, "--no-fallback")
    assert_clean_error(result, "--no-fallback", "'b.weight'", "'c.weight'", "2 tensor(s)")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [model]  # no temporary left behind


@pytest.mark.parametrize(
    ("name", "wanted", "used"),
    [("Q5_K", "Q5_K", "Q5_0"), ("Q6_K", "Q6_K", "Q8_0"), ("Q8_0", "Q8_0", "F16")],
)
def test_fallback_types_per_requested_type(
    model: Path, tmp_path: Path, name: str, wanted: str, used: str
) -> None:
    res = export_json(model, "--to", "gguf", "-o", tmp_path / "m.gguf", "--type", name)
    fb = {f["name"]: f for f in res["fallbacks"]}
    assert fb["c.weight"]["used"] == "F16"
    if name != "Q8_0":
        assert fb["b.weight"]["wanted"] == wanted
        assert fb["b.weight"]["used"] == used
    else:
        assert "b.weight" not in fb  # 96 is whole blocks of 32


def test_type_auto_allocates_under_the_target(model: Path, tmp_path: Path) -> None:
    res = export_json(
        model, "--to", "gguf", "-o", tmp_path / "m.gguf", "--type", "auto", "--target-bpw", "5.5"
    )
    assert res["totals"]["quantized_bits_per_weight"] <= 5.5
    types = {t["gguf_type"] for t in res["tensors"]}
    assert types & {"Q5_K", "Q6_K", "Q8_0"}  # the spare bits were spent
    low = export_json(
        model, "--to", "gguf", "-o", tmp_path / "l.gguf", "--type", "auto", "--target-bpw", "4.5"
    )
    assert low["totals"]["sum_squared_error"] > res["totals"]["sum_squared_error"]


def test_bits_map_to_types(model: Path, tmp_path: Path) -> None:
    res = export_json(model, "--to", "gguf", "-o", tmp_path / "m.gguf", "--bits", "6")
    assert res["type"] == "Q6_K"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--type", "auto"], "--target-bpw"),
        (["--bits", "3"], "--bits 3"),
        (["--type", "Q9_K"], "--type Q9_K"),
        (["--type", "Q4_K", "--bits", "4"], "give one of them"),
        (["--target-bpw", "1.0"], "--target-bpw 1"),
        (["--group-size", "64"], "--group-size"),
    ],
)
def test_bad_options_exit_2(model: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    out = tmp_path / "m.gguf"
    assert_clean_error(run("export", model, "--to", "gguf", "-o", out, *args), fragment)
    assert not out.exists()


def test_existing_output_needs_force(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep")
    assert_clean_error(run("export", model, "--to", "gguf", "-o", out), "--force")
    assert out.read_bytes() == b"keep"
    export_json(model, "--to", "gguf", "-o", out, "--force")
    assert out.read_bytes()[:4] == b"GGUF"


def test_nan_tensor_exits_2(tmp_path: Path) -> None:
    x = np.ones((8, 256), np.float32)
    x[3, 5] = np.nan
    save_file({"w": x}, tmp_path / "nan.safetensors")
    result = run("export", tmp_path / "nan.safetensors", "--to", "gguf", "-o", tmp_path / "o.gguf")
    assert_clean_error(result, "'w'", "NaN")
    assert not (tmp_path / "o.gguf").exists()


def test_missing_gguf_package_is_a_clean_error(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)
    result = run("export", model, "--to", "gguf", "-o", tmp_path / "m.gguf")
    assert_clean_error(result, "pip install 'qcompress[gguf]'")


def test_compressed_tensors_branch_is_reachable(model: Path, tmp_path: Path) -> None:
    """Without the compressed-tensors module this build says so; with it, gguf-only options
    are refused before any work."""
    result = run(
        "export", model, "--to", "compressed-tensors", "-o", tmp_path / "ct", "--arch", "x"
    )
    assert_clean_error(result, "--arch")


def test_artifact_input_is_dequantized_then_encoded(model: Path, tmp_path: Path) -> None:
    art = tmp_path / "m.qc.safetensors"
    assert run("quantize", model, "-o", art, "--bits", "8", "--quiet").exit_code == 0
    res = export_json(art, "--to", "gguf", "-o", tmp_path / "m.gguf", "--type", "Q8_0")
    assert res["input_kind"] == "artifact"
    assert "dequantized" in res["note"]
    assert {t["name"] for t in res["tensors"]} == set(load_file(model))


# --- GGUF as input: inspect, compare, dequantize, corrupt files ---------------------------------


def test_inspect_gguf(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    export_json(model, "--to", "gguf", "-o", out)
    result = run("inspect", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["format"] == "gguf"
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["conv.weight"]["shape"] == [32, 16, 4, 4]
    assert by["conv.weight"]["gguf_type"] == "Q4_K"
    assert by["c.weight"]["dtype"] == "float16"


def test_quantize_refuses_a_gguf_input_naming_the_way_out(model: Path, tmp_path: Path) -> None:
    """GGUF is quantized already and an artifact cannot name it as its source: one clean line
    saying to dequantize first (it used to fail late as a 'corrupt recipe' of the output)."""
    out = tmp_path / "m.gguf"
    export_json(model, "--to", "gguf", "-o", out)
    result = run("quantize", out, "-o", tmp_path / "q.qc.safetensors")
    assert_clean_error(result, "m.gguf", "GGUF checkpoint, quantized already", "dequantize")
    assert not (tmp_path / "q.qc.safetensors").exists() and not (tmp_path / "q.qc.json").exists()


def test_compare_safetensors_with_gguf(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    exported = export_json(model, "--to", "gguf", "-o", out)
    result = run("compare", model, out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["unpaired"] == {"a_only": [], "b_only": []}
    mse = {t["name"]: t.get("mse", 0.0) for t in exported["tensors"]}  # ints: no error
    assert {t["name"] for t in doc["tensors"]} == set(mse)
    for t in doc["tensors"]:
        assert np.isclose(t["mse"], mse[t["name"]], rtol=1e-9, atol=0)
    gate = run("compare", model, out, "--min-sqnr", "30")
    assert gate.exit_code == 1  # Q4_K is ~23 dB


def write_llama_gguf(path: Path, tensors: dict[str, np.ndarray]) -> None:
    w = gguf.GGUFWriter(path, "llama")
    for name, x in tensors.items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_compare_maps_llama_cpp_names_and_lists_unpaired(tmp_path: Path) -> None:
    r = np.random.default_rng(3)
    q = r.standard_normal((8, 8)).astype(np.float32)
    norm = r.standard_normal(8).astype(np.float32)
    hf = tmp_path / "hf.safetensors"
    save_file(
        {"model.layers.0.self_attn.q_proj.weight": q, "model.norm.weight": norm, "extra": norm},
        hf,
    )
    g = tmp_path / "llama.gguf"
    write_llama_gguf(
        g, {"blk.0.attn_q.weight": q, "output_norm.weight": norm * 2, "rope_freqs": norm}
    )
    result = run("compare", hf, g, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["model.layers.0.self_attn.q_proj.weight"]["b_name"] == "blk.0.attn_q.weight"
    assert by["model.layers.0.self_attn.q_proj.weight"]["mse"] == 0.0
    assert by["model.norm.weight"]["b_name"] == "output_norm.weight"
    assert by["model.norm.weight"]["mse"] > 0
    assert [t["name"] for t in doc["unpaired"]["a_only"]] == ["extra"]
    assert [t["name"] for t in doc["unpaired"]["b_only"]] == ["rope_freqs"]
    human = run("compare", hf, g)
    assert "unpaired in" in human.stderr and "rope_freqs" in human.stderr


@pytest.mark.parametrize("cut", [5, 24, 40, 80, -100, -1])
def test_truncated_gguf_exits_2(model: Path, tmp_path: Path, cut: int) -> None:
    out = tmp_path / "m.gguf"
    export_json(model, "--to", "gguf", "-o", out)
    data = out.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:cut])
    for cmd in (["inspect", bad], ["dequantize", bad, "-o", tmp_path / "x.safetensors"]):
        result = run(*cmd)
        assert_clean_error(result, "bad.gguf")
    assert not (tmp_path / "x.safetensors").exists()


def test_flipped_bytes_in_gguf_header_are_refused_or_read(model: Path, tmp_path: Path) -> None:
    """Each byte of the header and tensor index flipped: the file opens and every tensor reads,
    or a QCompressError names the file; never another exception."""
    out = tmp_path / "m.gguf"
    export_json(model, "--to", "gguf", "-o", out)
    data = bytearray(out.read_bytes())
    bad = tmp_path / "bad.gguf"
    refused = 0
    for i in range(0, 700, 3):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        try:
            with open_weights(bad) as reader:
                for info in reader.tensor_infos():
                    reader.read(info.name)
        except QCompressError as exc:
            assert "bad.gguf" in str(exc) and "\n" not in str(exc)
            refused += 1
    assert refused > 0


def test_scalar_and_empty_tensors_export_and_read_back(tmp_path: Path) -> None:
    src = tmp_path / "odd.safetensors"
    save_file(
        {
            "s": np.array(3.0, np.float32),
            "e": np.zeros((0, 256), np.float32),
            "w": np.ones((4, 256), np.float32),
        },
        src,
    )
    out = tmp_path / "odd.gguf"
    res = export_json(src, "--to", "gguf", "-o", out)
    by = {t["name"]: t for t in res["tensors"]}
    assert by["s"]["stored_shape"] == [1] and "0-d" in by["s"]["reason"]
    assert by["e"]["gguf_type"] == "F32"
    assert by["w"]["max_abs_error"] <= 1 / 15 / 2  # within half a step of the grid
    doc = json.loads(run("compare", src, out, "--json").stdout)
    assert [t["name"] for t in doc["tensors"]] == ["e", "w"]
    assert doc["unpaired"]["a_only"][0]["name"] == "s"  # GGUF has no 0-d tensors: listed
