"""Codebook codes (engine.codebook): exact round trips, decoding by the table, never worse than
the min-max start, the recipe's checks, the CLI and the budget."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from samples import assert_clean_error, run

from qcompress import engine
from qcompress.artifact.layout import stored_nbytes
from qcompress.artifact.reader import Artifact
from qcompress.artifact.recipe import RecipeError, check_entry
from qcompress.engine import codebook
from qcompress.engine.level2 import _per_group
from qcompress.engine.rows import group_len, to_rows
from qcompress.engine.spec import QuantSpec
from qcompress.formats.base import TensorInfo
from qcompress.report import schema


def spec_of(codebook_name: str, bits: int = 4, group: int = 32, sb: int = 7) -> QuantSpec:
    return QuantSpec(
        bits=bits, granularity="group", group_size=group, scale_bits=sb, codebook=codebook_name
    )


SPECS = st.sampled_from(
    [
        spec_of("iq4nl"),
        spec_of("nf4", group=16, sb=5),
        spec_of("fit"),
        spec_of("fit", bits=3, group=16, sb=6),
        QuantSpec(bits=4, granularity="channel", scale_bits=8, codebook="iq4nl"),
    ]
)
MATRICES = arrays(
    np.float32,
    st.tuples(st.integers(1, 5), st.integers(1, 80)),
    elements=st.floats(-1e3, 1e3, width=32),
)


def reference_decode(q: engine.QuantizedTensor) -> np.ndarray:
    """A slow loop: every value is its group's scale times the level its code indexes."""
    rows, cols = q.codes.shape
    g = group_len(cols, q.spec)
    out = np.empty((rows, cols), np.float32)
    for r in range(rows):
        for c in range(cols):
            level = q.levels[int(q.codes[r, c]) + (1 << (q.spec.bits - 1))]
            out[r, c] = np.float32(q.scale[r, c // g]) * np.float32(level)
    return out


def group_errors(x: np.ndarray, xhat: np.ndarray, spec: QuantSpec) -> np.ndarray:
    rows = to_rows(x, spec).astype(np.float64)
    diff = rows - to_rows(xhat, spec).astype(np.float64)
    g = group_len(rows.shape[1], spec)
    ng = -(-rows.shape[1] // g)
    pad = np.zeros((rows.shape[0], ng * g))
    pad[:, : rows.shape[1]] = diff**2
    return pad.reshape(rows.shape[0], ng, g).sum(axis=2)


@settings(max_examples=40, deadline=None)
@given(MATRICES, SPECS)
def test_decode_is_the_table_and_codes_round_trip(x: np.ndarray, spec: QuantSpec) -> None:
    q = engine.quantize(x, spec)
    assert q.levels is not None and q.levels.dtype == np.float32
    assert q.levels[0] == -1 and np.all(np.diff(q.levels) > 0)
    if spec.codebook == "iq4nl":
        assert np.array_equal(q.levels * 127, np.asarray(codebook.IQ4NL_INT8, np.float32))
    xhat = engine.dequantize(q)
    assert np.array_equal(to_rows(xhat, spec), reference_decode(q))
    packed = engine.pack_codes(q.codes, spec.bits)
    assert np.array_equal(
        engine.unpack_codes(packed, spec.bits, q.codes.size, True), q.codes.ravel()
    )
    second = q.level2
    assert second is not None
    decoded = codebook.decode_scales(second.scale_codes, second.super_scale, spec.scale_bits)
    assert np.array_equal(decoded, q.scale)


@settings(max_examples=40, deadline=None)
@given(MATRICES, SPECS)
def test_never_worse_than_the_min_max_start(x: np.ndarray, spec: QuantSpec) -> None:
    """Each group's error is at most the min-max start's (largest magnitude onto level -1),
    its scale coded under the same super-scale, levels reassigned."""
    q = engine.quantize(x, spec)
    rows = to_rows(x, spec).astype(np.float64)
    g = group_len(rows.shape[1], spec)
    ng = q.scale.shape[1]
    xg = np.zeros((rows.shape[0], ng * g))
    xg[:, : rows.shape[1]] = rows
    xg = xg.reshape(rows.shape[0], ng, g)
    half = 1 << (spec.scale_bits - 1)
    step = _per_group(q.level2.super_scale, q.scale.shape)
    d0 = codebook.minmax_start(xg, q.levels)
    ratio = np.divide(d0, step, out=np.zeros_like(d0), where=step > 0)
    c0 = np.clip(np.rint(ratio) + half, 0, 2 * half - 1).astype(np.float32)
    s0 = (step * (c0 - np.float32(half))).astype(np.float32)
    idx = codebook._assign(xg, s0.astype(np.float64), q.levels)
    start_err = ((xg - (s0[..., None] * q.levels[idx]).astype(np.float64)) ** 2).sum(axis=2)
    ours = group_errors(x, engine.dequantize(q), spec)
    assert np.all(ours <= start_err * (1 + 1e-9) + 1e-30)


def test_deterministic_and_weighted_choices_follow_the_weights() -> None:
    x = 0.02 * np.random.default_rng(3).standard_normal((32, 256), dtype=np.float32)
    spec = spec_of("fit")
    a, b = engine.quantize(x, spec), engine.quantize(x, spec)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.levels, b.levels)
    assert np.array_equal(a.level2.scale_codes, b.level2.scale_codes)
    w = np.ones(256)
    w[:8] = 1000.0  # eight input channels that matter
    weighted = codebook.quantize_codebook(x, spec, w)

    def werr(q: engine.QuantizedTensor) -> float:
        return float((w * (x.astype(np.float64) - engine.dequantize(q)) ** 2).sum())

    assert werr(weighted) < 0.9 * werr(a)


def test_weights_of_the_wrong_length_are_refused() -> None:
    x = np.ones((4, 64), np.float32)
    with pytest.raises(ValueError, match="63 importance weights for rows of 64 columns"):
        codebook.quantize_codebook(x, spec_of("iq4nl"), np.ones(63))
    with pytest.raises(ValueError, match="finite and non-negative"):
        codebook.quantize_codebook(x, spec_of("iq4nl"), -np.ones(64))


def test_zero_and_constant_groups_are_exact() -> None:
    x = np.zeros((3, 64), np.float32)
    x[1] = 0.5
    q = engine.quantize(x, spec_of("fit"))
    assert np.array_equal(engine.dequantize(q), x)


@pytest.mark.parametrize(
    ("name", "bits", "group", "sb", "floor_db", "max_bpw"),
    [
        ("fit", 4, 32, 7, 22.6, 4.25),
        ("iq4nl", 4, 32, 7, 22.5, 4.25),
        ("fit", 3, 16, 6, 17.2, 3.44),
    ],
)
def test_quality_at_the_rate(
    name: str, bits: int, group: int, sb: int, floor_db: float, max_bpw: float
) -> None:
    """A 64-row slice of the benchmark's Gaussian matrix (benchmarks/codebook.py has the full
    4096x4096 numbers): the SQNR floor and every stored byte under the rate."""
    x = 0.02 * np.random.default_rng(0).standard_normal((64, 4096), dtype=np.float32)
    spec = spec_of(name, bits, group, sb)
    _, stats = engine.quantize_with_error(x, spec)
    assert stats.sqnr_db >= floor_db
    assert 8 * stored_nbytes(TensorInfo("w", x.shape, "float32"), spec) / x.size <= max_bpw


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="needs 4 bits"):
        engine.quantize(np.ones((2, 32), np.float32), spec_of("nf4", bits=3))
    with pytest.raises(ValueError, match="second-level"):
        engine.quantize(np.ones((2, 32), np.float32), spec_of("fit", sb=None))
    with pytest.raises(engine.NonFiniteError):
        engine.quantize(np.full((2, 32), np.nan, np.float32), spec_of("fit"))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "m.npz"
    np.savez(
        path,
        w=(0.02 * rng.standard_normal((64, 128))).astype(np.float32),
        v=(0.02 * rng.standard_t(3, (48, 96))).astype(np.float32),
        b=np.zeros(8, np.float32),
    )
    return path


@pytest.mark.parametrize(("name", "bits"), [("fit", 4), ("iq4nl", 4), ("nf4", 4), ("fit", 3)])
def test_cli_round_trip(model: Path, tmp_path: Path, name: str, bits: int) -> None:
    out = tmp_path / "m.qc.safetensors"
    result = run("quantize", model, "-o", out, "--bits", bits, "--codebook", name, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    quantized = [t for t in report["tensors"] if t["action"] == "quantized"]
    assert [t["codebook"] for t in quantized] == [name, name]
    assert report["options"]["codebook"] == name
    assert run("verify", out, "--against", model).exit_code == 0
    with Artifact(out) as art:
        entry = next(e for e in art.entries if e.name == "w")
        assert (entry.quantized.levels is not None) == (name == "fit")
        x = np.load(model)["w"]
        q = engine.quantize(x, art.quantized(entry).spec)
        stored = art.quantized(entry)
        assert np.array_equal(stored.codes, q.codes)
        assert np.array_equal(stored.levels, q.levels)
        assert np.array_equal(art.tensor(entry), engine.dequantize(q))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--bits", "3", "--codebook", "iq4nl"), "--codebook iq4nl with --bits 3"),
        (("--bits", "8", "--codebook", "fit"), "its codes are 3 or 4 bits"),
        (("--bits", "4", "--codebook", "nf4", "--scheme", "affine"), "no zero-point"),
        (("--bits", "4", "--codebook", "fit", "--scale-bits", "0"), "second-level codes"),
    ],
)
def test_cli_refuses_combinations(model: Path, tmp_path: Path, args: tuple, fragment: str) -> None:
    out = tmp_path / "x.qc.safetensors"
    assert_clean_error(run("quantize", model, "-o", out, *args), fragment)
    assert not out.exists()


def test_budget_considers_codebook_candidates(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.qc.safetensors"
    result = run(
        "quantize", model, "-o", out, "--target-bpw", "4.25", "--codebook", "fit", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    w = next(t for t in report["tensors"] if t["name"] == "w")
    assert report["totals"]["bits_per_weight"] <= 4.25
    jsonschema.validate(report, schema())
    assert any(c.get("codebook") == "fit" for c in w["candidates"])
    assert all(c.get("codebook") in (None, "fit") for c in w["candidates"])
    assert len(w["candidates"]) > len(
        json.loads(
            run(
                "quantize",
                model,
                "-o",
                tmp_path / "c.qc.safetensors",
                "--target-bpw",
                "4.25",
                "--json",
            ).stdout
        )["tensors"][0]["candidates"]
    )
    assert run("verify", out, "--against", model).exit_code == 0


def good_entry() -> dict:
    return {
        "name": "w",
        "dtype": "float32",
        "shape": [4, 64],
        "action": "quantized",
        "reason": "r",
        "bits": 4,
        "scheme": "symmetric",
        "granularity": "group",
        "axis": 0,
        "group_size": 32,
        "range": "mse",
        "scale_dtype": "float32",
        "rows": 4,
        "cols": 64,
        "n_groups": 2,
        "packing": "bitstream-le",
        "codes": "w.qcodes",
        "scale": "w.qscale",
        "zero_point": None,
        "scale_bits": 7,
        "super_block": 256,
        "super": "w.qsuper",
        "codebook": "fit",
        "levels": "w.qlevels",
    }


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"codebook": "q9"}, "codebook 'q9' is not one of iq4nl, nf4, fit"),
        ({"codebook": "iq4nl"}, "levels"),
        ({"levels": None}, "levels"),
        ({"codebook": "nf4", "levels": None, "bits": 3, "packing": "bitstream-le"}, "bits 3"),
        ({"scheme": "affine", "zero_point": "w.qzero"}, "scheme"),
    ],
)
def test_recipe_check_covers_codebook_fields(change: dict, fragment: str) -> None:
    check_entry(good_entry())
    with pytest.raises(RecipeError, match=fragment):
        check_entry({**good_entry(), **change})


def test_gguf_export_writes_iq4nl_codes_as_they_are(model: Path, tmp_path: Path) -> None:
    """An artifact's iq4nl codes become IQ4_NL blocks with the same indices; the gguf package's
    reader and dequantize give the artifact's values up to the float16 rounding of the scale."""
    import gguf

    art_path = tmp_path / "m.qc.safetensors"
    assert run("quantize", model, "-o", art_path, "--bits", 4, "--codebook", "iq4nl").exit_code == 0
    out = tmp_path / "m.gguf"
    result = run("export", art_path, "--to", "gguf", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    types = {t["name"]: t["gguf_type"] for t in json.loads(result.stdout)["tensors"]}
    assert types == {"w": "IQ4_NL", "v": "IQ4_NL", "b": "F32"}
    reader = gguf.GGUFReader(out)
    with Artifact(art_path) as art:
        for t in reader.tensors:
            if t.name == "b":
                continue
            entry = next(e for e in art.entries if e.name == t.name)
            q = art.quantized(entry)
            got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(entry.shape)
            raw = np.asarray(t.data).reshape(-1, 18)
            idx = np.concatenate([raw[:, 2:] & 15, raw[:, 2:] >> 4], axis=1).reshape(q.codes.shape)
            assert np.array_equal(idx.astype(np.int16) - 8, q.codes)
            want = art.tensor(entry)
            bound = np.abs(want).max() * 2.0**-10
            assert np.abs(got - want).max() <= bound


def test_gguf_iq4nl_from_floats_matches_gguf_decode() -> None:
    import gguf

    from qcompress.engine import kquants

    x = (0.02 * np.random.default_rng(5).standard_normal((8, 64))).astype(np.float32)
    data = kquants.encode(x, "IQ4_NL")
    ours = kquants.decode(data, "IQ4_NL")
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.IQ4_NL).reshape(ours.shape)
    assert np.array_equal(ours, theirs)
    assert 10 * np.log10((x**2).sum() / ((x - ours) ** 2).sum()) > 22


def test_histogram_range_is_the_scaled_tables(model: Path, tmp_path: Path) -> None:
    """inspect's clip range of a codebook tensor spans every decoded value (the signed scales
    times the table's ends), not the evenly spaced code range."""
    from qcompress.histogram import _artifact_tensor

    out = tmp_path / "m.qc.safetensors"
    assert run("quantize", model, "-o", out, "--bits", 4, "--codebook", "fit").exit_code == 0
    with Artifact(out) as art:
        entry = next(e for e in art.entries if e.name == "v")
        values, clip, _ = _artifact_tensor(art, entry)
        assert clip is not None
        assert clip[0] <= values.min() and values.max() <= clip[1]
        assert clip[0] == pytest.approx(values.min(), rel=0.2)


GOLDEN = {
    ("iq4nl", 4): "7ff69686d2285220",
    ("nf4", 4): "988c139aa5a9d0a7",
    ("fit", 4): "2dc1490dc55d46b5",
    ("fit", 3): "25e8d0f46c771580",
}


@pytest.mark.parametrize(("name", "bits"), list(GOLDEN))
def test_golden_codes(name: str, bits: int) -> None:
    """The stored numbers (codes, scale codes, super-scales, levels) are pinned: numpy only, in
    a fixed order, so any CPU gives these bytes."""
    import hashlib

    r = np.random.default_rng(11)
    x = (0.02 * r.standard_t(4, (24, 200))).astype(np.float32)
    x[0] = 0
    x[1, :50] = 0.25
    group, sb = (32, 7) if bits == 4 else (16, 6)
    q = engine.quantize(x, spec_of(name, bits, group, sb))
    parts = (q.codes, q.level2.scale_codes, q.level2.super_scale, q.levels)
    digest = hashlib.sha256(b"".join(p.tobytes() for p in parts)).hexdigest()[:16]
    assert digest == GOLDEN[(name, bits)]
