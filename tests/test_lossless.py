"""Lossless float compression (engine/lossless.py) and the artifact's entropy stage end to end:
exact bits back (NaN payloads, -0, denormals), ratios, --lossless through every format,
--entropy none, older artifacts, corrupt coded streams, and --jobs."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from samples import assert_clean_error, run
from weights_factory import read_all, same_bits, write_tensors

from qcompress.artifact.reader import Artifact
from qcompress.engine import entropy, lossless

WORDS = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32, "float64": np.uint64}


def as_dtype(words: np.ndarray, dtype: str) -> np.ndarray:
    return words.view(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype))


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(sorted(WORDS)), n=st.integers(1, 2000), seed=st.integers(0, 2**31))
def test_any_bits_come_back_exactly(dtype: str, n: int, seed: int):
    """Weights with NaN payloads, infinities, -0 and denormals mixed in: exact bits back."""
    rng = np.random.default_rng(seed)
    word = WORDS[dtype]
    x = as_dtype(rng.normal(0, 0.02, n).astype(np.float32), "float32")
    x = x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    bits = x.view(word).copy()
    k = max(1, n // 10)
    bits[rng.integers(0, n, k)] = rng.integers(0, np.iinfo(word).max, k, dtype=word)  # any bits
    x = as_dtype(bits, dtype)
    packed = lossless.compress(x)
    if packed is None:
        return
    assert packed.stream.size < x.nbytes
    back = lossless.decompress(packed.stream, packed.info)
    assert back.dtype == word and back.tobytes() == x.tobytes()


def test_special_values_come_back_exactly():
    specials = np.array([0x0000, 0x8000, 0x0001, 0x7C00, 0xFC00, 0x7E01, 0xFE5A, 0x03FF], np.uint16)
    x = np.tile(specials, 1000).view(np.float16)
    packed = lossless.compress(x)
    assert packed is not None
    assert lossless.decompress(packed.stream, packed.info).tobytes() == x.tobytes()


@pytest.mark.parametrize(("dtype", "limit"), [("bfloat16", 0.67), ("float32", 0.85)])
def test_weights_shrink_to_the_issue_targets(dtype: str, limit: float):
    w = np.random.default_rng(0).normal(0, 0.02, 1 << 18).astype(np.float32)
    x = w.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else w
    packed = lossless.compress(x)
    assert packed is not None
    assert packed.stream.size <= limit * x.nbytes
    assert lossless.decompress(packed.stream, packed.info).tobytes() == x.tobytes()


def test_random_bits_are_not_compressed_and_corrupt_streams_raise():
    x = np.random.default_rng(0).integers(0, 2**32, 5000, dtype=np.uint32).view(np.float32)
    assert lossless.compress(x) is None
    w = np.random.default_rng(1).normal(0, 1, 5000).astype(np.float32)
    packed = lossless.compress(w)
    assert packed is not None
    for bad in (packed.stream[:-1], packed.stream[:20], np.zeros(0, np.uint8)):
        with pytest.raises(entropy.CorruptStreamError):
            lossless.decompress(bad, packed.info)
    with pytest.raises(ValueError, match="2-, 4- or 8-byte floats"):
        lossless.compress(np.zeros(4, np.int32))


# --- the artifact --------------------------------------------------------------------------


def model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    w = rng.normal(0, 0.02, (256, 128)).astype(np.float32)
    w[0, :4] = [np.float32(-0.0), np.float32(1e-42), np.nan, np.inf]  # denormal, NaN, Inf
    return {
        "w": w,
        "b": rng.normal(0, 1, 256).astype(np.float16),
        "h": rng.normal(0, 0.1, (64, 64)).astype(np.float64),
        "ids": np.arange(100, dtype=np.int64),
    }


@pytest.mark.parametrize("fmt", ["npz", "h5", "safetensors"])
def test_lossless_restores_the_exact_bytes_through_every_format(tmp_path: Path, fmt: str):
    src = write_tensors(tmp_path / f"m.{fmt}", fmt, model(np.random.default_rng(2)))
    art = tmp_path / "m.qc.safetensors"
    res = run("quantize", src, "-o", art, "--lossless", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    by_name = {t["name"]: t for t in report["tensors"]}
    assert by_name["w"]["entropy_coder"] == lossless.CODER
    assert by_name["w"]["stored_bytes"] < by_name["w"]["raw_stored_bytes"]
    assert by_name["ids"]["entropy_coder"] is None  # passed through, plain
    assert all(t["action"] != "quantized" for t in report["tensors"])
    out = tmp_path / f"back.{fmt}"
    assert run("dequantize", art, "-o", out).exit_code == 0
    original, _, _ = read_all(src)
    back, _, _ = read_all(out)
    assert original.keys() == back.keys()
    for name in original:
        assert same_bits(original[name], back[name]), name


def test_default_artifact_codes_codes_and_stays_a_safetensors_file(tmp_path: Path):
    src = write_tensors(tmp_path / "m.safetensors", "safetensors", model(np.random.default_rng(3)))
    src_w = {"w": np.random.default_rng(3).normal(0, 0.02, (512, 256)).astype(np.float32)}
    src = write_tensors(tmp_path / "q.safetensors", "safetensors", src_w)
    coded, plain = tmp_path / "coded.qc.safetensors", tmp_path / "plain.qc.safetensors"
    for art, extra in ((coded, ()), (plain, ("--entropy", "none"))):
        res = run("quantize", src, "-o", art, "--bits", "4", "--json", *extra)
        assert res.exit_code == 0, res.output
    assert coded.stat().st_size < plain.stat().st_size
    with safe_open(coded, "numpy") as f:  # any safetensors reader lists and loads it
        codes = f.get_tensor("w.qcodes")
        assert codes.dtype == np.uint8 and codes.ndim == 1
        recipe = json.loads(f.metadata()["qcompress"])
    assert recipe["format_version"] == 3 and recipe["coded"]["w.qcodes"] == entropy.CODER
    with safe_open(plain, "numpy") as f:
        assert json.loads(f.metadata()["qcompress"])["format_version"] == 2
        assert "coded" not in json.loads(f.metadata()["qcompress"])
    with Artifact(coded) as a, Artifact(plain) as b:
        for ea, eb in zip(a.entries, b.entries, strict=True):
            assert a.tensor(ea).tobytes() == b.tensor(eb).tobytes()
            assert a.raw_bytes(ea) == b.stored_bytes(eb)
    assert run("verify", coded, "--against", src).exit_code == 0
    res = run("inspect", coded, "--json")
    assert res.exit_code == 0, res.output


def test_coded_artifact_is_the_same_for_any_jobs(tmp_path: Path):
    rng = np.random.default_rng(4)
    tensors = {f"l{i}": rng.normal(0, 0.02, (300, 200)).astype(np.float32) for i in range(4)}
    src = write_tensors(tmp_path / "m.npz", "npz", tensors)
    hashes = set()
    for jobs in (1, 3):
        art = tmp_path / f"j{jobs}.qc.safetensors"
        res = run("quantize", src, "-o", art, "--bits", "4", "--jobs", jobs, "--json")
        assert res.exit_code == 0, res.output
        hashes.add(art.read_bytes())
        assert (
            json.loads(res.stdout)["artifact"]["sha256"]
            == __import__("hashlib").sha256(art.read_bytes()).hexdigest()
        )
    assert len(hashes) == 1


def test_a_corrupt_coded_stream_is_a_clean_error(tmp_path: Path):
    src = write_tensors(
        tmp_path / "m.npz",
        "npz",
        {"w": np.random.default_rng(5).normal(0, 0.02, (256, 256)).astype(np.float32)},
    )
    art = tmp_path / "m.qc.safetensors"
    assert run("quantize", src, "-o", art).exit_code == 0
    with safe_open(art, "numpy") as f:
        recipe = json.loads(f.metadata()["qcompress"])
    assert "w.qcodes" in recipe["coded"]
    data = bytearray(art.read_bytes())
    # flip a byte inside the coded codes: the checksum catches it first
    header_len = int.from_bytes(data[:8], "little")
    data[8 + header_len + 200] ^= 0x40
    art.write_bytes(bytes(data))
    assert_clean_error(run("dequantize", art, "-o", tmp_path / "out.npz"), "checksum mismatch")
    assert run("verify", art).exit_code == 1


def test_lossless_and_entropy_none_conflict(tmp_path: Path):
    src = write_tensors(tmp_path / "m.npz", "npz", {"w": np.ones((64, 64), np.float32)})
    res = run("quantize", src, "--lossless", "--entropy", "none")
    assert_clean_error(res, "--lossless", "--entropy auto")
    res = run("quantize", src, "--lossless", "--target-bpw", "4")
    assert_clean_error(res, "--lossless")


def test_reserved_header_fits_coded_shapes_that_print_longer(tmp_path: Path):
    """A coded 1-D stream's shape is its byte count: [29000] prints longer than a raw [9000]
    float32; the reserved header must still hold the final one."""
    rng = np.random.default_rng(6)
    tensors = {f"n{i}": rng.normal(0, 0.02, 9000).astype(np.float32) for i in range(5)}
    src = write_tensors(tmp_path / "m.npz", "npz", tensors)
    art = tmp_path / "m.qc.safetensors"
    res = run("quantize", src, "-o", art, "--lossless", "--json")
    assert res.exit_code == 0, res.output
    with safe_open(art, "numpy") as f:
        assert all(f.get_tensor(n).size > 9999 for n in tensors)
    with Artifact(art) as a:
        for e in a.entries:
            assert a.tensor(e).tobytes() == tensors[e.name].tobytes()
