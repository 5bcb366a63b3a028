"""Good input that must work: artifact paths, output folders, checkpoint naming, many tensors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from samples import SAMPLES, run

from qcompress.errors import UsageError
from qcompress.formats.sharded import ShardIndex
from qcompress.quantize.sharded import parse_share, sharded_outputs

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


HEAVY = ("ml_dtypes", "numba", "h5py", "safetensors", "xxhash")
PROBE = """
import sys
from qcompress.cli import main
sys.argv = ["qcompress", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code
print(" ".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def loaded_modules(*args: object) -> list[str]:
    """The heavy modules a CLI command imports, run in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.strip().splitlines()[-1].split() if result.stderr.strip() else []


def test_float32_inspect_imports_nothing_heavy() -> None:
    """Start-up: ml_dtypes (half a second), numba, h5py load only when a file needs them."""
    assert loaded_modules("inspect", NPZ, "--json") == []
    assert loaded_modules("inspect", SAMPLES / "digits_mlp.safetensors", "--json") == []


def test_heavy_modules_load_when_needed(tmp_path: Path) -> None:
    assert "h5py" in loaded_modules("inspect", SAMPLES / "digits_mlp.h5", "--json")
    import ml_dtypes

    bf16 = tmp_path / "bf16.safetensors"
    from qcompress.formats import TensorInfo, write_weights

    x = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    write_weights(
        bf16, "safetensors", [TensorInfo("w", (64, 64), "bfloat16")], [x.astype(ml_dtypes.bfloat16)]
    )
    assert "ml_dtypes" in loaded_modules("inspect", bf16, "--json")
    out = tmp_path / "bf16.qc.safetensors"
    assert "ml_dtypes" in loaded_modules("quantize", bf16, "-o", out, "-q")
    back = tmp_path / "back.safetensors"
    assert "ml_dtypes" in loaded_modules("dequantize", out, "-o", back)
    from qcompress.formats import open_weights

    with open_weights(back) as reader:
        y = reader.read("w")
    assert str(y.dtype) == "bfloat16"
    assert np.abs(y.astype(np.float32) - x).max() <= 2 / 127


SLURM = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "1"}


@pytest.mark.parametrize(
    ("spec", "env", "share"),
    [
        ("2/4", {}, (2, 4)),
        ("2/4", {"SLURM_ARRAY_TASK_ID": "0", **SLURM}, (2, 4)),  # explicit wins, env unread
        ("auto", {"SLURM_ARRAY_TASK_ID": "0", **SLURM}, (1, 4)),
        ("auto", {"SLURM_ARRAY_TASK_ID": "3", **SLURM}, (4, 4)),
        ("auto/4", {"SLURM_ARRAY_TASK_ID": "2", **SLURM}, (3, 4)),
        # --array=1-4 and --array=0-12:4
        ("auto", {**SLURM, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1"}, (1, 4)),
        ("auto", {**SLURM, "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_STEP": "4"}, (3, 4)),
        ("auto/3", {"JOB_COMPLETION_INDEX": "0"}, (1, 3)),
        ("auto/3", {"JOB_COMPLETION_INDEX": "2"}, (3, 3)),
    ],
)
def test_shard_from_scheduler(spec: str, env: dict[str, str], share: tuple[int, int]) -> None:
    assert parse_share(spec, env) == share


@pytest.mark.parametrize(
    ("spec", "env", "message"),
    [
        ("auto", {}, "no scheduler index found"),
        ("auto/4", {"JOB_COMPLETION_INDEX": " "}, "no scheduler index found"),
        ("auto", {"JOB_COMPLETION_INDEX": "1"}, "pass --shard auto/N"),
        ("auto/3", {"JOB_COMPLETION_INDEX": "3"}, "K must be from 1 to N (got 4/3)"),
        ("auto/3", {"JOB_COMPLETION_INDEX": "x"}, "JOB_COMPLETION_INDEX='x' is not a whole number"),
        ("auto/3", {"JOB_COMPLETION_INDEX": "-1"}, "JOB_COMPLETION_INDEX='-1' is negative"),
        ("auto/0", {"JOB_COMPLETION_INDEX": "0"}, "N must be at least 1"),
        ("auto/x", {"JOB_COMPLETION_INDEX": "0"}, "expected auto/N"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is not"),
        ("auto/5", {"SLURM_ARRAY_TASK_ID": "1", **SLURM}, "has 4 tasks"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "4", **SLURM}, "K must be from 1 to N (got 5/4)"),
        ("auto", {**SLURM, "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_STEP": "2"}, "STEP=2"),
        (
            "auto/2",
            {"SLURM_ARRAY_TASK_ID": "0", **SLURM, "JOB_COMPLETION_INDEX": "0"},
            "both SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX",
        ),
        ("1-4", {}, "expected K/N (e.g. 1/4), auto or auto/N"),
        ("0/4", {}, "K must be from 1 to N"),
    ],
)
def test_shard_from_scheduler_errors(spec: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_share(spec, env)


def test_shard_auto_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pods of an indexed Job, then the merge: the same bytes as one run."""
    index = two_shards(tmp_path / "ckpt")
    whole = tmp_path / "whole"
    assert run("quantize", index, "-o", whole, "-q").exit_code == 0
    fanned = tmp_path / "fanned"
    for pod in ("0", "1"):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", pod)
        result = run("quantize", index, "-o", fanned, "--shard", "auto/2", "-q")
        assert result.exit_code == 0, result.output
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    missing = run("quantize", index, "-o", fanned, "--shard", "auto")
    assert missing.exit_code == 2 and "no scheduler index found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert run("quantize", index, "-o", fanned, "--merge", "-q").exit_code == 0
    for name in ("model-00001-of-00002.qc.safetensors", "model-00002-of-00002.qc.safetensors"):
        assert (whole / name).read_bytes() == (fanned / name).read_bytes()


def test_artifact_checksums_are_xxh3_128(tmp_path: Path) -> None:
    import xxhash
    from safetensors import safe_open

    from qcompress.artifact import recipe as artifact

    out = tmp_path / "a.qc.safetensors"
    assert run("quantize", NPZ, "-o", out, "-q").exit_code == 0
    with safe_open(out, "np") as f:
        recipe = json.loads(f.metadata()["qcompress"])
        assert recipe["format_version"] == 3  # the codes are entropy-coded (format 3)
        assert recipe["coded"]
        assert recipe["integrity"]["algorithm"] == "xxh3-128"
        assert recipe["integrity"]["tensor"] == "__qcompress__/xxh3_128"
        table = f.get_tensor("__qcompress__/xxh3_128")
        covers = recipe["integrity"]["covers"]
        assert table.shape == (len(covers), 16)
        for row, name in zip(table, covers[:-1], strict=False):
            data = np.ascontiguousarray(f.get_tensor(name)).tobytes()
            assert bytes(row) == xxhash.xxh3_128_digest(data)
    assert bytes(table[-1]) == xxhash.xxh3_128_digest(artifact.recipe_json(recipe).encode())
    report = json.loads(out.with_suffix(".json").read_text())
    import hashlib

    assert report["artifact"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report["input"]["sha256"] == hashlib.sha256(NPZ.read_bytes()).hexdigest()


def make_old_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A format 1 artifact (SHA-256 checksums), as qcompress wrote them before xxh3-128."""
    from qcompress.artifact import recipe as artifact

    with monkeypatch.context() as m:
        m.setattr(artifact, "FORMAT_VERSION", 1)
        m.setattr(artifact, "DIGEST", "sha256")
        m.setattr(artifact, "CHECKSUM_TENSOR", "__qcompress__/sha256")
        out = tmp_path / "old.qc.safetensors"
        # format 1 had no entropy stage
        assert run("quantize", NPZ, "-o", out, "-q", "--entropy", "none").exit_code == 0
    return out


def test_format_1_artifacts_still_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = make_old_artifact(tmp_path, monkeypatch)
    assert b"__qcompress__/sha256" in old.read_bytes()[:4096]
    assert run("verify", old, "--against", NPZ, "--min-sqnr", "30").exit_code == 0
    assert run("dequantize", old, "-o", tmp_path / "back.npz").exit_code == 0
    data = bytearray(old.read_bytes())
    data[-100] ^= 1  # a bit in the stats tensor (stored last before the checksum table)
    old.write_bytes(bytes(data))
    failed = run("verify", old)
    assert failed.exit_code == 1 and "checksum" in failed.output


def test_flipped_bit_caught_by_xxh3(tmp_path: Path) -> None:
    out = tmp_path / "a.qc.safetensors"
    assert run("quantize", NPZ, "-o", out, "-q").exit_code == 0
    data = bytearray(out.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 10] ^= 0x10  # the first stored tensor's bytes
    out.write_bytes(bytes(data))
    result = run("verify", out)
    assert result.exit_code == 1 and "checksum" in result.output


def test_unknown_checksum_algorithm_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qcompress.artifact import recipe as artifact

    fake = artifact.Digest("__qcompress__/md5", 16, artifact._xxh3_128)
    with monkeypatch.context() as m:
        m.setitem(artifact.DIGESTS, "md5", fake)
        m.setattr(artifact, "DIGEST", "md5")
        m.setattr(artifact, "CHECKSUM_TENSOR", fake.tensor)
        out = tmp_path / "md5.qc.safetensors"
        assert run("quantize", NPZ, "-o", out, "-q").exit_code == 0
    for command in ("verify", "inspect"):
        result = run(command, out)
        assert result.exit_code == 2
        assert "unknown checksum algorithm 'md5'" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_v1_recipe_claiming_xxh3_is_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qcompress.artifact import recipe as artifact

    with monkeypatch.context() as m:
        m.setattr(artifact, "FORMAT_VERSION", 1)
        out = tmp_path / "mixed.qc.safetensors"
        # quantize reopens what it wrote as a reader would, and the reader refuses it
        result = run("quantize", NPZ, "-o", out, "-q", "--entropy", "none")
    assert result.exit_code == 2 and "unknown checksum algorithm 'xxh3-128'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_file_hash_in_batches_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small tensors are batched to the SHA-256 thread, with a bounded backlog; the digest is
    still that of the whole file, in order."""
    import hashlib

    from qcompress.artifact import writer as artifact

    monkeypatch.setattr(artifact, "FILE_HASH_BATCH", 100)
    monkeypatch.setattr(artifact, "FILE_HASH_BACKLOG", 300)
    rng = np.random.default_rng(5)
    model = tmp_path / "m.npz"
    np.savez(
        model,
        **{f"t{i}": rng.standard_normal((i % 7 + 1, 9)).astype(np.float32) for i in range(60)},
    )
    out = tmp_path / "m.qc.safetensors"
    assert run("quantize", model, "-o", out, "-q", "--min-elements", "1").exit_code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["artifact"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> dict[str, int]:
    calls = {"n": 0}
    original = getattr(owner, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("suffix", ["npz", "safetensors"])
def test_no_per_tensor_rescan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """100k tiny tensors must cost linear time: the steps that walk every tensor (listing them,
    parsing a header, building or checking the recipe, writing the report) run a fixed number of
    times per command, the same for 40 tensors as for 400, never once per tensor."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from many_tensors import write_many

    from qcompress import api, report
    from qcompress.artifact import layout as artifact
    from qcompress.formats import npz, safetensors

    counts = []
    for n in (40, 400):
        folder = tmp_path / str(n)
        folder.mkdir()
        model = dict(zip(("npz", "safetensors"), write_many(folder, n), strict=True))[suffix]
        with monkeypatch.context() as m:
            calls = {
                "npz index": count_calls(m, npz.NpzReader, "_index"),
                "safetensors parse": count_calls(m, safetensors.SafetensorsReader, "_parse"),
                "list safetensors": count_calls(m, safetensors.SafetensorsReader, "tensor_infos"),
                "list npz": count_calls(m, npz.NpzReader, "tensor_infos"),
                "recipe": count_calls(m, artifact, "build_recipe"),
                "header": count_calls(m, safetensors, "encode_header"),
                "json": count_calls(m, report, "dumps"),
            }
            out = folder / "m.qc.safetensors"
            api.quantize_file(model, output=out)
            api.inspect(model)
            api.inspect(out)
            api.verify(out)
        counts.append({k: v["n"] for k, v in calls.items()})
    assert counts[0] == counts[1]
    assert counts[1]["safetensors parse"] <= 6 and counts[1]["npz index"] <= 3
