"""inspect, verify and compare return frozen typed results; the JSON documents the CLI prints
are made from them at the edge (``as_dict``), with the fields, order and values of before.

The field lists below are the documents' contract (scripts parse them): a change here is a
change users see."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from samples import run

from qcompress import api
from qcompress.documents import OMIT_NONE, as_document
from qcompress.formats import TensorInfo, write_weights

INSPECT_WEIGHTS = ["path", "kind", "format", "layout", "file_bytes", "parameters", "tensors"]
INSPECT_ARTIFACT = [
    "path",
    "kind",
    "format",
    "source_format",
    "file_bytes",
    "parameters",
    "bits_per_weight",
    "bits_per_weight_before_entropy",
    "float_bits_per_weight",
    "file_bits_per_weight",
    "by_width",
    "tensors",
]
ARTIFACT_TENSOR = [
    "name",
    "shape",
    "dtype",
    "parameters",
    "bytes",
    "action",
    "bits",
    "scheme",
    "granularity",
    "axis",
    "group_size",
    "mode",
    "stored_bytes",
    "raw_stored_bytes",
    "entropy_coder",
    "mse",
    "max_abs_error",
    "sqnr_db",
]
VERIFY = ["artifact", "against", "passed", "checksums", "gates", "failures", "tensors"]
VERIFY_TENSOR = ["name", "action", "bits", "mse", "max_abs_error", "sqnr_db", "failed"]
COMPARE = ["a", "b", "passed", "gates", "failures", "tensors"]
COMPARE_TENSOR = ["name", "shape", "mse", "max_abs_error", "sqnr_db", "failed"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("typed")
    rng = np.random.default_rng(5)
    arrays = {
        "dense/kernel": rng.normal(size=(32, 64)).astype(np.float32),
        "dense/bias": rng.normal(size=(32,)).astype(np.float32),
        "steps": np.arange(3, dtype=np.int64),
    }
    src = tmp / "m.safetensors"
    infos = [TensorInfo(n, a.shape, a.dtype.name) for n, a in arrays.items()]
    write_weights(src, "safetensors", infos, iter(arrays.values()), {})
    options = api.QuantizeOptions(bits=4, min_elements=16)
    return src, api.quantize_file(src, options, output=tmp / "m.qc.safetensors").artifact


def test_as_document_follows_the_dataclass() -> None:
    @dataclasses.dataclass(frozen=True)
    class Inner:
        z: int
        a: tuple[int, ...]

    @dataclasses.dataclass(frozen=True)
    class Outer:
        path: Path
        inner: tuple[Inner, ...]
        maybe: str | None = None
        extra: str | None = dataclasses.field(default=None, metadata=OMIT_NONE)

    doc = as_document(Outer(Path("/x/y"), (Inner(1, (2, 3)),)))
    assert doc == {"path": "/x/y", "inner": [{"z": 1, "a": [2, 3]}], "maybe": None}
    assert list(doc) == ["path", "inner", "maybe"]  # declaration order, "extra" left out
    assert as_document(Outer(Path("p"), (), extra="e"))["extra"] == "e"


def test_inspect_results_are_typed_and_frozen(files: tuple[Path, Path]) -> None:
    src, artifact = files
    weights, art = api.inspect(src), api.inspect(artifact)
    assert weights.kind == "weights" and art.kind == "artifact"
    assert [t.name for t in weights.tensors] == ["dense/kernel", "dense/bias", "steps"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        art.parameters = 0  # type: ignore[misc]
    assert list(weights.as_dict()) == INSPECT_WEIGHTS
    assert list(art.as_dict()) == INSPECT_ARTIFACT
    assert list(art.as_dict()["tensors"][0]) == ARTIFACT_TENSOR
    assert "gguf_type" not in weights.as_dict()["tensors"][0]  # GGUF files only
    (width,) = art.by_width
    assert width.bits == 4 and width.tensors == 1 and width.parameters == 32 * 64


def test_inspect_tensor_keeps_one_tensor_or_names_the_missing_one(
    files: tuple[Path, Path],
) -> None:
    _, artifact = files
    one = api.inspect(artifact).only("dense/bias")
    assert [t.name for t in one.tensors] == ["dense/bias"]
    with pytest.raises(api.UsageError, match="has no tensor named 'nope'"):
        api.inspect(artifact).only("nope")


def test_verify_and_compare_documents(files: tuple[Path, Path]) -> None:
    src, artifact = files
    gates = api.build_gates(99.0, None)
    checked = api.verify(artifact, gates=gates)
    assert not checked.passed and checked.failures == ("dense/kernel",)
    doc = checked.as_dict()
    assert list(doc) == VERIFY and list(doc["tensors"][0]) == VERIFY_TENSOR
    assert doc["checksums"] == {"checked": 3, "failed": []}
    compared = api.compare(src, artifact)
    doc = compared.as_dict()
    assert compared.passed and compared.unpaired is None
    assert list(doc) == COMPARE and list(doc["tensors"][0]) == COMPARE_TENSOR
    assert doc["tensors"][0]["shape"] == [32, 64]
    steps = next(t for t in compared.tensors if t.name == "steps")
    assert steps.sqnr_db is None and steps.mse == 0.0  # passed through: exact


@pytest.mark.parametrize("command", ["inspect", "verify", "compare"])
def test_cli_json_is_the_result_document(files: tuple[Path, Path], command: str) -> None:
    """What ``--json`` prints is ``as_dict()`` of what the api returns, nothing added or lost."""
    src, artifact = files
    args = {"inspect": [artifact], "verify": [artifact], "compare": [src, artifact]}[command]
    printed = run(command, *args, "--json")
    assert printed.exit_code == 0, printed.stderr
    expected = getattr(api, command)(*args).as_dict()
    got = json.loads(printed.stdout)
    assert got.keys() == expected.keys()
    for mine, theirs in zip(got["tensors"], expected["tensors"], strict=True):
        for key, value in theirs.items():
            same = value == mine[key] or (
                isinstance(value, float) and math.isnan(value) and mine[key] is None
            )
            assert same, (key, value, mine[key])
