"""The commands end to end, through click's CliRunner: exit codes, stdout/stderr, files written.

The sample model is the real check: its test accuracy must survive 8-bit quantization and a
rebuild into every format.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

import h5py
import jsonschema
import numpy as np
import pytest
from safetensors import safe_open
from samples import SAMPLES, assert_clean_error, run

from qcompress.report import schema

FORMATS = ("npz", "h5", "safetensors")


@pytest.fixture
def sample(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A copy of a sample model in tmp_path (outputs land beside the input by default)."""
    name = getattr(request, "param", "digits_mlp.npz")
    dst = tmp_path / name
    shutil.copy(SAMPLES / name, dst)
    return dst


# --- quantize: the sample model ------------------------------------------------------------------


def test_quantize_sample_8bit_writes_artifact_and_valid_report(sample: Path) -> None:
    result = run("quantize", sample, "--bits", "8", "--quiet")
    assert result.exit_code == 0, result.output
    artifact = sample.with_name("digits_mlp.qc.safetensors")
    report_path = sample.with_name("digits_mlp.qc.json")
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, schema())

    totals = report["totals"]
    # The quantized tensors shrink ~4x: 1 byte per weight plus one float32 scale per channel.
    assert 3.7 < totals["quantized_original_bytes"] / totals["quantized_stored_bytes"] <= 4.0
    assert 8.0 < totals["bits_per_weight"] < 8.7
    assert totals["artifact_bytes"] == artifact.stat().st_size
    by_name = {t["name"]: t for t in report["tensors"]}
    assert by_name["fc1.weight"]["action"] == "quantized"
    assert by_name["fc1.weight"]["granularity"] == "channel"
    assert by_name["fc1.weight"]["axis"] == 0  # PyTorch-style [out, in]
    assert by_name["fc1.weight"]["scheme"] == "symmetric"
    assert len(by_name["fc1.weight"]["scale"]["stored_as"]) > 0  # 128 scales: summarised
    assert by_name["fc3.weight"]["scale"] and len(by_name["fc3.weight"]["scale"]) == 10
    assert by_name["fc1.bias"]["action"] == "kept"
    assert by_name["classes"]["action"] == "passthrough"
    assert by_name["fc1.weight"]["sqnr_db"] > 35
    # The report's error numbers are what the artifact really reconstructs.
    assert by_name["fc2.weight"]["max_abs_error"] <= max(
        by_name["fc2.weight"]["scale"]["max"], 0
    ) / 2 * (1 + 1e-5)


@pytest.mark.parametrize("entropy", ["none", "auto"])
def test_artifact_is_plain_safetensors(sample: Path, entropy: str) -> None:
    assert run("quantize", sample, "--quiet", "--entropy", entropy).exit_code == 0
    artifact = sample.with_name("digits_mlp.qc.safetensors")
    with safe_open(str(artifact), framework="numpy") as f:
        keys = set(f.keys())
        assert {"fc1.weight.qcodes", "fc1.weight.qscale", "fc1.bias", "classes"} <= keys
        codes = f.get_tensor("fc1.weight.qcodes")
        if entropy == "none":  # plain codes, sliceable
            assert codes.dtype == np.int8 and codes.shape == (128, 64)
        else:  # an entropy-coded stream, smaller than the 128 x 64 codes
            assert codes.dtype == np.uint8 and codes.ndim == 1 and codes.size < 128 * 64
        assert "qcompress" in f.metadata()
        np.testing.assert_array_equal(f.get_tensor("classes"), np.arange(10))


def test_same_input_and_options_give_identical_bytes(sample: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run("quantize", sample, "-o", a, "--bits", "4", "--quiet").exit_code == 0
    assert run("quantize", sample, "-o", b, "--bits", "4", "--quiet").exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_json_flag_prints_exactly_the_report(sample: Path) -> None:
    result = run("quantize", sample, "--json", "--quiet")
    assert result.exit_code == 0
    printed = json.loads(result.stdout)
    assert printed == json.loads(sample.with_name("digits_mlp.qc.json").read_text())


def test_summary_goes_to_stderr_only(sample: Path) -> None:
    result = run("quantize", sample)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "fc1.weight" in result.stderr and "report:" in result.stderr


@pytest.mark.parametrize("out_format", FORMATS)
@pytest.mark.parametrize(
    "sample", ["digits_mlp.npz", "digits_mlp.h5", "digits_mlp.safetensors"], indirect=True
)
def test_8bit_round_trip_keeps_accuracy_in_every_format(
    sample: Path, out_format: str, tmp_path: Path, score: ModuleType
) -> None:
    artifact = tmp_path / "m.qc.safetensors"
    assert run("quantize", sample, "-o", artifact, "--quiet").exit_code == 0
    out = tmp_path / f"rebuilt.{out_format}"
    result = run("dequantize", artifact, "-o", out)
    assert result.exit_code == 0, result.output
    assert run("inspect", out, "--json").exit_code == 0
    before, after = score.accuracy(sample), score.accuracy(out)
    assert abs(before - after) <= 0.005, (before, after)


@pytest.mark.parametrize("sample", ["digits_mlp.h5"], indirect=True)
def test_h5_rebuild_keeps_groups_and_attributes(sample: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "m.qc.safetensors"
    assert run("quantize", sample, "-o", artifact, "--quiet").exit_code == 0
    out = tmp_path / "rebuilt.h5"
    assert run("dequantize", artifact, "-o", out).exit_code == 0

    def tree(path: Path) -> dict[str, object]:
        items: dict[str, object] = {}
        with h5py.File(path, "r") as f:

            def visit(name: str, obj: object) -> None:
                kind = "group" if isinstance(obj, h5py.Group) else f"{obj.dtype}{obj.shape}"
                attrs = {
                    k: (type(v).__name__, np.asarray(v).tolist()) for k, v in obj.attrs.items()
                }
                items[name] = (kind, attrs)

            visit("/", f)
            f.visititems(visit)
        return items

    assert tree(out) == tree(sample)
    with h5py.File(out) as f:
        assert f["model_weights"].attrs["layer_names"].dtype.kind == "S"
        assert f["model_weights/dense/dense/kernel:0"].shape == (64, 128)


@pytest.mark.parametrize("sample", ["digits_mlp.h5"], indirect=True)
def test_keras_kernels_quantize_along_last_axis(sample: Path) -> None:
    report = json.loads(run("quantize", sample, "--json", "--quiet").stdout)
    kernel = next(t for t in report["tensors"] if t["name"].endswith("dense/kernel:0"))
    assert kernel["axis"] == 1 and kernel["scale"]["count"] == 128


@pytest.mark.parametrize("sample", ["digits_mlp.bf16.safetensors"], indirect=True)
def test_bfloat16_model(sample: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "m.qc.safetensors"
    assert run("quantize", sample, "-o", artifact, "--quiet").exit_code == 0
    assert run("dequantize", artifact, "-o", tmp_path / "o.safetensors").exit_code == 0
    with safe_open(str(tmp_path / "o.safetensors"), framework="numpy") as f:
        assert f.get_slice("fc1.weight").get_dtype() == "BF16"
    result = run("dequantize", artifact, "-o", tmp_path / "o.npz")
    assert result.exit_code == 0
    assert "bfloat16 tensors written as float32" in result.stderr
    assert np.load(tmp_path / "o.npz")["fc1.weight"].dtype == np.float32


def test_non_float_tensors_come_back_byte_identical(sample: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "m.qc.safetensors"
    assert run("quantize", sample, "-o", artifact, "--quiet").exit_code == 0
    for fmt in FORMATS:
        out = tmp_path / f"o.{fmt}"
        assert run("dequantize", artifact, "-o", out).exit_code == 0
        info = json.loads(run("inspect", out, "--json").stdout)
        names = {t["name"]: t for t in info["tensors"]}
        assert names["classes"]["dtype"] == "int64"
        assert names["fc1.bias"]["dtype"] == "float32"
        assert names["fc2.weight"]["shape"] == [128, 128]


# --- options -------------------------------------------------------------------------------------


def test_keep_glob_and_min_elements(sample: Path) -> None:
    result = run("quantize", sample, "--keep", "fc3.*", "--min-elements", "10000", "--json", "-q")
    tensors = {t["name"]: t for t in json.loads(result.stdout)["tensors"]}
    assert tensors["fc3.weight"]["action"] == "kept"
    assert "--keep 'fc3.*'" in tensors["fc3.weight"]["reason"]
    assert tensors["fc1.weight"]["action"] == "kept"  # 8192 < 10000
    assert tensors["fc2.weight"]["action"] == "quantized"
    assert tensors["fc3.weight"]["sqnr_db"] is None  # exact


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
def test_every_width_and_scheme_round_trips(sample: Path, tmp_path: Path, bits: int, scheme: str):
    artifact = tmp_path / "m.qc.safetensors"
    args = ["quantize", sample, "-o", artifact, "--bits", bits, "--scheme", scheme, "--json", "-q"]
    report = json.loads(run(*args).stdout)
    jsonschema.validate(report, schema())
    out = tmp_path / "o.npz"
    assert run("dequantize", artifact, "-o", out).exit_code == 0
    original, rebuilt = np.load(sample), np.load(out)
    for t in report["tensors"]:
        if t["action"] != "quantized":
            continue
        err = np.abs(original[t["name"]].astype(np.float64) - rebuilt[t["name"]])
        assert err.max() == pytest.approx(t["max_abs_error"], rel=1e-5)
        assert np.mean(err**2) == pytest.approx(t["mse"], rel=1e-4)


def test_tensor_granularity_and_explicit_axis(sample: Path) -> None:
    report = json.loads(run("quantize", sample, "--granularity", "tensor", "--json", "-q").stdout)
    fc1 = next(t for t in report["tensors"] if t["name"] == "fc1.weight")
    assert fc1["granularity"] == "tensor" and fc1["axis"] is None and len(fc1["scale"]) == 1
    report = json.loads(run("quantize", sample, "--axis", "-1", "--json", "-q", "--force").stdout)
    fc1 = next(t for t in report["tensors"] if t["name"] == "fc1.weight")
    assert fc1["axis"] == 1 and len(fc1["scale"]) == 64


def _write_conv_models(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    torch_path = tmp_path / "conv.safetensors"
    from safetensors.numpy import save_file

    save_file({"conv.weight": rng.normal(size=(16, 8, 3, 3)).astype(np.float32)}, torch_path)
    keras_path = tmp_path / "conv.h5"
    with h5py.File(keras_path, "w") as f:
        f["model_weights/conv/conv/kernel:0"] = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)
        f["model_weights/dw/dw/depthwise_kernel:0"] = rng.normal(size=(3, 3, 32, 2)).astype(
            np.float32
        )
    return torch_path, keras_path


def test_conv_kernels_default_axes(tmp_path: Path) -> None:
    torch_path, keras_path = _write_conv_models(tmp_path)
    args = ("--json", "-q", "--min-elements", "16")
    torch_report = json.loads(run("quantize", torch_path, *args).stdout)
    assert torch_report["tensors"][0]["axis"] == 0
    assert torch_report["tensors"][0]["scale"] and len(torch_report["tensors"][0]["scale"]) == 16
    keras_report = run("quantize", keras_path, "-o", tmp_path / "k.safetensors", *args)
    keras = {t["name"]: t for t in json.loads(keras_report.stdout)["tensors"]}
    assert keras["model_weights/conv/conv/kernel:0"]["axis"] == 3
    assert keras["model_weights/dw/dw/depthwise_kernel:0"]["axis"] == 2
    assert len(keras["model_weights/dw/dw/depthwise_kernel:0"]["scale"]) == 32


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_conv_round_trip_within_error_bound(tmp_path: Path, granularity: str) -> None:
    _, keras_path = _write_conv_models(tmp_path)
    artifact = tmp_path / "c.qc.safetensors"
    args = ["quantize", keras_path, "-o", artifact, "--granularity", granularity, "--json", "-q"]
    args += ["--bits", "4", "--group-size", "16", "--min-elements", "16", "--range", "minmax"]
    report = json.loads(run(*args).stdout)
    assert run("dequantize", artifact, "-o", tmp_path / "c.h5").exit_code == 0
    with h5py.File(keras_path) as a, h5py.File(tmp_path / "c.h5") as b:
        for t in report["tensors"]:
            x, y = a[t["name"]][()], b[t["name"]][()]
            assert x.shape == y.shape and y.dtype == np.float32
            scale = t["scale"]
            max_scale = max(scale) if isinstance(scale, list) else scale["max"]
            assert np.abs(x - y).max() <= max_scale / 2 * (1 + 1e-5)


# --- inspect -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["digits_mlp.npz", "digits_mlp.h5", "digits_mlp.safetensors", "digits_mlp.bf16.safetensors"],
)
def test_inspect_every_sample_format(name: str) -> None:
    result = run("inspect", SAMPLES / name, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["kind"] == "weights"
    assert info["parameters"] == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10 + (
        0 if name.endswith(".h5") else 10
    )
    table = run("inspect", SAMPLES / name)
    assert table.exit_code == 0 and "parameters" in table.stdout


def test_inspect_artifact_shows_bits_and_sqnr(sample: Path) -> None:
    assert run("quantize", sample, "--bits", "4", "-q").exit_code == 0
    artifact = sample.with_name("digits_mlp.qc.safetensors")
    info = json.loads(run("inspect", artifact, "--json").stdout)
    assert info["kind"] == "artifact" and info["source_format"] == "npz"
    fc2 = next(t for t in info["tensors"] if t["name"] == "fc2.weight")
    report = json.loads(sample.with_name("digits_mlp.qc.json").read_text())
    fc2_report = next(t for t in report["tensors"] if t["name"] == "fc2.weight")
    assert fc2["bits"] == 4 and fc2["sqnr_db"] == pytest.approx(fc2_report["sqnr_db"])
    assert fc2["stored_bytes"] == fc2_report["stored_bytes"]
    table = run("inspect", artifact, "--tensor", "fc2.weight")
    assert "fc2.weight" in table.stdout and "fc1.weight" not in table.stdout
    assert_clean_error(run("inspect", artifact, "--tensor", "nope"), "nope")


# --- errors: exit 2, one line, nothing written ---------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert_clean_error(run("quantize", tmp_path / "nope.npz"), "nope.npz")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    path.write_text("hello, I am not a model\n")
    assert_clean_error(run("quantize", path), "model.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


@pytest.mark.parametrize("name", ["digits_mlp.npz", "digits_mlp.h5", "digits_mlp.safetensors"])
def test_truncated_file(tmp_path: Path, name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) * 2 // 3])
    assert_clean_error(run("quantize", path), name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_nan_tensor_names_the_tensor_and_keep_rescues_it(tmp_path: Path) -> None:
    weights = np.ones((64, 64), np.float32)
    weights[3, 4] = np.nan
    path = tmp_path / "bad.npz"
    np.savez(path, **{"layer.weight": weights})
    assert_clean_error(run("quantize", path), "bad.npz", "layer.weight", "NaN")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]
    assert run("quantize", path, "--keep", "layer.*", "-q").exit_code == 0


def test_existing_output_needs_force(sample: Path) -> None:
    assert run("quantize", sample, "-q").exit_code == 0
    artifact = sample.with_name("digits_mlp.qc.safetensors")
    before = artifact.read_bytes()
    assert_clean_error(run("quantize", sample, "--bits", "4"), "already exists", "--force")
    assert artifact.read_bytes() == before
    assert run("quantize", sample, "--bits", "4", "-q", "--force").exit_code == 0
    assert artifact.read_bytes() != before


def test_output_never_the_input(sample: Path) -> None:
    before = sample.read_bytes()
    assert_clean_error(run("quantize", sample, "-o", sample, "--force"), "input")
    assert sample.read_bytes() == before


def test_bad_options(sample: Path) -> None:
    assert_clean_error(run("quantize", sample, "--group-size", "3"), "--group-size")
    assert_clean_error(run("quantize", sample, "--axis", "5"), "--axis", "fc1.weight")
    assert run("quantize", sample, "--bits", "9").exit_code == 2


def test_dequantize_errors(sample: Path, tmp_path: Path) -> None:
    assert_clean_error(
        run("dequantize", sample, "-o", tmp_path / "o.npz"), "not a qcompress artifact"
    )
    assert run("quantize", sample, "-q").exit_code == 0
    artifact = sample.with_name("digits_mlp.qc.safetensors")
    assert_clean_error(run("dequantize", artifact, "-o", tmp_path / "o.txt"), "o.txt")
    assert_clean_error(run("quantize", artifact, "-o", tmp_path / "x.safetensors"), "already")


def test_flipped_payload_bit_is_detected(sample: Path, tmp_path: Path) -> None:
    assert run("quantize", sample, "-q").exit_code == 0
    artifact = sample.with_name("digits_mlp.qc.safetensors")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x10
    artifact.write_bytes(bytes(data))
    out = tmp_path / "o.npz"
    assert_clean_error(run("dequantize", artifact, "-o", out), "checksum")
    assert not out.exists()


def test_help_lists_exit_codes() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "Exit status" in result.stdout and "quality gate" in result.stdout


@pytest.mark.parametrize("out_format", FORMATS)
def test_failure_mid_write_leaves_nothing(
    sample: Path, tmp_path: Path, out_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = tmp_path / "m.qc.safetensors"
    assert run("quantize", sample, "-o", artifact, "-q").exit_code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    from qcompress import engine

    real, calls = engine.dequantize, []

    def failing(q: object) -> np.ndarray:
        calls.append(q)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived halfway through the output
        return real(q)

    monkeypatch.setattr(engine, "dequantize", failing)
    result = run("dequantize", artifact, "-o", tmp_path / f"o.{out_format}")
    assert result.exit_code == 130 and "no output was written" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_string_tensor_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.ones((64, 64), np.float32)
        f["vocab"] = np.array([b"a", b"bc"])
    assert_clean_error(run("quantize", path), "m.h5", "'vocab'", "cannot hold")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]


def test_help_and_version_import_nothing_heavy() -> None:
    """--help and --version must stay instant: no numpy, h5py, rich or safetensors on the path."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from qcompress.cli import main\n"
        "sys.argv = ['qcompress', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('numpy', 'h5py', 'rich', 'safetensors', 'ml_dtypes')\n"
        "print('loaded:', [m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "loaded: []"
    version = subprocess.run(
        [sys.executable, "-m", "qcompress", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("qcompress, version ")
