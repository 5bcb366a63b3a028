"""verify and compare: checksums, gates, exit codes, and every failing tensor named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from samples import SAMPLES, run

from qcompress.checks.gates import parse_gate
from qcompress.errors import UsageError


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    model = tmp_path / "digits_mlp.npz"
    shutil.copy(SAMPLES / "digits_mlp.npz", model)
    out = tmp_path / "m.qc.safetensors"
    assert run("quantize", model, "-o", out, "--bits", "4", "-q").exit_code == 0
    return out


def test_verify_passes_and_reports_recorded_errors(artifact: Path) -> None:
    result = run("verify", artifact, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] and doc["checksums"]["failed"] == []
    report = json.loads(artifact.with_suffix(".json").read_text())
    recorded = {t["name"]: t["sqnr_db"] for t in report["tensors"]}
    for t in doc["tensors"]:
        if t["action"] == "quantized":
            assert t["sqnr_db"] == pytest.approx(recorded[t["name"]])


def test_verify_against_original_recomputes_the_same_errors(artifact: Path) -> None:
    original = artifact.parent / "digits_mlp.npz"
    recorded = json.loads(run("verify", artifact, "--json").stdout)
    recomputed = json.loads(run("verify", artifact, "--against", original, "--json").stdout)
    for a, b in zip(recorded["tensors"], recomputed["tensors"], strict=True):
        assert a["name"] == b["name"]
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-6, abs=0)
        assert a["max_abs_error"] == pytest.approx(b["max_abs_error"], rel=1e-6)


def test_verify_gate_fails_with_exit_1_naming_tensors(artifact: Path) -> None:
    result = run("verify", artifact, "--min-sqnr", "60", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert set(doc["failures"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert "fc1.weight" in result.stderr and "FAILED" in result.stderr
    # A per-glob gate only touches what it names.
    result = run("verify", artifact, "--gate", "fc3.*:min_sqnr:60", "--json")
    assert json.loads(result.stdout)["failures"] == ["fc3.weight"]
    assert run("verify", artifact, "--max-abs-error", "10").exit_code == 0


def test_verify_detects_every_flipped_payload_bit_in_a_sample(artifact: Path) -> None:
    data = artifact.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    rng = np.random.default_rng(0)
    for offset in rng.integers(header_end, len(data), size=40):
        corrupt = bytearray(data)
        corrupt[offset] ^= 1 << int(rng.integers(8))
        artifact.write_bytes(bytes(corrupt))
        result = run("verify", artifact, "--json")
        assert result.exit_code == 1, offset
        assert json.loads(result.stdout)["checksums"]["failed"]


def test_verify_refuses_non_artifacts(tmp_path: Path) -> None:
    result = run("verify", SAMPLES / "digits_mlp.safetensors")
    assert result.exit_code == 2 and "not a qcompress artifact" in result.stderr


def test_compare_any_formats_and_artifacts(artifact: Path) -> None:
    same = run("compare", SAMPLES / "digits_mlp.npz", SAMPLES / "digits_mlp.safetensors", "--json")
    assert same.exit_code == 0
    assert all(t["mse"] == 0 for t in json.loads(same.stdout)["tensors"])
    vs_artifact = run("compare", SAMPLES / "digits_mlp.npz", artifact, "--json", "--min-sqnr", "10")
    assert vs_artifact.exit_code == 0
    doc = json.loads(vs_artifact.stdout)
    fc1 = next(t for t in doc["tensors"] if t["name"] == "fc1.weight")
    assert 10 < fc1["sqnr_db"] < 40
    gated = run("compare", SAMPLES / "digits_mlp.npz", artifact, "--min-sqnr", "40")
    assert gated.exit_code == 1 and "fc1.weight" in gated.stderr


def test_compare_mismatched_models(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, w=np.zeros((4, 4), np.float32), v=np.zeros(3, np.float32))
    np.savez(b, w=np.zeros((4, 5), np.float32), v=np.zeros(3, np.float32))
    result = run("compare", a, b)
    assert result.exit_code == 2 and "'w'" in result.stderr and "shape" in result.stderr
    np.savez(b, w=np.zeros((4, 4), np.float32))
    result = run("compare", a, b)
    assert result.exit_code == 2 and "lacks" in result.stderr and "'v'" in result.stderr


def test_gate_parsing() -> None:
    gate = parse_gate("model/layer:0/*:min_sqnr:30")
    assert gate.pattern == "model/layer:0/*" and gate.limit == 30
    assert gate.passes({"sqnr_db": None, "max_abs_error": 0, "mse": 0})  # exact passes
    assert not gate.passes({"sqnr_db": 29.9, "max_abs_error": 0, "mse": 0})
    for bad in ("nope", "x:psnr:3", "x:min_sqnr:abc", ":min_sqnr:3", "x:min_sqnr:nan"):
        with pytest.raises(UsageError):
            parse_gate(bad)
