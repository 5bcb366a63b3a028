"""Integrity and determinism of artifacts.

- ``verify`` catches every single-bit flip in a small artifact's payload: one flipped bit in
  each byte of the data section, checked through the api (fast) rather than the CLI.
- A flipped bit anywhere in the header is a clean error (exit code 2) or a detected checksum
  failure: never a silently accepted artifact.
- The same input and options give byte-identical artifacts, whatever the number of threads.
- The quantized payload (codes, scales, zero-points) of a tensor does not depend on which of the
  three formats it was read from, given the same axis.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from qcompress import api
from qcompress.errors import QCompressError
from qcompress.formats import TensorInfo, write_weights
from qcompress.formats.safetensors import SafetensorsReader


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "block/kernel": rng.normal(size=(16, 40)).astype(np.float32),
        "block/conv": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "block/bias": rng.normal(size=(16,)).astype(np.float32),
        "block/count": np.arange(5, dtype=np.int64),
    }


def save(path: Path, fmt: str, arrays: dict[str, np.ndarray]) -> Path:
    infos = [TensorInfo(n, a.shape, a.dtype.name) for n, a in arrays.items()]
    write_weights(path, fmt, infos, iter(arrays.values()), {})
    return path


@pytest.fixture
def small_artifact(tmp_path: Path) -> Path:
    """About 1 KB of payload: 4-bit affine codes, scales and zero-points, a kept bias and an int
    tensor passed through, plus the stats and checksum tensors."""
    src = save(tmp_path / "small.safetensors", "safetensors", tensors())
    options = api.QuantizeOptions(bits=4, scheme="affine", min_elements=16)
    return api.quantize_file(src, options, output=tmp_path / "small.qc.safetensors").artifact


def data_start(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def test_verify_catches_every_single_bit_flip_in_the_payload(
    small_artifact: Path, tmp_path: Path
) -> None:
    original = small_artifact.read_bytes()
    assert api.verify(small_artifact).passed
    start = data_start(original)
    assert len(original) - start > 500
    path = tmp_path / "flipped.qc.safetensors"
    missed = []
    for i in range(start, len(original)):
        data = bytearray(original)
        data[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(data))
        try:
            passed = api.verify(path).passed
        except QCompressError:
            passed = False  # refused outright is detected too
        if passed:
            missed.append(i)
    assert not missed, f"flips at payload bytes {missed[:10]} went unnoticed"


def test_payload_flip_is_a_named_checksum_failure(small_artifact: Path, tmp_path: Path) -> None:
    data = bytearray(small_artifact.read_bytes())
    data[data_start(bytes(data)) + 3] ^= 0x10  # inside the first stored tensor
    path = tmp_path / "one.qc.safetensors"
    path.write_bytes(bytes(data))
    result = api.verify(path)
    assert not result.passed
    assert result.checksums.failed == ("block/kernel.qcodes",)
    with pytest.raises(QCompressError, match="checksum mismatch in stored tensor 'block/kernel"):
        api.dequantize_file(path, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


def test_header_flips_are_refused_or_detected(small_artifact: Path, tmp_path: Path) -> None:
    original = small_artifact.read_bytes()
    path = tmp_path / "header.qc.safetensors"
    accepted = []
    for i in range(data_start(original)):
        data = bytearray(original)
        data[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(data))
        try:
            if api.verify(path).passed:
                accepted.append(i)
        except QCompressError as exc:
            assert exc.exit_code == 2, (i, str(exc))
            assert path.name in str(exc), (i, str(exc))
    assert not accepted, f"header flips at bytes {accepted[:10]} were accepted"


def test_tampered_recipe_is_detected_by_verify_and_refused_by_dequantize(
    small_artifact: Path, tmp_path: Path
) -> None:
    """Edit the recipe's JSON and keep it valid (here: a reason), re-encoding the header."""
    data = small_artifact.read_bytes()
    start = data_start(data)
    header = json.loads(data[8:start])
    recipe = json.loads(header["__metadata__"]["qcompress"])
    recipe["tensors"][0]["reason"] = "trust me"
    header["__metadata__"]["qcompress"] = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "tampered.qc.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[start:])
    result = api.verify(path)
    assert not result.passed
    assert "__recipe__" in result.checksums.failed
    with pytest.raises(QCompressError, match="recipe"):
        api.dequantize_file(path, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


# --- determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        api.QuantizeOptions(bits=8, min_elements=16),
        api.QuantizeOptions(bits=4, scheme="affine", granularity="group", min_elements=16),
        api.QuantizeOptions(bits=3, range_method="mse", min_elements=16),
    ],
    ids=["8bit-channel", "4bit-affine-group", "3bit-mse"],
)
def test_same_input_gives_byte_identical_artifacts(
    tmp_path: Path, options: api.QuantizeOptions
) -> None:
    src = save(tmp_path / "m.npz", "npz", tensors())
    outputs = []
    for i, jobs in enumerate([1, 1, 4]):
        out = tmp_path / f"run{i}.qc.safetensors"
        api.quantize_file(src, options, output=out, jobs=jobs)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1], "two runs differ"
    assert outputs[0] == outputs[2], "--jobs 1 and --jobs 4 differ"


def _payload(path: Path) -> dict[str, bytes]:
    """Every stored tensor's bytes, and each original tensor's stats row by name. Not the
    checksum table: its last row hashes the recipe, which names the source format. h5 lists
    tensors sorted by name, so stats rows come in another order."""
    reader = SafetensorsReader(path)
    try:
        out = {
            i.name: np.array(reader.read(i.name)).tobytes()
            for i in reader.tensor_infos()
            if not i.name.startswith("__qcompress__/")
        }
        recipe = json.loads(reader.metadata()["__metadata__"]["qcompress"])
        stats = np.array(reader.read("__qcompress__/stats"))
        for entry, row in zip(recipe["tensors"], stats, strict=True):
            out[f"stats of {entry['name']}"] = row.tobytes()
        return out
    finally:
        reader.close()


@pytest.mark.parametrize(
    "options",
    [
        api.QuantizeOptions(bits=8, axis=0, min_elements=16),
        api.QuantizeOptions(bits=4, scheme="affine", axis=0, min_elements=16),
        api.QuantizeOptions(bits=2, granularity="group", group_size=16, axis=0, min_elements=16),
    ],
    ids=["8bit", "4bit-affine", "2bit-group"],
)
def test_quantized_payload_does_not_depend_on_the_input_format(
    tmp_path: Path, options: api.QuantizeOptions
) -> None:
    arrays = tensors()
    paths = {
        fmt: save(tmp_path / f"m{suffix}", fmt, arrays)
        for fmt, suffix in [("npz", ".npz"), ("safetensors", ".safetensors"), ("h5", ".h5")]
    }
    with h5py.File(paths["h5"], "r") as f:  # really HDF5, holding the same values
        assert np.array_equal(f["block/kernel"][()], arrays["block/kernel"])
    payloads = {}
    for fmt, src in paths.items():
        out = tmp_path / f"{fmt}.qc.safetensors"
        api.quantize_file(src, options, output=out)
        payloads[fmt] = _payload(out)
    assert any(name.endswith(".qcodes") for name in payloads["npz"])
    assert payloads["npz"].keys() == payloads["h5"].keys() == payloads["safetensors"].keys()
    for name in payloads["npz"]:
        assert payloads["npz"][name] == payloads["safetensors"][name], name
        assert payloads["npz"][name] == payloads["h5"][name], name


@pytest.mark.slow  # two fresh processes, one compiling every kernel cold: half a minute
def test_cold_and_warm_numba_cache_give_the_same_bytes(tmp_path: Path) -> None:
    """The compiled kernels give the same artifact whether just compiled or loaded from cache."""
    import os
    import subprocess
    import sys

    from safetensors.numpy import save_file

    rng = np.random.default_rng(5)
    model = tmp_path / "m.safetensors"
    save_file({"w": rng.standard_t(3, size=(640, 512)).astype(np.float32)}, model)  # > 2**18
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    env.pop("QCOMPRESS_NO_NUMBA", None)
    outputs = []
    for run in range(2):  # the first run compiles into the empty cache, the second loads it
        out = tmp_path / f"run{run}.safetensors"
        for bits in ("8", "4"):
            target = out.with_name(f"{out.stem}-{bits}.safetensors")
            cmd = [sys.executable, "-m", "qcompress", "quantize", str(model), "-o", str(target)]
            subprocess.run([*cmd, "--bits", bits, "-q"], env=env, check=True)
            outputs.append((bits, target.read_bytes()))
    assert outputs[:2] == outputs[2:]


def _readonly_install(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A copy of the package whose __pycache__ directories are files (numba cannot cache next
    to it) and a HOME and XDG_CACHE_HOME that are files (nor under them), as a read-only install
    with a read-only HOME looks to numba even when the tests run as root."""
    import os
    import shutil

    import qcompress

    site = tmp_path / "site"
    shutil.copytree(
        Path(qcompress.__file__).parent, site / "qcompress", ignore=shutil.ignore_patterns("*.pyc")
    )
    for pkg in [site / "qcompress", *(p for p in (site / "qcompress").rglob("*") if p.is_dir())]:
        if pkg.name != "__pycache__":
            cache = pkg / "__pycache__"
            if cache.is_dir():
                shutil.rmtree(cache)
            cache.write_text("not a directory")
    blocked = tmp_path / "home-is-a-file"
    blocked.write_text("")
    env = {**os.environ, "PYTHONPATH": str(site), "HOME": str(blocked)}
    env["XDG_CACHE_HOME"] = str(blocked)
    for name in ("NUMBA_CACHE_DIR", "QCOMPRESS_NO_NUMBA"):
        env.pop(name, None)
    return env, site


def test_numba_cache_falls_back_to_a_private_temp_dir(tmp_path: Path) -> None:
    """Read-only install and HOME: the kernels cache under the temp dir, no 'no locator
    available' error, and the artifact's bytes do not change."""
    import subprocess
    import sys

    from safetensors.numpy import save_file

    env, _ = _readonly_install(tmp_path)
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    model = tmp_path / "m.safetensors"
    rng = np.random.default_rng(7)
    save_file({"w": rng.standard_normal((520, 512)).astype(np.float32)}, model)  # > 2**18
    outs = []
    for run in range(2):
        out = tmp_path / f"r{run}.safetensors"
        cmd = [sys.executable, "-m", "qcompress", "quantize", str(model), "-o", str(out), "-q"]
        done = subprocess.run(
            cmd, env=env, cwd=tmp_path, capture_output=True, text=True, check=False
        )  # cwd: not the checkout, whose package ``-m`` would import first
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert list((tmp_path / "tmp").glob("qcompress-numba-*/*/numba_kernels.encode_stats-*.nbi"))


def test_numba_compiles_without_a_cache_when_nothing_is_writable(tmp_path: Path) -> None:
    """No writable place at all (simulated: the probe says no): the kernels compile uncached."""
    import subprocess
    import sys

    env, site = _readonly_install(tmp_path)
    script = (
        "import numpy as np\n"
        "import qcompress\n"
        f"assert qcompress.__file__.startswith({str(site)!r})\n"
        "from qcompress.engine import jit, numba_cache, quantize_with_error, QuantSpec\n"
        "numba_cache._writable = lambda path: False\n"
        "x = np.random.default_rng(0).standard_normal((520, 512)).astype(np.float32)\n"
        "assert jit.use_fast(x.size)\n"
        "quantize_with_error(x, QuantSpec(8))\n"
        "from qcompress.engine import numba_kernels as compiled\n"
        "assert compiled.CACHE is False\n"
        "print(type(compiled.encode_stats._cache).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "NullCache"
