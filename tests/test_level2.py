"""Second-level scales and the low-bit defaults: error bound, honest sizes, and a working model.

Why these tests: the second level changes what ``scale`` means on disk (codes under super-scales),
so the bound |x - x̂| <= scale / 2 must be re-proved with the *decoded* scales, the artifact must
rebuild bit-identical values from the codes it stores, and the bytes it stores must be exactly
what the recipe says, since the benchmark's bits per weight come from them.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save_file

from qcompress import api
from qcompress.artifact.layout import level2_blocks
from qcompress.artifact.reader import Artifact
from qcompress.cli import cli
from qcompress.config import QuantizeOptions
from qcompress.engine import QuantSpec, code_range, dequantize, error_stats, quantize, to_rows
from qcompress.engine.packing import packed_nbytes, packing_for
from qcompress.engine.rows import n_groups
from qcompress.engine.spec import GRANULARITIES, SCALE_BITS, SCHEMES, SUPER_BLOCK
from qcompress.report import schema

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
REL_TOL = 1e-6


def per_element(a: np.ndarray, cols: int, spec: QuantSpec) -> np.ndarray:
    width = spec.group_size if spec.granularity == "group" else max(cols, 1)
    return np.repeat(a, width, axis=1)[:, :cols]


def check_level2_bound(x: np.ndarray, spec: QuantSpec, *, all_values: bool) -> None:
    """Codes in range, params decoded from the stored codes, |x - x̂| <= s/2 inside the clip."""
    q = quantize(x, spec)
    assert q.level2 is not None and q.scale.dtype == np.float32
    k = 2**spec.scale_bits - 1
    assert q.level2.scale_codes.dtype == np.uint8 and int(q.level2.scale_codes.max()) <= k
    if q.level2.min_codes is not None:
        assert int(q.level2.min_codes.max()) <= k
    qlo, qhi = code_range(spec.bits, spec.scheme)
    assert qlo <= int(q.codes.min()) and int(q.codes.max()) <= qhi
    rows = to_rows(x.astype(np.float32), spec).astype(np.float64)
    cols = rows.shape[1]
    err = np.abs(to_rows(dequantize(q), spec).astype(np.float64) - rows)
    half = per_element(q.scale.astype(np.float64), cols, spec) / 2
    mag = np.maximum(np.abs(q.clip_min), np.abs(q.clip_max)).astype(np.float64)
    tol = REL_TOL * np.maximum(per_element(mag, cols, spec), np.abs(rows)) + 1e-45
    lo, hi = per_element(q.clip_min, cols, spec), per_element(q.clip_max, cols, spec)
    inside = (rows >= lo) & (rows <= hi)
    if all_values:
        assert inside.all(), "a minmax grid must cover every value"
    assert (err[inside] <= half[inside] + tol[inside]).all(), "bound broken"


level2_specs = st.builds(
    QuantSpec,
    bits=st.sampled_from((2, 3, 4, 5, 8)),
    scheme=st.sampled_from(SCHEMES),
    granularity=st.sampled_from(GRANULARITIES),
    axis=st.just(0),
    group_size=st.sampled_from((3, 16, 24, 32)),
    range_method=st.sampled_from(("minmax", "mse")),
    scale_bits=st.sampled_from(SCALE_BITS),
)


@settings(max_examples=200, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        elements=st.floats(-1e4, 1e4, width=32),
    ),
    spec=level2_specs,
)
def test_error_bound_holds_with_decoded_second_level_scales(x: np.ndarray, spec: QuantSpec):
    check_level2_bound(x, spec, all_values=spec.range_method == "minmax")


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_bound_for_each_granularity_on_awkward_data(granularity: str, scheme: str) -> None:
    """Constant, all-positive, all-zero and tiny groups, ragged last groups, many blocks."""
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, (70, 200)).astype(np.float32)
    x[0] = 5.0  # a constant row
    x[1] = np.abs(x[1]) + 100  # far from zero
    x[2] = 0.0
    x[3] *= 1e-30
    for sb in (4, 8):
        for method in ("minmax", "mse"):
            spec = QuantSpec(4, scheme, granularity, 0, 24, method, "float32", sb)
            check_level2_bound(x, spec, all_values=method == "minmax")


def test_mse_never_worse_than_minmax_with_second_level() -> None:
    rng = np.random.default_rng(4)
    for x in (rng.standard_normal((64, 256)), rng.standard_t(2, (64, 256))):
        x = x.astype(np.float32)
        for bits in (2, 4, 8):
            for scheme in SCHEMES:
                base = QuantSpec(bits, scheme, "group", 0, 32, "minmax", "float32", 6)
                e_mm = error_stats(x, dequantize(quantize(x, base))).mse
                e_mse = error_stats(x, dequantize(quantize(x, _mse(base)))).mse
                assert e_mse <= e_mm * (1 + 1e-6)


def _mse(spec: QuantSpec) -> QuantSpec:
    from dataclasses import replace

    return replace(spec, range_method="mse")


def test_second_level_beats_float16_scales_per_stored_bit() -> None:
    """The reason for the second level: same 4-bit groups, ~0.6 fewer bits per weight, ~same dB."""
    x = np.random.default_rng(5).standard_normal((64, 1024)).astype(np.float32)
    f16 = QuantSpec(4, "affine", "group", 0, 32, "mse", "float16")
    two = QuantSpec(4, "affine", "group", 0, 32, "mse", "float32", 6)
    db_f16 = error_stats(x, dequantize(quantize(x, f16))).sqnr_db
    db_two = error_stats(x, dequantize(quantize(x, two))).sqnr_db
    assert db_two > db_f16 - 0.3


def _write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path))
    return path


def _expected_bytes(entry: dict, dtype_size: int) -> dict[str, int]:
    rows, cols, groups = entry["rows"], entry["cols"], entry["n_groups"]
    bits, sb = entry["bits"], entry.get("scale_bits")
    out = {entry["codes"]: packed_nbytes(rows * cols, bits, packing_for(bits, entry["scheme"]))}
    params = [entry["scale"]] + ([entry["zero_point"]] if entry["zero_point"] else [])
    for name in params:
        out[name] = packed_nbytes(rows * groups, sb) if sb else rows * groups * dtype_size
    if sb:
        assert entry["super_block"] == SUPER_BLOCK
        out[entry["super"]] = 4 * len(params) * -(-(rows * groups) // SUPER_BLOCK)
    return out


@pytest.mark.parametrize(
    ("bits", "scheme", "granularity", "group_size", "scale_bits", "scale_dtype"),
    [
        (4, None, None, None, None, "float32"),  # the 4-bit defaults: affine g32, 6-bit codes
        (2, "symmetric", "group", 24, 5, "float32"),
        (3, "affine", "group", 16, 8, "float32"),
        (5, "affine", "channel", None, 7, "float32"),
        (8, "affine", "group", 24, 5, "float32"),
        (8, None, None, None, None, "float32"),  # the 8-bit defaults: per channel, float32
        (6, "affine", "group", 40, 0, "float16"),
    ],
)
def test_artifact_bytes_are_what_the_recipe_says(
    tmp_path: Path, bits, scheme, granularity, group_size, scale_bits, scale_dtype
) -> None:
    rng = np.random.default_rng(6)
    src = _write(
        tmp_path / "m.safetensors",
        {
            "a": rng.standard_normal((37, 100)).astype(np.float32),
            "b": rng.standard_normal((300, 70)).astype(np.float32),
        },
    )
    opts = QuantizeOptions(
        bits=bits,
        scheme=scheme,
        granularity=granularity,
        group_size=group_size,
        scale_bits=scale_bits,
        scale_dtype=scale_dtype,
        min_elements=0,
        entropy="none",  # the plain layout, whose sizes the recipe fixes
    )
    result = api.quantize_file(src, opts, output=tmp_path / "m.qc.safetensors")
    report = result.report
    jsonschema.validate(report, schema())
    total = 0
    with Artifact(result.artifact) as art:
        infos = {i.name: i for i in art._reader.tensor_infos()}
        for entry, tensor in zip(art.entries, report["tensors"], strict=True):
            expected = _expected_bytes(entry.to_json(), np.dtype(scale_dtype).itemsize)
            assert {n: infos[n].nbytes for n in expected} == expected
            assert tensor["stored_bytes"] == sum(expected.values()) == art.stored_bytes(entry)
            assert tensor["scale_bits"] == entry.to_json().get("scale_bits")
            total += sum(expected.values())
            assert np.isfinite(art.quantized(entry).scale).all()
    n = 37 * 100 + 300 * 70
    assert report["totals"]["bits_per_weight"] == pytest.approx(8 * total / n, rel=1e-12)


def test_artifact_rebuilds_bit_identical_values(tmp_path: Path) -> None:
    x = np.random.default_rng(7).standard_t(3, (96, 200)).astype(np.float32)
    src = _write(tmp_path / "m.safetensors", {"w": x})
    opts = QuantizeOptions(bits=3, group_size=24, scale_bits=5, min_elements=0)
    result = api.quantize_file(src, opts, output=tmp_path / "m.qc.safetensors")
    spec = QuantSpec(3, "affine", "group", 0, 24, "mse", "float32", 5)
    direct = dequantize(quantize(x, spec))
    with Artifact(result.artifact) as art:
        rebuilt = dequantize(art.quantized(art.entries[0]))
    assert np.array_equal(direct, rebuilt)
    sqnr = result.report["tensors"][0]["sqnr_db"]
    assert sqnr == pytest.approx(error_stats(x, direct).sqnr_db)


def load_score() -> ModuleType:
    spec = importlib.util.spec_from_file_location("qc_score_level2", SAMPLES / "score.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_model_at_4_bits_keeps_its_accuracy(tmp_path: Path) -> None:
    score = load_score()
    out = tmp_path / "d.qc.safetensors"
    res = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(SAMPLES / "digits_mlp.safetensors"),
            "--bits",
            "4",
            "-o",
            str(out),
            "--json",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    jsonschema.validate(report, schema())
    quantized = [t for t in report["tensors"] if t["action"] == "quantized"]
    assert quantized and all(t["scale_bits"] == 6 and t["group_size"] == 32 for t in quantized)
    assert report["totals"]["bits_per_weight"] < 4.5
    rebuilt = tmp_path / "d.safetensors"
    assert CliRunner().invoke(cli, ["dequantize", str(out), "-o", str(rebuilt)]).exit_code == 0
    base = score.accuracy(SAMPLES / "digits_mlp.safetensors")
    assert abs(score.accuracy(rebuilt) - base) <= 0.01


def test_cli_scale_bits_option(tmp_path: Path) -> None:
    x = np.random.default_rng(8).standard_normal((64, 256)).astype(np.float32)
    src = _write(tmp_path / "m.safetensors", {"w": x})
    out = tmp_path / "o.qc.safetensors"
    res = CliRunner().invoke(
        cli, ["quantize", str(src), "-o", str(out), "--bits", "4", "--scale-bits", "0", "--json"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    jsonschema.validate(report, schema())
    assert report["tensors"][0]["scale_bits"] is None
    assert report["options"]["scale_bits"] is None
    res = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(src),
            "-o",
            str(tmp_path / "p.qc.safetensors"),
            "--scale-bits",
            "6",
            "--scale-dtype",
            "float16",
        ],
    )
    assert res.exit_code == 2 and "--scale-bits" in res.stderr
    assert not (tmp_path / "p.qc.safetensors").exists()


def test_level2_block_count() -> None:
    assert level2_blocks((1, 1)) == 1
    assert level2_blocks((0, 1)) == 1
    assert level2_blocks((4096, 128)) == 4096 * 128 // SUPER_BLOCK
    assert level2_blocks((3, 100)) == math.ceil(300 / SUPER_BLOCK)
    assert n_groups(100, QuantSpec(4, granularity="group", group_size=24)) == 5
