"""Variable-rate codes through the CLI: --max-abs-error proven on every weight after a round
trip through each format, --min-sqnr reached, verify --against, --jobs byte-identical, and
every mistake a user can make refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from samples import assert_clean_error, run
from weights_factory import read_all, write_tensors

BOUND = 2.5e-3


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "dense/kernel": (0.02 * rng.standard_normal((64, 96))).astype(np.float32),
        "heavy/kernel": (0.02 * rng.standard_t(3, (48, 64))).astype(np.float32),
        "wide/kernel": (rng.standard_normal((40, 40)) * 3).astype(np.float64),
        "half/kernel": (0.1 * rng.standard_normal((32, 64))).astype(np.float16),
        "bias": np.zeros(96, np.float32),
        "steps": np.arange(12, dtype=np.int64),
    }


def _quantize(tmp_path: Path, fmt: str, *options: object) -> tuple[Path, Path, dict]:
    suffix = {"npz": ".npz", "h5": ".h5", "safetensors": ".safetensors"}[fmt]
    src = write_tensors(tmp_path / f"model{suffix}", fmt, _weights())
    out = tmp_path / "model.qc.safetensors"
    result = run("quantize", src, "-o", out, "--min-elements", 16, "--json", "--force", *options)
    assert result.exit_code == 0, result.output
    return src, out, json.loads(result.stdout)


@pytest.mark.parametrize("fmt", ["npz", "h5", "safetensors"])
def test_max_abs_error_holds_after_a_round_trip(tmp_path: Path, fmt: str) -> None:
    src, art, report = _quantize(tmp_path, fmt, "--max-abs-error", BOUND)
    quantized = [t for t in report["tensors"] if t["action"] == "quantized"]
    assert {t["mode"] for t in quantized} == {"variable-rate"}
    assert len(quantized) == 4
    back = tmp_path / f"back.{fmt if fmt != 'h5' else 'h5'}"
    assert run("dequantize", art, "-o", back, "--dtype", "float32").exit_code == 0
    original, _, _ = read_all(src)
    restored, _, _ = read_all(back)
    for name, x in original.items():
        y = restored[name]
        if x.dtype.kind != "f":
            assert np.array_equal(x, y)
            continue
        err = np.abs(x.astype(np.float64) - y.astype(np.float64))
        assert float(err.max()) <= BOUND, name
    for t in quantized:
        assert t["max_abs_error"] <= BOUND
        assert t["code_bits"] in (8, 16, 32)
        assert 0 < t["entropy_bits"] < t["code_bits"]
    verified = run("verify", art, "--against", src, "--max-abs-error", BOUND, "--json")
    assert verified.exit_code == 0, verified.output
    tighter = run("verify", art, "--against", src, "--max-abs-error", BOUND / 4)
    assert tighter.exit_code == 1  # the gate is real: a tighter bound fails


def test_min_sqnr_reaches_the_target_with_variable_rate_codes(tmp_path: Path) -> None:
    src, art, report = _quantize(tmp_path, "npz", "--min-sqnr", 30)
    for t in report["tensors"]:
        if t["action"] == "quantized":
            assert t["mode"] == "variable-rate" and t["sqnr_db"] >= 30
    assert run("verify", art, "--against", src, "--min-sqnr", 30).exit_code == 0
    _, _, fixed = _quantize(tmp_path, "npz", "--min-sqnr", 30, "--fixed-rate")
    modes = {t["mode"] for t in fixed["tensors"] if t["action"] == "quantized"}
    assert modes == {"fixed-rate"}


def test_max_rel_error_and_per_channel_steps(tmp_path: Path) -> None:
    src, art, report = _quantize(
        tmp_path, "npz", "--max-rel-error", 1e-3, "--granularity", "channel"
    )
    original, _, _ = read_all(src)
    back = tmp_path / "back.npz"
    assert run("dequantize", art, "-o", back, "--dtype", "float32").exit_code == 0
    restored, _, _ = read_all(back)
    for t in report["tensors"]:
        if t["action"] != "quantized":
            continue
        assert t["granularity"] == "channel"
        x = original[t["name"]].astype(np.float64)
        bound = 1e-3 * (x.max() - x.min())
        assert float(np.abs(x - restored[t["name"]]).max()) <= bound


def test_jobs_give_the_same_bytes(tmp_path: Path) -> None:
    src = write_tensors(tmp_path / "m.npz", "npz", _weights())
    outs = []
    for jobs in (1, 3):
        out = tmp_path / f"j{jobs}.qc.safetensors"
        args = ("--max-abs-error", BOUND, "--min-elements", 16, "--jobs", jobs)
        result = run("quantize", src, "-o", out, "--report", tmp_path / f"j{jobs}.json", *args)
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (("--max-abs-error", "0"), ("--max-abs-error 0.0", "positive")),
        (("--max-abs-error", "nan"), ("--max-abs-error nan", "positive")),
        (("--max-rel-error", "-1"), ("--max-rel-error -1.0", "positive")),
        (("--max-abs-error", "1e-3", "--fixed-rate"), ("variable-rate", "--fixed-rate")),
        (("--max-abs-error", "1e-3", "--min-sqnr", "20"), ("give one budget",)),
        (("--max-abs-error", "1e-3", "--bits", "4"), ("--bits",)),
        (("--max-abs-error", "1e-12"), ("'big'", "32 bits", "--keep 'big'")),
    ],
)
def test_mistakes_are_refused_in_one_line(
    tmp_path: Path, options: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    src = write_tensors(tmp_path / "m.npz", "npz", {"big": np.full((40, 40), 1e4, np.float32)})
    out = tmp_path / "m.qc.safetensors"
    result = run("quantize", src, "-o", out, *options)
    assert_clean_error(result, *fragments)
    assert not out.exists()


def test_a_corrupt_uniform_recipe_is_refused(tmp_path: Path) -> None:
    from qcompress.artifact.recipe import RecipeError, check_entry

    entry = {
        "name": "w",
        "dtype": "float32",
        "shape": [4, 4],
        "action": "quantized",
        "reason": "",
        "mode": "uniform",
        "target": "abs",
        "target_value": 0.1,
        "granularity": "tensor",
        "axis": None,
        "rows": 1,
        "cols": 16,
        "code_dtype": "int8",
        "codes": "w.ucodes",
        "step": "w.ustep",
    }
    check_entry(entry)
    for field, value, why in [
        ("mode", "zfp", "mode"),
        ("code_dtype", "int64", "code_dtype"),
        ("target_value", -1.0, "target_value"),
        ("granularity", "group", "granularity"),
        ("axis", 0, "axis"),
    ]:
        with pytest.raises(RecipeError, match=why):
            check_entry({**entry, field: value})


def test_sharded_checkpoint_keeps_the_bound(tmp_path: Path) -> None:
    from safetensors.numpy import load_file
    from test_sharded import SAMPLES, make_checkpoint

    index = make_checkpoint(tmp_path / "ckpt")
    result = run("quantize", index, "--max-abs-error", 0.01, "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {t["mode"] for t in report["tensors"] if t["action"] == "quantized"} == {"variable-rate"}
    artifact_index = index.parent / "model.qc.safetensors.index.json"
    assert run("verify", artifact_index, "--against", index, "--max-abs-error", 0.01).exit_code == 0
    single = tmp_path / "single.safetensors"
    assert run("dequantize", artifact_index, "-o", single).exit_code == 0
    original, restored = load_file(SAMPLES / "digits_mlp.safetensors"), load_file(single)
    for name, x in original.items():
        if x.dtype.kind == "f":
            assert float(np.abs(x.astype(np.float64) - restored[name]).max()) <= 0.01


def test_every_command_reads_a_variable_rate_artifact(tmp_path: Path) -> None:
    src, art, _ = _quantize(tmp_path, "npz", "--max-abs-error", BOUND)
    info = json.loads(run("inspect", art, "--json").stdout)
    modes = {t["name"]: t["mode"] for t in info["tensors"]}
    assert modes["dense/kernel"] == "variable-rate" and modes["bias"] is None
    assert info["float_bits_per_weight"] <= info["file_bits_per_weight"]
    for args in (
        ("inspect", art, "--tensor", "dense/kernel", "--histogram"),
        ("inspect", art, "--errors"),
        ("compare", src, art, "--max-abs-error", BOUND),
        ("export", art, "--to", "gguf", "-o", tmp_path / "m.gguf"),
        ("report", tmp_path / "model.qc.json", "--html", tmp_path / "r.html"),
    ):
        result = run(*args)
        assert result.exit_code == 0, (args, result.output)
    assert " vr " in run("inspect", art, "--errors").output


def test_a_plan_rule_sets_a_bound_for_its_tensors(tmp_path: Path) -> None:
    plan = tmp_path / "p.toml"
    plan.write_text('[[rule]]\nmatch = "heavy/*"\nmax_abs_error = 0.001\n')
    _, _, report = _quantize(tmp_path, "npz", "--plan", plan)
    by_name = {t["name"]: t for t in report["tensors"]}
    assert by_name["heavy/kernel"]["mode"] == "variable-rate"
    assert by_name["heavy/kernel"]["max_abs_error"] <= 0.001
    assert by_name["dense/kernel"]["mode"] == "fixed-rate"
    plan.write_text('[[rule]]\nmatch = "heavy/*"\nmax_abs_error = -1\n')
    src = tmp_path / "model.npz"
    result = run("quantize", src, "--plan", plan, "--force")
    assert_clean_error(result, "p.toml: line 3", "max_abs_error = -1", "positive")
