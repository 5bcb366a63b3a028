"""Good input that must work: artifact paths, output folders, checkpoint naming, many tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from samples import SAMPLES, run

from qcompress.formats.sharded import ShardIndex
from qcompress.sharding import sharded_outputs

NPZ = SAMPLES / "digits_mlp.npz"


@pytest.mark.parametrize("name", ["out.npz", "out.h5", "out", "out.safetensors.bak", "out.json"])
def test_artifact_path_must_end_in_safetensors(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    result = run("quantize", NPZ, "-o", out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{out}: an artifact is a safetensors file" in lines[0]
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no artifact, no report


def test_artifact_path_suffix_is_case_insensitive(tmp_path: Path) -> None:
    result = run("quantize", NPZ, "-o", tmp_path / "OUT.SafeTensors", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "OUT.SafeTensors").is_file() and (tmp_path / "OUT.json").is_file()


def hf_single(folder: Path) -> Path:
    """A Hugging Face checkpoint with one ``model.safetensors`` and its index."""
    folder.mkdir()
    tensors = load_file(SAMPLES / "digits_mlp.safetensors")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    weight_map = dict.fromkeys(tensors, "model.safetensors")
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def test_single_file_checkpoint_with_index(tmp_path: Path) -> None:
    index = hf_single(tmp_path / "ckpt")
    result = run("quantize", index, "-q")
    assert result.exit_code == 0, result.output
    folder = index.parent
    report = json.loads((folder / "model.qc.json").read_text())
    assert report["input"]["path"] == str(index)  # the checkpoint's report, as documented
    shard_report = json.loads((folder / "model.qc.shard.json").read_text())
    assert shard_report["input"]["path"] == str(folder / "model.safetensors")
    assert (folder / "model.qc.safetensors").is_file()
    verified = run("verify", folder / "model.qc.safetensors.index.json", "--against", index)
    assert verified.exit_code == 0, verified.output


def test_single_file_checkpoint_shares_then_merge(tmp_path: Path) -> None:
    index = hf_single(tmp_path / "ckpt")
    assert run("quantize", index, "--shard", "1/1", "-q").exit_code == 0
    merged = run("quantize", index, "--merge", "-q")
    assert merged.exit_code == 0, merged.output
    assert (index.parent / "model.qc.safetensors.index.json").is_file()


@pytest.mark.parametrize(
    ("shards", "report"),
    [
        (["model.safetensors"], None),
        (["a.safetensors", "a"], None),  # both stems are "a"
        (["x.safetensors", "x.qc.safetensors"], None),  # an input named like an output
        (["m.safetensors", "n.safetensors"], "m.qc.json"),  # --report on a shard's report name
        (["model.qc.shard.safetensors", "model.safetensors", "model.qc"], None),
    ],
)
def test_output_names_never_collide(tmp_path: Path, shards: list[str], report: str | None) -> None:
    """The class behind ``model.qc.json: given for two outputs``: every output name is distinct
    and none is an input file, whatever the index calls its shards."""
    index = ShardIndex(
        tmp_path / "model.safetensors.index.json",
        {},
        {f"t{i}": s for i, s in enumerate(shards)},
    )
    outs = sharded_outputs(index, None, tmp_path / report if report else None)
    outputs = [outs.index, outs.report, *(p for pair in outs.shards.values() for p in pair)]
    assert len(set(outputs)) == len(outputs)
    inputs = {index.path, *(index.shard_path(s) for s in shards)}
    assert not inputs & set(outputs)
    assert outs.report == (tmp_path / report if report else tmp_path / "model.qc.json")
    assert outs.index == tmp_path / "model.qc.safetensors.index.json"
    # Deterministic: a --shard run elsewhere and the --merge compute the same names.
    assert sharded_outputs(index, None, outs.report) == outs


def test_regular_checkpoint_keeps_its_documented_names(tmp_path: Path) -> None:
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = ShardIndex(
        tmp_path / "model.safetensors.index.json", {}, {"a": shards[0], "b": shards[1]}
    )
    outs = sharded_outputs(index, None, None)
    assert {p.name for pair in outs.shards.values() for p in pair} == {
        "model-00001-of-00002.qc.safetensors",
        "model-00001-of-00002.qc.json",
        "model-00002-of-00002.qc.safetensors",
        "model-00002-of-00002.qc.json",
    }


def two_shards(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    weight_map = {}
    for i in (1, 2):
        shard = f"model-0000{i}-of-00002.safetensors"
        save_file(
            {f"l{i}.weight": rng.standard_normal((64, 64)).astype(np.float32)}, folder / shard
        )
        weight_map[f"l{i}.weight"] = shard
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def test_output_folder_is_created(tmp_path: Path) -> None:
    index = two_shards(tmp_path / "ckpt")
    new = tmp_path / "new"
    result = run("quantize", index.parent, "-o", new, "-q")
    assert result.exit_code == 0, result.output
    assert (new / "model.qc.safetensors.index.json").is_file()
    assert (new / "model.qc.json").is_file()
    assert run("verify", new / "model.qc.safetensors.index.json").exit_code == 0
    # Shares on several machines each find (or create) the folder; the merge writes into it.
    shared = tmp_path / "shared"
    for share in ("1/2", "2/2"):
        assert run("quantize", index, "-o", shared, "--shard", share, "-q").exit_code == 0
    assert run("quantize", index, "-o", shared, "--merge", "-q").exit_code == 0
    assert (shared / "model.qc.safetensors.index.json").read_bytes() == (
        new / "model.qc.safetensors.index.json"
    ).read_bytes()


def test_output_folder_existing_and_refusals(tmp_path: Path) -> None:
    index = two_shards(tmp_path / "ckpt")
    existing = tmp_path / "existing"
    existing.mkdir()
    assert run("quantize", index, "-o", existing, "-q").exit_code == 0
    again = run("quantize", index, "-o", existing, "-q")
    assert again.exit_code == 2 and "already exists; pass --force" in again.stderr
    deep = run("quantize", index, "-o", tmp_path / "no" / "such", "-q")
    assert deep.exit_code == 2 and "no: does not exist" not in deep.stderr
    assert f"folder {tmp_path / 'no'} does not exist" in deep.stderr
    assert not (tmp_path / "no").exists()
    # A failing run leaves no folder behind that it created.
    (index.parent / "model-00002-of-00002.safetensors").unlink()
    failed = run("quantize", index, "-o", tmp_path / "made", "-q")
    assert failed.exit_code == 2 and "is missing" in failed.stderr
    assert not (tmp_path / "made").exists()
