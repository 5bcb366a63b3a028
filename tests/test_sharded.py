"""Sharded checkpoints, --jobs and streaming: same bytes whichever way the work is split."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from samples import SAMPLES, accuracy, run

from qcompress import api
from qcompress.formats import open_weights
from qcompress.formats.base import TensorInfo
from qcompress.formats.safetensors import SafetensorsReader, write_safetensors
from qcompress.report import schema

SHARDS = {
    "model-00001-of-00002.safetensors": ["fc1.weight", "fc1.bias", "classes"],
    "model-00002-of-00002.safetensors": ["fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"],
}


def make_checkpoint(folder: Path) -> Path:
    """The sample model split into two shards with a Hugging Face style index."""
    folder.mkdir(exist_ok=True)
    tensors = load_file(SAMPLES / "digits_mlp.safetensors")
    weight_map = {}
    for shard, names in SHARDS.items():
        save_file({n: tensors[n] for n in names}, folder / shard, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(names, shard)
    index = folder / "model.safetensors.index.json"
    total = sum(t.nbytes for t in tensors.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


def test_sharded_checkpoint_round_trip(tmp_path: Path) -> None:
    index = make_checkpoint(tmp_path / "ckpt")
    result = run("quantize", index, "--bits", "8", "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    folder = index.parent
    assert (folder / "model-00001-of-00002.qc.safetensors").is_file()
    assert (folder / "model-00002-of-00002.qc.json").is_file()
    artifact_index = folder / "model.qc.safetensors.index.json"
    doc = json.loads(artifact_index.read_text())
    assert doc["weight_map"]["fc1.weight.qcodes"] == "model-00001-of-00002.qc.safetensors"
    assert doc["weight_map"]["fc3.bias"] == "model-00002-of-00002.qc.safetensors"
    names = [t["name"] for t in report["tensors"]]
    assert sorted(names[:3]) == sorted(SHARDS["model-00001-of-00002.safetensors"])
    assert sorted(names[3:]) == sorted(SHARDS["model-00002-of-00002.safetensors"])
    assert len(report["shards"]) == 2

    # Every command takes the sharded artifact, by its index or by its folder.
    info = json.loads(run("inspect", artifact_index, "--json").stdout)
    assert info["kind"] == "artifact" and len(info["tensors"]) == 7
    assert run("verify", artifact_index, "--against", index, "--min-sqnr", "30").exit_code == 0
    assert run("compare", index, artifact_index, "--min-sqnr", "30").exit_code == 0

    single = tmp_path / "single.npz"
    assert run("dequantize", artifact_index, "-o", single).exit_code == 0
    assert accuracy(single) == pytest.approx(accuracy(SAMPLES / "digits_mlp.npz"), abs=0.005)

    out = tmp_path / "out"
    out.mkdir()
    rebuilt = out / "model.safetensors.index.json"
    assert run("dequantize", artifact_index, "-o", rebuilt).exit_code == 0
    rebuilt_doc = json.loads(rebuilt.read_text())
    original_doc = json.loads(index.read_text())
    assert rebuilt_doc["weight_map"] == original_doc["weight_map"]
    assert rebuilt_doc["metadata"] == original_doc["metadata"]
    with safe_open(str(out / "model-00001-of-00002.safetensors"), framework="numpy") as f:
        assert set(f.keys()) == set(SHARDS["model-00001-of-00002.safetensors"])
        assert f.metadata() == {"format": "pt"}
    assert run("compare", index, rebuilt, "--min-sqnr", "30").exit_code == 0


def test_shares_then_merge_equal_one_run(tmp_path: Path) -> None:
    whole = make_checkpoint(tmp_path / "whole")
    split = make_checkpoint(tmp_path / "split")
    assert run("quantize", whole, "-q", "--bits", "4").exit_code == 0
    for share in ("1/2", "2/2"):
        result = run("quantize", split, "--shard", share, "--bits", "4")
        assert result.exit_code == 0, result.output
        assert "artifact:" in result.stderr
    assert not (split.parent / "model.qc.safetensors.index.json").exists()
    assert run("quantize", split, "--merge", "--bits", "4", "-q").exit_code == 0
    for name in ("model-00001-of-00002.qc.safetensors", "model-00002-of-00002.qc.safetensors"):
        assert (whole.parent / name).read_bytes() == (split.parent / name).read_bytes()
    a = json.loads((whole.parent / "model.qc.json").read_text())
    b = json.loads((split.parent / "model.qc.json").read_text())
    assert a["tensors"] == b["tensors"] and a["totals"] == b["totals"]


def test_merge_before_all_shards_are_done(tmp_path: Path) -> None:
    index = make_checkpoint(tmp_path / "ckpt")
    assert run("quantize", index, "--shard", "1/2", "-q").exit_code == 0
    result = run("quantize", index, "--merge")
    assert result.exit_code == 2
    assert "model-00002-of-00002.qc.json: missing" in result.stderr


def test_missing_shard_and_bad_share(tmp_path: Path) -> None:
    index = make_checkpoint(tmp_path / "ckpt")
    assert run("quantize", index, "--shard", "3/2").exit_code == 2
    (index.parent / "model-00002-of-00002.safetensors").unlink()
    result = run("quantize", index)
    assert result.exit_code == 2 and "model-00002-of-00002.safetensors is missing" in result.stderr
    assert not list(index.parent.glob("*.qc.*"))


def test_jobs_do_not_change_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tensors = {
        f"layer{i}.weight": rng.standard_t(3, size=(96, 200)).astype(np.float32) for i in range(7)
    }
    model = tmp_path / "m.safetensors"
    save_file(tensors, model)
    outputs = []
    for jobs in (1, 2, 5):
        out = tmp_path / f"j{jobs}.safetensors"
        args = ["quantize", model, "-o", out, "--bits", "4", "--jobs", jobs, "-q"]
        assert run(*args).exit_code == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_reader_holds_at_most_jobs_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    model = tmp_path / "m.safetensors"
    save_file({f"w{i}": rng.normal(size=(64, 64)).astype(np.float32) for i in range(12)}, model)
    held: set[str] = set()
    peak = [0]
    real_read, real_release = SafetensorsReader.read, SafetensorsReader.release

    def read(self: SafetensorsReader, name: str) -> np.ndarray:
        if self.path == model:  # the input, not the artifact being checked
            held.add(name)
            peak[0] = max(peak[0], len(held))
        return real_read(self, name)

    def release(self: SafetensorsReader, name: str) -> None:
        if self.path == model:
            held.discard(name)
        real_release(self, name)

    monkeypatch.setattr(SafetensorsReader, "read", read)
    monkeypatch.setattr(SafetensorsReader, "release", release)
    api.quantize_file(model, output=tmp_path / "a.safetensors", jobs=1)
    assert peak[0] == 1
    peak[0] = 0
    api.quantize_file(model, output=tmp_path / "b.safetensors", jobs=3)
    assert 1 < peak[0] <= 3


def test_streamed_artifact_equals_in_memory_write(tmp_path: Path) -> None:
    """Writing the same stored tensors in one go, all in memory, gives the same bytes (without
    the entropy stage, whose reserved header has more padding than an in-memory write's)."""
    artifact = tmp_path / "m.qc.safetensors"
    plain = api.QuantizeOptions(entropy="none")
    api.quantize_file(SAMPLES / "digits_mlp.npz", plain, output=artifact)
    with safe_open(str(artifact), framework="numpy") as f:
        metadata = f.metadata()
    with open_weights(artifact) as reader:
        infos: list[TensorInfo] = reader.tensor_infos()
        arrays = [np.array(reader.read(i.name)) for i in infos]
    again = tmp_path / "again.safetensors"
    write_safetensors(again, infos, arrays, metadata)
    assert again.read_bytes() == artifact.read_bytes()


def test_jobs_split_one_large_tensor_without_changing_bytes(tmp_path: Path) -> None:
    """With fewer tensors than jobs, the rows of each tensor are split over the threads."""
    rng = np.random.default_rng(4)
    model = tmp_path / "one.safetensors"
    save_file({"w": rng.standard_t(3, size=(600, 500)).astype(np.float32)}, model)
    for bits in (8, 4):
        outputs = []
        for jobs in (1, 2, 3):
            out = tmp_path / f"b{bits}j{jobs}.safetensors"
            api.quantize_file(model, api.QuantizeOptions(bits=bits), output=out, jobs=jobs)
            outputs.append(out.read_bytes())
        assert outputs[0] == outputs[1] == outputs[2]
