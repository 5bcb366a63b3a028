"""Gates a CI job can trust: NaN and Inf fail them, JSON never chokes on them, a gate that names
no tensor is an error, warnings survive -q, NO_COLOR means no escape codes, and a printed failing
value shows why it failed."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from samples import run
from test_recipe_validation import forge, save

from qcompress import api
from qcompress.checks.gates import Gate, shown
from qcompress.report import json_safe, schema


def strict_json(text: str) -> Any:
    """Parse JSON, refusing the NaN/Infinity tokens that Python would otherwise accept."""

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """a: clean; noisy: B with error around 40 dB; nan / inf / neginf: B with one bad value in w;
    a_nan: A itself holding a NaN."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(32, 64)).astype(np.float32)
    bias = rng.normal(size=(32,)).astype(np.float32)
    out = {"a": save(tmp_path / "a.npz", {"w": w, "bias": bias})}
    noise = (rng.normal(size=w.shape) * 0.01).astype(np.float32)
    out["noisy"] = save(tmp_path / "noisy.npz", {"w": w + noise, "bias": bias})
    for name, value in {"nan": np.nan, "inf": np.inf, "neginf": -np.inf}.items():
        bad = w.copy()
        bad[3, 5] = value
        out[name] = save(tmp_path / f"{name}.npz", {"w": bad, "bias": bias})
    bad_a = w.copy()
    bad_a[0, 0] = np.nan
    out["a_nan"] = save(tmp_path / "a_nan.npz", {"w": bad_a, "bias": bias})
    return out


GATES = {
    "min-sqnr": ("--min-sqnr", "30"),
    "max-abs-error": ("--max-abs-error", "10"),
    "gate-min-sqnr": ("--gate", "w:min_sqnr:30"),
    "gate-max-mse": ("--gate", "w*:max_mse:1"),
}


@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("bad", ["nan", "inf", "neginf"])
def test_nan_and_inf_in_b_fail_every_compare_gate(
    models: dict[str, Path], gate: str, bad: str
) -> None:
    """The clean pair passes the same gate, so the failure is the bad value's doing."""
    assert run("compare", models["a"], models["noisy"], *GATES[gate]).exit_code == 0
    result = run("compare", models["a"], models[bad], *GATES[gate], "--json")
    assert result.exit_code == 1, result.output
    assert "math domain" not in result.output
    doc = strict_json(result.stdout)
    assert doc["passed"] is False and doc["failures"] == ["w"]
    w = next(t for t in doc["tensors"] if t["name"] == "w")
    assert w["sqnr_db"] is None and w["nonfinite"]["sqnr_db"] == "NaN"
    assert w["nonfinite"]["max_abs_error"] in ("NaN", "Infinity")
    bias = next(t for t in doc["tensors"] if t["name"] == "bias")
    assert "nonfinite" not in bias and bias["sqnr_db"] is None  # exact: null, no mark


def test_nan_in_a_fails_too(models: dict[str, Path]) -> None:
    result = run("compare", models["a_nan"], models["a_nan"], "--min-sqnr", "30")
    assert result.exit_code == 1, result.output
    assert "nan" in result.stderr


def test_verify_against_original_fails_on_a_nan_in_a_kept_bias(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """The kept bias is stored as it was; a NaN there (from a bad input or an edit with
    consistent checksums) must fail the gate, and --json must stay strict JSON."""
    src = api.quantize_file(models["a"], api.QuantizeOptions(min_elements=16)).artifact

    def nan_bias(part: bytearray) -> None:
        part[0:4] = np.array([np.nan], np.float32).tobytes()

    art = forge(src, tmp_path / "nanbias.qc.safetensors", payload={"bias": nan_bias})
    assert run("verify", src, "--against", models["a"], "--min-sqnr", "30").exit_code == 0
    result = run("verify", art, "--against", models["a"], "--min-sqnr", "30", "--json")
    assert result.exit_code == 1, result.output
    doc = strict_json(result.stdout)
    assert doc["failures"] == ["bias"]
    bias = next(t for t in doc["tensors"] if t["name"] == "bias")
    assert bias["nonfinite"] == {"mse": "NaN", "max_abs_error": "NaN", "sqnr_db": "NaN"}
    assert bias["failed"] == ["*:min_sqnr >= 30 (got nan)"]


def test_nan_in_recorded_stats_is_encoded_by_inspect_and_verify_json(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """An artifact whose recorded stats hold NaN/Inf (consistent checksums): both commands print
    strict JSON with the marks, and verify's recorded-error gate fails."""
    src = api.quantize_file(models["a"], api.QuantizeOptions(min_elements=16)).artifact

    def bad_stats(part: bytearray) -> None:
        stats = np.frombuffer(bytes(part), np.float64).copy().reshape(-1, 3)
        stats[0] = [np.nan, np.inf, -np.inf]
        part[:] = stats.tobytes()

    art = forge(src, tmp_path / "stats.qc.safetensors", payload={"__qcompress__/stats": bad_stats})
    inspected = run("inspect", art, "--json")
    assert inspected.exit_code == 0, inspected.output
    first = strict_json(inspected.stdout)["tensors"][0]
    assert first["nonfinite"] == {"mse": "NaN", "max_abs_error": "Infinity", "sqnr_db": "-Infinity"}
    verified = run("verify", art, "--json", "--min-sqnr", "10")
    assert verified.exit_code == 1, verified.output
    assert strict_json(verified.stdout)["failures"] == [first["name"]]


def test_json_safe_marks_every_nonfinite_and_the_schema_accepts_it(
    models: dict[str, Path], tmp_path: Path
) -> None:
    report = api.quantize_file(models["a"], api.QuantizeOptions(min_elements=16)).report
    t = report["tensors"][0]
    t["original_min"], t["mse"] = math.nan, math.inf
    t["scale"] = [1.0, math.nan] if isinstance(t["scale"], list) else t["scale"]
    report["totals"]["overall_max_abs_error"] = -math.inf
    doc = strict_json(json.dumps(json_safe(report), allow_nan=False))
    jsonschema.validate(doc, schema())
    marks = doc["tensors"][0]["nonfinite"]
    assert marks["original_min"] == "NaN" and marks["mse"] == "Infinity"
    assert doc["totals"]["nonfinite"] == {"overall_max_abs_error": "-Infinity"}
    if isinstance(t["scale"], list):
        assert marks["scale/1"] == "NaN" and doc["tensors"][0]["scale"][1] is None
    # a clean report gets no marks at all
    clean = api.quantize_file(
        models["noisy"], api.QuantizeOptions(min_elements=16), output=tmp_path / "n.qc.safetensors"
    ).report
    assert "nonfinite" not in json.dumps(json_safe(clean))


# --- gates and globs that match nothing ----------------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "compare"])
def test_a_gate_matching_no_tensor_is_a_usage_error(models: dict[str, Path], command: str) -> None:
    art = api.quantize_file(models["a"], api.QuantizeOptions(min_elements=16)).artifact
    target = (art,) if command == "verify" else (models["a"], art)
    assert run(command, *target, "--gate", "w:min_sqnr:10").exit_code == 0
    result = run(command, *target, "--gate", "w.weight:min_sqnr:99")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "w.weight:min_sqnr >= 99" in lines[0]
    assert "matches no tensor" in lines[0] and "'w'" in lines[0]  # the close name
    assert "PASSED" not in result.output and result.stdout == ""


def test_keep_matching_nothing_warns_even_with_quiet_and_json(models: dict[str, Path]) -> None:
    for extra in (("-q",), ("--json",)):
        result = run(
            "quantize", models["a"], "--keep", "w.weight", "--keep", "bi*", "--force", *extra
        )
        assert result.exit_code == 0, result.output
        assert "warning: --keep 'w.weight' matches no tensor" in result.stderr
        assert "'bi*'" not in result.stderr  # it matches bias
        if extra == ("--json",):
            assert strict_json(result.stdout)["warnings"] == ["--keep 'w.weight' matches no tensor"]


def test_plan_rule_matching_nothing_warns_with_quiet(
    models: dict[str, Path], tmp_path: Path
) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('[[rule]]\nmatch = "nothing*"\nbits = 4\n')
    result = run("quantize", models["a"], "--plan", plan, "-q", "--force")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "matches no tensor" in result.stderr


def test_dequantize_note_survives_quiet(tmp_path: Path) -> None:
    import ml_dtypes

    x = np.random.default_rng(1).normal(size=(32, 64)).astype(ml_dtypes.bfloat16)
    src = save(tmp_path / "bf.safetensors", {"w": x})
    art = api.quantize_file(src, api.QuantizeOptions(min_elements=16)).artifact
    result = run("dequantize", art, "-o", tmp_path / "out.npz", "-q")
    assert result.exit_code == 0, result.output
    assert "bfloat16 tensors written as float32" in result.stderr


# --- rendering -----------------------------------------------------------------------------------

ESC = "\x1b"


@pytest.mark.parametrize("command", ["inspect", "compare", "quantize"])
def test_no_color_leaves_no_escape_codes_even_on_a_forced_terminal(
    models: dict[str, Path], command: str
) -> None:
    args = {
        "inspect": ("inspect", models["a"]),
        "compare": ("compare", models["a"], models["nan"], "--min-sqnr", "30"),
        "quantize": ("quantize", models["a"], "--force", "--keep", "nothing"),
    }[command]
    forced = run(*args, env={"FORCE_COLOR": "1", "NO_COLOR": ""})
    assert ESC in forced.output  # the check can fail: rich styles a forced terminal
    plain = run(*args, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert plain.output.strip() and ESC not in plain.output, repr(plain.output[:200])


def test_rich_console_forced_terminal_honours_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from qcompress.cli import render

    monkeypatch.setenv("NO_COLOR", "1")
    console = render.console(stderr=False)
    with console.capture() as captured:
        console.print("[bold italic red]x[/]")
    assert captured.get() == "x\n"
    assert console.color_system is None


@pytest.mark.parametrize(
    ("value", "limit", "at_least", "text"),
    [
        (22.473, 22.5, True, "22.47"),
        (22.4999999, 22.5, True, "22.4999999"),
        (29.96, 30.0, True, "29.96"),
        (0.0100001, 0.01, False, "0.0100001"),
        (0.25, 0.1, False, "0.25"),
        (math.nan, 30.0, True, "nan"),
        (math.inf, 1.0, False, "inf"),
    ],
)
def test_shown_value_visibly_fails_its_limit(
    value: float, limit: float, at_least: bool, text: str
) -> None:
    assert shown(value, limit, at_least) == text
    gate = Gate("*", "min_sqnr" if at_least else "max_abs_error", limit)
    field = "sqnr_db" if at_least else "max_abs_error"
    assert not gate.passes({field: value})


def test_failing_table_prints_the_digits_that_show_why(models: dict[str, Path]) -> None:
    """A limit a hair above the real SQNR: both the SQNR cell and the failure text print a
    number that is visibly below the limit, never the limit rounded."""
    sqnr = api.compare(models["a"], models["noisy"]).tensors[0].sqnr_db
    limit = math.floor(sqnr * 1000 + 1) / 1000  # above the SQNR by at most 0.001 dB
    assert sqnr < limit <= sqnr + 0.001
    result = run("compare", models["a"], models["noisy"], "--gate", f"w:min_sqnr:{limit}")
    assert result.exit_code == 1, result.output
    got = re.search(r"\(got ([-0-9.e]+)\)", result.stderr)
    assert got and float(got.group(1)) < limit, result.stderr
    row = next(line for line in result.stderr.splitlines() if line.startswith("│ w "))
    cell = row.split("│")[2].strip()
    assert float(cell) < limit, row


def test_compare_prints_every_tensor_worst_first(models: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    base = {f"t{i}": rng.normal(size=(16, 16)).astype(np.float32) for i in range(4)}
    a = save(tmp_path / "ta.npz", base)
    b_arrays = {
        "t0": base["t0"] + 0.001,  # good
        "t1": base["t1"] + 0.1,  # worst finite
        "t2": base["t2"],  # exact
        "t3": np.where(np.eye(16, dtype=bool), np.nan, base["t3"]).astype(np.float32),
    }
    b = save(tmp_path / "tb.npz", b_arrays)
    result = run("compare", a, b)
    assert result.exit_code == 0, result.output
    order = [m.group(1) for m in re.finditer(r"^│ (t\d) ", result.stderr, re.M)]
    assert order == ["t3", "t1", "t0", "t2"], result.stderr
    assert "exact" in result.stderr


def test_inspect_folds_long_names_on_80_columns(tmp_path: Path) -> None:
    name = "model.encoder.layers.0." + "very_long_attention_projection_" * 3 + "weight"
    src = save(tmp_path / "long.npz", {name: np.zeros((32, 64), np.float32)})
    art = api.quantize_file(src, api.QuantizeOptions(min_elements=16)).artifact
    for path in (src, art):
        result = run("inspect", path, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), result.stdout
        assert "…" not in result.stdout
        # a table folds the name inside its first column; too narrow for one, each tensor's
        # name gets lines of its own
        cells = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
        assert name in ("".join(cells) if cells else "".join(lines)), result.stdout


def test_sharded_keep_warning_only_for_a_glob_no_shard_matches(tmp_path: Path) -> None:
    """Each shard sees only its own tensors: a glob matching in one shard is not a typo."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    rng = np.random.default_rng(4)
    weight_map = {}
    for i in range(2):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save(ckpt / shard, {f"l{i}.weight": rng.normal(size=(16, 64)).astype(np.float32)})
        weight_map[f"l{i}.weight"] = shard
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    result = run("quantize", ckpt, "--keep", "l1.*", "--keep", "nothing", "-q", "--json")
    assert result.exit_code == 0, result.output
    assert strict_json(result.stdout)["warnings"] == ["--keep 'nothing' matches no tensor"]
    assert result.stderr.count("warning:") == 1, result.stderr


def test_inspect_renders_a_table_of_no_tensors(capsys: pytest.CaptureFixture[str]) -> None:
    """The width check measures the rows; with none (an empty file) it must still render."""
    from qcompress.cli import render
    from qcompress.inspect import WeightsInspection

    result = WeightsInspection(Path("e.npz"), "weights", "npz", "pytorch", 0, 0, ())
    render.inspect_table(result)
    assert "0 tensors shown" in capsys.readouterr().out
