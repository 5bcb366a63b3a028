"""``verify`` proves an artifact decodes: every recipe field is checked against the engine's table.

Each case forges an artifact whose checksums are consistent (the recipe is rewritten and every
digest recomputed, as a buggy writer or a careful attacker would leave it) but whose recipe asks
for something no decoder can do. ``verify``, ``dequantize``, ``inspect`` and ``compare`` must all
refuse it the same way: exit 2, one line naming the file and the field, no traceback, no output.
A sharded artifact's shard list must not reach outside its folder.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from samples import assert_clean_error, run

from qcompress import api
from qcompress.errors import FormatError
from qcompress.formats import TensorInfo, write_weights

Recipe = dict[str, Any]


# --- forging artifacts with consistent checksums -------------------------------------------------


def _digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "sha256":
        return hashlib.sha256(data).digest()
    if algorithm in ("xxh3-128", "xxh3_128"):
        import xxhash

        return xxhash.xxh3_128(data).digest()
    raise AssertionError(f"the forger does not know checksum algorithm {algorithm!r}")


def forge(
    src: Path,
    dst: Path,
    edit: Callable[[Recipe], None] = lambda r: None,
    payload: dict[str, Callable[[bytearray], None]] | None = None,
) -> Path:
    """Copy artifact ``src`` to ``dst`` with its recipe edited by ``edit`` and stored tensors'
    bytes edited by ``payload`` (name -> in-place edit), then every checksum recomputed."""
    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = bytearray(data[8 + n :])
    recipe = json.loads(header["__metadata__"]["qcompress"])
    edit(recipe)
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    header["__metadata__"]["qcompress"] = text

    def span(name: str) -> tuple[int, int]:
        begin, end = header[name]["data_offsets"]
        return begin, end

    for name, change in (payload or {}).items():
        begin, end = span(name)
        part = bytearray(body[begin:end])
        change(part)
        body[begin:end] = part
    integrity = recipe["integrity"]
    rows = [
        _digest(
            integrity["algorithm"],
            text.encode() if name == "__recipe__" else bytes(body[slice(*span(name))]),
        )
        for name in integrity["covers"]
    ]
    begin, end = span(integrity["tensor"])
    assert end - begin == sum(len(r) for r in rows)
    body[begin:end] = b"".join(rows)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(body))
    return dst


def save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    fmt = {".npz": "npz", ".h5": "h5", ".safetensors": "safetensors"}[path.suffix]
    infos = [TensorInfo(k, a.shape, a.dtype.name) for k, a in arrays.items()]
    write_weights(path, fmt, infos, iter(arrays.values()), {})
    return path


def model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "w": rng.normal(size=(16, 64)).astype(np.float32),
        "bias": rng.normal(size=(16,)).astype(np.float32),
        "count": np.arange(4, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The original, and one artifact per decoding path: 8-bit per channel (float scales),
    4-bit groups with a second level (scale_bits), 2-bit symmetric (base-3 packing), and one
    from an h5 file with attributes."""
    tmp = tmp_path_factory.mktemp("recipes")
    src = save(tmp / "model.safetensors", model())
    out = {"original": src}
    for kind, options in {
        "8bit": api.QuantizeOptions(bits=8, min_elements=16),
        "4bit": api.QuantizeOptions(bits=4, min_elements=16),
        "2bit": api.QuantizeOptions(
            bits=2, scheme="symmetric", granularity="group", min_elements=16
        ),
    }.items():
        out[kind] = api.quantize_file(src, options, output=tmp / f"{kind}.qc.safetensors").artifact
    h5 = tmp / "model.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"kernel:0"], dtype="S8")
        d = g.create_dataset("kernel:0", data=model()["w"].T.copy())
        d.attrs["scale"] = np.float32(2.0)
    out["h5"] = api.quantize_file(
        h5, api.QuantizeOptions(bits=8, min_elements=16), output=tmp / "h5.qc.safetensors"
    ).artifact
    return out


def test_forger_keeps_an_unedited_artifact_valid(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    """The forger itself: with no edit its artifact passes verify, so the cases below fail
    for the field they change and not for a checksum the forger got wrong."""
    for kind in ("8bit", "4bit", "2bit", "h5"):
        copy = forge(artifacts[kind], tmp_path / f"{kind}.qc.safetensors")
        result = run("verify", copy)
        assert result.exit_code == 0, (kind, result.output)


def _entry(recipe: Recipe, name: str = "w") -> dict[str, Any]:
    names = {"w", "dense/kernel:0"} if name == "w" else {name}
    return next(e for e in recipe["tensors"] if e["name"] in names)


def setter(field: str, value: Any, name: str = "w") -> Callable[[Recipe], None]:
    def edit(recipe: Recipe) -> None:
        _entry(recipe, name)[field] = value

    return edit


def source_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Recipe], None]:
    def edit(recipe: Recipe) -> None:
        change(recipe["source"])

    return edit


def h5_meta(change: Callable[[dict[str, Any]], None]) -> Callable[[Recipe], None]:
    return source_edit(lambda s: change(s["metadata"]))


def _set_source(value: Any) -> Callable[[Recipe], None]:
    def edit(recipe: Recipe) -> None:
        recipe["source"] = value

    return edit


def _attr(meta: dict[str, Any]) -> dict[str, Any]:
    return next(g for g in meta["groups"] if g["name"] == "dense")["attrs"]["weight_names"]


# (base artifact, recipe edit, a fragment the one-line error must hold)
CASES: dict[str, tuple[str, Callable[[Recipe], None], str]] = {
    "bits-0": ("8bit", setter("bits", 0), "bits"),
    "bits-1": ("4bit", setter("bits", 1), "bits"),
    "bits-99": ("8bit", setter("bits", 99), "bits"),
    "bits-string": ("8bit", setter("bits", "8"), "bits"),
    "bits-bool": ("8bit", setter("bits", True), "bits"),
    "scheme": ("8bit", setter("scheme", "asymmetric"), "scheme"),
    "granularity": ("8bit", setter("granularity", "row"), "granularity"),
    "axis-past-shape": ("8bit", setter("axis", 2), "axis"),
    "axis-negative": ("8bit", setter("axis", -1), "axis"),
    "axis-missing": ("8bit", setter("axis", None), "axis"),
    "group-size-0": ("4bit", setter("group_size", 0), "group_size"),
    "group-size-huge": ("4bit", setter("group_size", 1 << 20), "group_size"),
    "group-size-on-channel": ("8bit", setter("group_size", 32), "group_size"),
    "range": ("8bit", setter("range", "magic"), "range"),
    "scale-dtype-int8": ("8bit", setter("scale_dtype", "int8"), "scale_dtype"),
    "scale-bits-0": ("4bit", setter("scale_bits", 0), "scale_bits"),
    "scale-bits-2": ("4bit", setter("scale_bits", 2), "scale_bits"),
    "scale-bits-16": ("4bit", setter("scale_bits", 16), "scale_bits"),
    "super-block": ("4bit", setter("super_block", 7), "super_block"),
    "packing": ("4bit", setter("packing", "base3"), "packing"),
    "packing-unknown": ("2bit", setter("packing", "zip"), "packing"),
    "shape-overflows-int64": ("8bit", setter("shape", [1 << 40, 1 << 40, 1 << 40]), "shape"),
    "shape-bytes-overflow": ("8bit", setter("shape", [1 << 31, 1 << 31]), "shape"),
    "shape-float": ("8bit", setter("shape", [16.0, 64]), "shape"),
    "dtype": ("8bit", setter("dtype", "float128"), "dtype"),
    "action": ("8bit", setter("action", "compressed"), "action"),
    "kept-int": ("8bit", setter("dtype", "int64", "bias"), "dtype"),
    "passthrough-float": ("8bit", setter("dtype", "float32", "count"), "dtype"),
    "reason-not-string": ("8bit", setter("reason", 3), "reason"),
    "source-list": ("8bit", _set_source([]), "source"),
    "source-string": ("8bit", _set_source("npz"), "source"),
    "source-format": ("8bit", source_edit(lambda s: s.update(format="gguf")), "format"),
    "source-layout": ("8bit", source_edit(lambda s: s.update(layout="tf")), "layout"),
    "source-metadata": ("8bit", source_edit(lambda s: s.update(metadata=[1])), "metadata"),
    "metadata-value-int": (
        "8bit",
        source_edit(lambda s: s["metadata"].update(__metadata__={"k": 1})),
        "__metadata__",
    ),
    "h5-group-empty-part": (
        "h5",
        h5_meta(lambda m: m["groups"].append({"name": "a//b", "attrs": {}})),
        "a//b",
    ),
    "h5-group-is-dataset": (
        "h5",
        h5_meta(lambda m: m["groups"].append({"name": "dense/kernel:0/x", "attrs": {}})),
        "clashes",
    ),
    "h5-groups-not-list": ("h5", h5_meta(lambda m: m.update(groups={})), "groups"),
    "h5-dataset-unknown": (
        "h5",
        h5_meta(lambda m: m["datasets"].update(ghost={"attrs": {}})),
        "ghost",
    ),
    "h5-attr-kind": (
        "h5",
        h5_meta(lambda m: m["attrs"].update(backend={"kind": "pointer"})),
        "backend",
    ),
    "h5-attr-number-overflows-dtype": (
        "h5",
        h5_meta(
            lambda m: m["attrs"].update(
                n={"kind": "number", "dtype": "|u1", "shape": [], "value": 300}
            )
        ),
        "'n'",
    ),
    "h5-attr-shape-mismatch": (
        "h5",
        h5_meta(lambda m: _attr(m).update(shape=[3])),
        "weight_names",
    ),
    "h5-attr-bad-base64": (
        "h5",
        h5_meta(lambda m: _attr(m).update(b64=True, value=["%%%"])),
        "weight_names",
    ),
    "h5-attr-cset": ("h5", h5_meta(lambda m: _attr(m).update(cset="latin-1")), "cset"),
    "h5-attr-dtype": ("h5", h5_meta(lambda m: _attr(m).update(dtype="<f4")), "dtype"),
    "h5-attr-value-not-string": (
        "h5",
        h5_meta(lambda m: _attr(m).update(value=[7])),
        "weight_names",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_impossible_recipe_is_refused_by_every_command(
    case: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    kind, edit, fragment = CASES[case]
    bad = forge(artifacts[kind], tmp_path / f"{case}.qc.safetensors", edit)
    for args in (
        ("verify", bad),
        ("verify", bad, "--json"),
        ("inspect", bad),
        ("dequantize", bad, "-o", tmp_path / "out.npz"),
        ("compare", artifacts["original"], bad),
    ):
        assert_clean_error(run(*args), bad.name, fragment)
    assert not (tmp_path / "out.npz").exists()


def _byte(index: int, value: int) -> Callable[[bytearray], None]:
    def change(part: bytearray) -> None:
        part[index] = value

    return change


def _nan_float32(part: bytearray) -> None:
    part[0:4] = np.array([np.nan], np.float32).tobytes()


@pytest.mark.parametrize(
    ("kind", "tensor", "change", "fragment"),
    [
        ("2bit", "w.qcodes", _byte(0, 250), "242"),
        ("2bit", "w.qcodes", _byte(-1, 243), "242"),
        ("8bit", "w.qscale", _nan_float32, "NaN"),
        ("4bit", "w.qsuper", _nan_float32, "NaN"),
    ],
    ids=["base3-first-byte", "base3-last-byte", "nan-scale", "nan-super-scale"],
)
def test_undecodable_stored_values_fail_verify_and_dequantize(
    kind: str,
    tensor: str,
    change: Callable[[bytearray], None],
    fragment: str,
    artifacts: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Intact checksums over bytes no decoder accepts: verify says so (exit 2) instead of
    passing an artifact that dequantize then cannot rebuild."""
    bad = forge(artifacts[kind], tmp_path / "bad.qc.safetensors", payload={tensor: change})
    for args in (
        ("verify", bad),
        ("verify", bad, "--against", artifacts["original"]),
        ("dequantize", bad, "-o", tmp_path / "out.safetensors"),
        ("compare", artifacts["original"], bad),
    ):
        assert_clean_error(run(*args), bad.name, tensor, fragment)
    assert not (tmp_path / "out.safetensors").exists()


def test_a_flipped_base3_byte_without_new_checksums_is_a_checksum_failure(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    """Corruption (checksums not recomputed) stays what it is: a failed checksum, exit 1."""
    forged = forge(artifacts["2bit"], tmp_path / "f.qc.safetensors", payload={})
    data = bytearray(forged.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    begin = 8 + header_len + header["w.qcodes"]["data_offsets"][0]
    data[begin] = 250
    forged.write_bytes(bytes(data))
    result = run("verify", forged)
    assert result.exit_code == 1, result.output
    assert "checksum of w.qcodes" in result.stderr


# --- sharded artifacts: the shard list stays in the folder -------------------------------------


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    """A two-shard checkpoint quantized into a sharded artifact; the artifact's index."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    rng = np.random.default_rng(2)
    weight_map = {}
    for i in range(2):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save(ckpt / shard, {f"l{i}.weight": rng.normal(size=(16, 64)).astype(np.float32)})
        weight_map[f"l{i}.weight"] = shard
    index = ckpt / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = tmp_path / "out"
    out.mkdir()
    result = api.quantize_file(index, api.QuantizeOptions(min_elements=16), output=out)
    return result.artifact


@pytest.mark.parametrize("entry", ["../outside.qc.safetensors", "/etc/passwd", "sub/x", "..", ""])
def test_sharded_artifact_shard_list_cannot_leave_its_folder(sharded: Path, entry: str) -> None:
    doc = json.loads(sharded.read_text())
    doc["metadata"]["qcompress"]["shards"][0] = entry
    sharded.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="plain file names"):
        api.verify(sharded)
    for args in (("verify", sharded), ("inspect", sharded), ("dequantize", sharded, "-o", "x.npz")):
        assert_clean_error(run(*args), sharded.name, "qcompress.shards")
