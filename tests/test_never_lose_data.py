"""Never lose data, never crash (issue 10, section 3, and the file-safety items of section 4).

Each test builds the odd or hostile situation itself (FIFOs, device nodes, races, files that
shrink while read), since none of them can live in ``tests/corpus``. Every refusal is checked the
same way: exit 2, one ``Error:`` line naming the file the user gave, no traceback, and no file
left behind (no output, no hidden temporary).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result
from weights_factory import raw_safetensors

from qcompress import atomic
from qcompress.cli import cli
from qcompress.errors import InputError, UsageError
from qcompress.formats import open_weights, write_weights
from qcompress.formats.base import TensorInfo
from qcompress.formats.h5 import probe_timeout
from qcompress.formats.safetensors import SafetensorsReader
from qcompress.quantize.plan_file import parse_plan

REPO = Path(__file__).resolve().parent.parent
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_refused(result: Result, *names: str) -> str:
    """Exit 2, one ``Error:`` line naming every string in ``names``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exc_info)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def assert_only(folder: Path, *names: str) -> None:
    """``folder`` holds exactly ``names``: no output appeared, no temporary is left."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def weights(rng_seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    return {
        "fc.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "fc.bias": rng.standard_normal(64).astype(np.float32),
    }


def safetensors_with(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    infos = [TensorInfo(n, a.shape, a.dtype.name) for n, a in tensors.items()]
    write_weights(path, "safetensors", infos, list(tensors.values()))
    return path


# --- names a target format cannot hold exactly -------------------------------------------------


def nul_artifact(tmp_path: Path) -> Path:
    src = safetensors_with(
        tmp_path / "nul.safetensors",
        {"a\x00b": np.ones((4, 4), np.float32), "a\x00c": np.zeros((4, 4), np.float32)},
    )
    art = tmp_path / "nul.qc.safetensors"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    return art


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_nul_in_a_name_is_refused_not_merged(tmp_path: Path, suffix: str) -> None:
    art = nul_artifact(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(run("dequantize", art, "-o", out / f"x{suffix}"), f"x{suffix}", r"'a\x00b'")
    assert_only(out)


def test_nul_in_a_name_round_trips_through_safetensors(tmp_path: Path) -> None:
    art = nul_artifact(tmp_path)
    out = tmp_path / "x.safetensors"
    assert run("dequantize", art, "-o", out).exit_code == 0
    with open_weights(out) as r:
        assert sorted(i.name for i in r.tensor_infos()) == ["a\x00b", "a\x00c"]
        assert r.read("a\x00b").sum() == 16 and r.read("a\x00c").sum() == 0


@pytest.mark.parametrize(
    ("fmt", "name", "why"),
    [
        ("npz", "dir/", "ends in '/'"),
        ("h5", "/abs", "empty part"),
        ("h5", "a//b", "empty part"),
        ("h5", "a/", "empty part"),
        ("h5", "a/./b", "empty part"),
        ("npz", "bad\udc80", "not valid Unicode"),
        ("h5", "bad\udc80", "not valid Unicode"),
        ("safetensors", "bad\udc80", "not valid Unicode"),
        ("safetensors", "__metadata__", "reserves"),
    ],
)
def test_writer_refuses_names_it_would_alter(tmp_path: Path, fmt: str, name: str, why: str) -> None:
    path = tmp_path / f"out.{fmt}"
    infos = [TensorInfo(name, (2,), "float32")]
    with pytest.raises(UsageError, match=why) as err:
        write_weights(path, fmt, infos, [np.ones(2, np.float32)])
    assert str(path) in str(err.value)
    assert not path.exists()


@pytest.mark.parametrize("fmt", ["npz", "h5", "safetensors"])
def test_writer_refuses_a_name_twice(tmp_path: Path, fmt: str) -> None:
    infos = [TensorInfo("w", (2,), "float32")] * 2
    with pytest.raises(UsageError, match="'w' appears twice"):
        write_weights(tmp_path / f"o.{fmt}", fmt, infos, [np.ones(2, np.float32)] * 2)


@pytest.mark.parametrize("shape", [(4,), (64, 64)])  # kept as is, and quantized
def test_npz_member_named_metadata_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    src = npz(tmp_path / "m.npz", __metadata__=np.ones(shape, np.float32), w=np.ones(4, "f4"))
    assert_refused(run("quantize", src, "-q"), "m.npz", "'__metadata__'")
    assert_only(tmp_path, "m.npz")


def test_h5_hard_link_keeps_both_paths(tmp_path: Path) -> None:
    src = tmp_path / "hard.h5"
    data = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    with h5py.File(src, "w") as f:
        f["a/w"] = data
        f["b/w"] = f["a/w"]  # a second hard link to the same dataset
    art = tmp_path / "hard.qc.safetensors"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    out = tmp_path / "back.h5"
    assert run("dequantize", art, "-o", out).exit_code == 0
    with h5py.File(out, "r") as f:
        names: list[str] = []
        f.visit(names.append)
        assert names == ["a", "a/w", "b", "b/w"]
        np.testing.assert_allclose(f["a/w"][()], f["b/w"][()])
        np.testing.assert_allclose(f["b/w"][()], data, atol=0.05)


# --- outputs: never replace a node, never replace a file that appeared meanwhile --------------


@posix_only
@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", ["fifo", "socket", "dir"])
def test_output_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, kind: str, force: bool
) -> None:
    src = npz(tmp_path / "m.npz", **weights())
    node = tmp_path / "node.qc.safetensors"
    if kind == "fifo":
        os.mkfifo(node)
    elif kind == "dir":
        node.mkdir()
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(node))
    extra = ["--force"] if force else []
    line = assert_refused(run("quantize", src, "-o", node, "-q", *extra), str(node))
    assert "directory" in line if kind == "dir" else "not a regular file" in line
    assert_only(tmp_path, "m.npz", node.name)
    if kind == "fifo":
        assert node.is_fifo()
    elif kind == "socket":
        assert node.is_socket()
        sock.close()


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
@pytest.mark.parametrize("command", ["quantize", "dequantize"])
def test_output_naming_a_device_node_with_force_is_refused(tmp_path: Path, command: str) -> None:
    """``out.npz`` is a symlink to /dev/null: the output would be the device, which is never
    replaced or written, even with --force."""
    src = npz(tmp_path / "m.npz", **weights())
    art = tmp_path / "m.qc.safetensors"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    node = tmp_path / ("node.qc.safetensors" if command == "quantize" else "node.npz")
    node.symlink_to("/dev/null")
    before = os.stat("/dev/null")
    source = src if command == "quantize" else art
    line = assert_refused(run(command, source, "-o", node, "--force"), str(node))
    assert "device node" in line
    after = os.stat("/dev/null")
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert node.is_symlink() and os.readlink(node) == "/dev/null"


def test_a_file_that_appears_before_the_rename_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs without --force on one -o: the second finds the first's file at rename time."""
    src = npz(tmp_path / "m.npz", **weights())
    art = tmp_path / "m.qc.safetensors"
    real_rename = atomic._rename

    def racing_rename(tmp: Path, out: Path, replace: bool) -> None:
        if out == art:
            out.write_bytes(b"the other run's artifact")
        real_rename(tmp, out, replace)

    monkeypatch.setattr(atomic, "_rename", racing_rename)
    line = assert_refused(run("quantize", src, "-o", art, "-q"), str(art), "--force")
    assert "appeared" in line
    assert art.read_bytes() == b"the other run's artifact"
    assert_only(tmp_path, "m.npz", art.name)  # the report was not left behind either


@pytest.mark.parametrize("with_renameat2", [True, False])
def test_no_replace_rename_refuses_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_renameat2: bool
) -> None:
    """Both mechanisms: renameat2(RENAME_NOREPLACE), and link()+unlink() where it is missing."""
    if not with_renameat2:
        monkeypatch.setattr(atomic, "_renameat2_noreplace", lambda tmp, out: False)
    tmp, out = tmp_path / ".t.tmp", tmp_path / "out"
    tmp.write_bytes(b"new")
    out.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        atomic._rename(tmp, out, replace=False)
    assert out.read_bytes() == b"old" and tmp.exists()
    out.unlink()
    atomic._rename(tmp, out, replace=False)
    assert out.read_bytes() == b"new" and not tmp.exists()


def test_force_still_replaces_a_regular_file(tmp_path: Path) -> None:
    src = npz(tmp_path / "m.npz", **weights())
    art = tmp_path / "m.qc.safetensors"
    art.write_bytes(b"old")
    assert run("quantize", src, "-o", art, "-q", "--force").exit_code == 0
    assert art.read_bytes()[:8] != b"old"


@pytest.mark.parametrize("length", [200, 241, 250, 255])
def test_long_output_names_fit_the_temporary(tmp_path: Path, length: int) -> None:
    src = npz(tmp_path / "m.npz", **weights())
    stem = length - len(".qc.safetensors")
    name = "é" * (stem // 2) + "x" * (stem % 2) + ".qc.safetensors"  # multi-byte characters
    assert len(name.encode()) <= 255
    art = tmp_path / name
    report = tmp_path / "r.json"
    assert run("quantize", src, "-o", art, "--report", report, "-q").exit_code == 0
    assert_only(tmp_path, "m.npz", name, "r.json")
    assert len(atomic.temp_prefix(name).encode()) + 8 + len(".tmp") <= 255


def test_disk_full_names_the_output_not_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = npz(tmp_path / "m.npz", **weights())
    art = tmp_path / "m.qc.safetensors"
    out = tmp_path / "back.npz"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    real_write_array = np.lib.format.write_array

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np.lib.format, "write_array", full)
    line = assert_refused(run("dequantize", art, "-o", out), str(out), "space")
    assert ".tmp" not in line
    monkeypatch.setattr(np.lib.format, "write_array", real_write_array)
    assert_only(tmp_path, "m.npz", art.name, "m.qc.json")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_on_a_real_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing the temporary through /dev/full: ENOSPC from the kernel, named as the output."""
    real_mkstemp = atomic.tempfile.mkstemp

    def to_dev_full(prefix: str, suffix: str, dir: Path) -> tuple[int, str]:
        fd, name = real_mkstemp(prefix=prefix, suffix=suffix, dir=dir)
        os.close(fd)
        os.unlink(name)
        os.symlink("/dev/full", name)
        return os.open(name, os.O_WRONLY), name

    src = npz(tmp_path / "m.npz", **weights())
    monkeypatch.setattr(atomic.tempfile, "mkstemp", to_dev_full)
    art = tmp_path / "m.qc.safetensors"
    assert_refused(run("quantize", src, "-o", art, "-q"), str(art))
    assert_only(tmp_path, "m.npz")


def test_a_newline_in_a_path_stays_on_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "two\nlines"
    folder.mkdir()
    src = npz(folder / "m.npz", **weights())
    (folder / "m.qc.safetensors").write_bytes(b"exists")
    line = assert_refused(run("quantize", src, "-q"), "two\\nlines", "already exists")
    assert "\n" not in line
    assert_refused(run("inspect", folder / "missing\n.npz"), "missing\\n.npz")


# --- inputs: non-regular files, truncation while reading, odd contents --------------------------


@posix_only
@pytest.mark.parametrize(
    "name",
    ["model.npz", "model.safetensors", "model.h5", "model.safetensors.index.json"],
)
@pytest.mark.parametrize("command", ["inspect", "quantize"])
def test_fifo_input_does_not_hang(tmp_path: Path, name: str, command: str) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    # In a subprocess with a timeout: a hang here must fail the test, not freeze the suite.
    proc = subprocess.run(
        [sys.executable, "-m", "qcompress", command, str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: ") and "not a regular file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert_only(tmp_path, name)


@posix_only
@pytest.mark.parametrize("name", ["model.gguf", "model.qc.safetensors"])
def test_fifo_given_to_dequantize_does_not_hang(tmp_path: Path, name: str) -> None:
    """dequantize accepts artifacts and files that decode on read (GGUF): telling them apart
    must not open a FIFO, which would block until a writer appears."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    proc = subprocess.run(
        [sys.executable, "-m", "qcompress", "dequantize", str(fifo), "-o", str(tmp_path / "o.npz")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: ") and "not a regular file" in proc.stderr
    assert_only(tmp_path, name)


@posix_only
def test_fifo_shard_and_fifo_plan_are_refused(tmp_path: Path) -> None:
    shard = tmp_path / "model-00001-of-00001.safetensors"
    os.mkfifo(shard)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"w": shard.name}}))
    with pytest.raises(InputError):
        open_weights(index)
    plan = tmp_path / "plan.toml"
    os.mkfifo(plan)
    src = npz(tmp_path / "m.npz", **weights())
    assert_refused(run("quantize", src, "--plan", plan, "-q"), "plan.toml", "not a regular")


def test_safetensors_truncated_while_read_is_a_clean_error(tmp_path: Path) -> None:
    """The file shrinks after it was opened (another process truncates it): reading the cut
    tensor is an InputError naming the file, where a memory map would die of SIGBUS."""
    path = safetensors_with(tmp_path / "m.safetensors", weights())
    with SafetensorsReader(path) as reader:
        os.truncate(path, 200)
        with pytest.raises(InputError, match=r"m\.safetensors: file ended at byte"):
            reader.read("fc.weight")


def test_quantize_and_dequantize_of_a_file_truncated_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = safetensors_with(tmp_path / "m.safetensors", weights())
    art = tmp_path / "m.qc.safetensors"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    real_read = SafetensorsReader.read

    def shrinking_read(self: SafetensorsReader, name: str) -> np.ndarray:
        os.truncate(self.path, 64)
        return real_read(self, name)

    monkeypatch.setattr(SafetensorsReader, "read", shrinking_read)
    out = tmp_path / "out"
    out.mkdir()
    copy = out / "in.safetensors"
    copy.write_bytes(src.read_bytes())
    assert_refused(run("quantize", copy, "-o", out / "q.qc.safetensors", "-q"), "in.safetensors")
    assert_only(out, "in.safetensors")
    art_copy = out / "a.qc.safetensors"
    art_copy.write_bytes(art.read_bytes())
    assert_refused(run("dequantize", art_copy, "-o", out / "back.npz"), "a.qc.safetensors")
    assert_only(out, "in.safetensors", "a.qc.safetensors")


def test_empty_model_is_refused(tmp_path: Path) -> None:
    src = npz(tmp_path / "empty.npz")
    assert_refused(run("quantize", src, "-q"), "empty.npz", "no tensors")
    assert_only(tmp_path, "empty.npz")


def test_model_without_float_tensors_gives_a_valid_artifact(tmp_path: Path) -> None:
    src = npz(tmp_path / "ints.npz", ids=np.arange(10), mask=np.ones(3, bool))
    art = tmp_path / "ints.qc.safetensors"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    assert run("verify", art).exit_code == 0
    back = tmp_path / "back.npz"
    assert run("dequantize", art, "-o", back).exit_code == 0
    with np.load(back) as z:
        np.testing.assert_array_equal(z["ids"], np.arange(10))
        np.testing.assert_array_equal(z["mask"], np.ones(3, bool))


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


HUGE_EMPTY = (2**40, 2**40, 0)


def huge_empty_file(tmp_path: Path, fmt: str) -> Path:
    if fmt == "npz":
        path = tmp_path / "z.npz"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("a.npy", npy_header(HUGE_EMPTY))
        return path
    if fmt == "h5":
        path = tmp_path / "z.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("a", shape=HUGE_EMPTY, dtype="f4")
        return path
    path = tmp_path / "z.safetensors"
    header = {"a": {"dtype": "F32", "shape": list(HUGE_EMPTY), "data_offsets": [0, 0]}}
    path.write_bytes(raw_safetensors(header))
    return path


@pytest.mark.parametrize("fmt", ["npz", "h5", "safetensors"])
@pytest.mark.parametrize("command", ["inspect", "quantize"])
def test_zero_element_tensor_with_huge_dims(tmp_path: Path, fmt: str, command: str) -> None:
    path = huge_empty_file(tmp_path, fmt)
    line = assert_refused(run(command, path), path.name, "'a'", "no elements")
    assert str(list(HUGE_EMPTY)) in line


def test_ordinary_zero_element_tensors_still_work(tmp_path: Path) -> None:
    src = npz(tmp_path / "m.npz", e=np.zeros((3, 0, 5), np.float32), **weights())
    art = tmp_path / "m.qc.safetensors"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    back = tmp_path / "back.npz"
    assert run("dequantize", art, "-o", back).exit_code == 0
    with np.load(back) as z:
        assert z["e"].shape == (3, 0, 5)


def test_npz_member_claiming_more_compressed_bytes_than_the_file(tmp_path: Path) -> None:
    """A deflate bomb's directory can claim a compressed size (and so an uncompressed size
    within deflate's ratio) the file does not have; refused before anything is allocated."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, w=np.zeros(1 << 16, np.float32))
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    declared = 3_000_000
    struct.pack_into("<I", data, central + 20, declared)  # compressed size
    struct.pack_into("<I", data, central + 24, declared * 1000)  # uncompressed size
    path.write_bytes(bytes(data))
    assert_refused(run("inspect", path), "bomb.npz", "more than the file holds")


def test_deflate_bomb_is_read_without_allocating_past_the_header(tmp_path: Path) -> None:
    """A member whose stream inflates far beyond its declared size: reading stops at the size
    the .npy header and the zip directory agree on; the rest of the stream is never inflated."""
    import tracemalloc
    import zlib

    body = npy_header((16,)) + b"\0" * 64
    stream = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = stream.compress(body + b"\0" * (64 << 20)) + stream.flush()
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("w.npy", body)
    data = path.read_bytes()
    # Swap in the bomb's stream, keeping the declared (small, honest-looking) sizes.
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    bomb = data[:start] + packed + data[start + info.compress_size :]
    shift = len(packed) - info.compress_size
    central = bomb.rfind(b"PK\x01\x02")
    end = bomb.rfind(b"PK\x05\x06")
    bomb = bytearray(bomb)
    struct.pack_into("<I", bomb, central + 20, len(packed))
    struct.pack_into("<I", bomb, info.header_offset + 18, len(packed))
    struct.pack_into("<I", bomb, end + 16, struct.unpack_from("<I", bomb, end + 16)[0] + shift)
    path.write_bytes(bytes(bomb))
    tracemalloc.start()
    try:
        with open_weights(path) as reader:
            array = reader.read("w")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(array, np.zeros(16, np.float32))
    assert peak < 8 << 20  # the stream holds 64 MB of zeros; far less was ever allocated


# --- merge, plans, environment, pipes, dtypes ---------------------------------------------------


def sharded_checkpoint(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    weight_map = {}
    for k in (1, 2):
        shard = f"model-0000{k}-of-00002.safetensors"
        safetensors_with(folder / shard, {f"l{k}.weight": rng.standard_normal((64, 64), "f4")})
        weight_map[f"l{k}.weight"] = shard
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def edit_totals(r: dict) -> None:
    del r["totals"]


def edit_tensors(r: dict) -> None:
    r["tensors"] = "many"


def edit_bytes(r: dict) -> None:
    r["input"]["bytes"] = "12"


def edit_shape(r: dict) -> None:
    r["tensors"][0]["shape"] = [64, None]


def edit_sqnr(r: dict) -> None:
    r["totals"]["overall_sqnr_db"] = 1e308


def edit_list(r: dict) -> None:
    r.clear()


@pytest.mark.parametrize(
    "edit", [edit_totals, edit_tensors, edit_bytes, edit_shape, edit_sqnr, edit_list]
)
def test_merge_with_an_edited_shard_report(tmp_path: Path, edit: object) -> None:
    index = sharded_checkpoint(tmp_path / "ckpt")
    for k in ("1/2", "2/2"):
        assert run("quantize", index, "--shard", k, "-q").exit_code == 0
    report = next(tmp_path.glob("ckpt/model-00002-of-00002.qc.json"))
    doc = json.loads(report.read_text())
    edit(doc)  # type: ignore[operator]
    report.write_text(json.dumps(doc))
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert_refused(run("quantize", index, "--merge", "-q"), report.name)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("[default]\nbits = {}\n".format("{a=" * 2000 + "1" + "}" * 2000), "nested too deeply"),
        ("[default]\nbits = " + "9" * 5000, "digits"),
        ("[default]\nbits = " + "9" * 4000, "bits"),
    ],
)
def test_hostile_plan_text(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_plan(text, "p.toml")


@pytest.mark.parametrize("value", ["1e400", "inf", "nan", "-1", "-0.5", "junk", "0x10"])
def test_bad_probe_timeout_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("QCOMPRESS_H5_PROBE_TIMEOUT", value)
    with pytest.raises(UsageError, match="QCOMPRESS_H5_PROBE_TIMEOUT"):
        probe_timeout()


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("2.5", 2.5), ("1e300", 1e6)])
def test_probe_timeout_values(monkeypatch: pytest.MonkeyPatch, value: str, expected: float) -> None:
    monkeypatch.setenv("QCOMPRESS_H5_PROBE_TIMEOUT", value)
    assert probe_timeout() == expected


def test_huge_probe_timeout_still_opens_h5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPRESS_H5_PROBE_TIMEOUT", "1e300")
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.ones((4, 4), np.float32)
    assert run("inspect", path).exit_code == 0


@pytest.mark.parametrize("args", [["inspect", "{m}"], ["inspect", "{m}", "--json"]])
def test_closed_stdout_pipe_is_not_an_error(tmp_path: Path, args: list[str]) -> None:
    """``qcompress inspect F | head -1``: the reader leaves early; exit 0, nothing on stderr."""
    src = npz(tmp_path / "m.npz", **{f"t{i}": np.ones(3, np.float32) for i in range(3000)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "qcompress", *(a.format(m=src) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # read one line, then close the pipe like head does
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert stderr == b""


def overflowing_artifact(tmp_path: Path, dtype: str = "float32") -> Path:
    rng = np.random.default_rng(5)
    big = (rng.standard_normal((64, 64)) * 1e5).astype(dtype)
    src = npz(tmp_path / "m.npz", small=np.ones((64, 64), "f4"), big=big)
    art = tmp_path / "m.qc.safetensors"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    return art


def test_dequantize_to_float16_that_would_overflow_is_refused(tmp_path: Path) -> None:
    art = overflowing_artifact(tmp_path)
    out = tmp_path / "h.npz"
    result = run("dequantize", art, "-o", out, "--dtype", "float16")
    line = assert_refused(result, "h.npz", "'big'", "--dtype float32", "65504")
    assert "RuntimeWarning" not in result.output + result.stderr
    peak = float(line.split("up to |")[1].split("|")[0])
    assert 3e5 < peak < 1e6  # the max |value| of the 1e5-scaled normal tensor
    assert not out.exists()
    assert_only(tmp_path, "m.npz", art.name, "m.qc.json")


def test_dequantize_to_float16_within_range_works(tmp_path: Path) -> None:
    src = npz(tmp_path / "m.npz", **weights())
    art = tmp_path / "m.qc.safetensors"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    out = tmp_path / "h.npz"
    assert run("dequantize", art, "-o", out, "--dtype", "float16").exit_code == 0
    with np.load(out) as z:
        assert z["fc.weight"].dtype == np.float16 and np.isfinite(z["fc.weight"]).all()


# --- h5: virtual datasets, large attributes ------------------------------------------------------


def vds_file(path: Path, cyclic: bool) -> Path:
    with h5py.File(path, "w") as f:
        f["w"] = np.ones((8, 8), np.float32)
        pairs = [("a", "b"), ("b", "a")] if cyclic else [("v", "v")]
        for name, source in pairs:
            layout = h5py.VirtualLayout(shape=(8, 8), dtype=np.float32)
            layout[:] = h5py.VirtualSource(".", source, shape=(8, 8))
            f.create_virtual_dataset(name, layout, fillvalue=0)
    return path


@pytest.mark.parametrize("cyclic", [False, True])
@pytest.mark.parametrize("probe", ["5", "0"])
def test_self_referencing_virtual_datasets_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cyclic: bool, probe: str
) -> None:
    monkeypatch.setenv("QCOMPRESS_H5_PROBE_TIMEOUT", probe)  # refused with or without the probe
    path = vds_file(tmp_path / "v.h5", cyclic)
    for command in ("inspect", "quantize"):
        assert_refused(run(command, path, *(["-q"] if command == "quantize" else [])), "virtual")
    assert_only(tmp_path, "v.h5")


def test_in_file_virtual_dataset_is_refused_in_a_subprocess(tmp_path: Path) -> None:
    """The real CLI, so a crash in HDF5 would show as a signal, not as a test failure."""
    path = vds_file(tmp_path / "v.h5", cyclic=True)
    proc = subprocess.run(
        [sys.executable, "-m", "qcompress", "quantize", str(path), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert_only(tmp_path, "v.h5")


def test_h5_with_an_800kb_attribute_dequantizes_back(tmp_path: Path) -> None:
    src = tmp_path / "big.h5"
    config = "x" * 800_000
    with h5py.File(src, "w", libver="latest") as f:
        f["dense/kernel:0"] = np.random.default_rng(0).standard_normal((64, 64)).astype("f4")
        f.attrs["model_config"] = config
        f["dense"].attrs["numbers"] = np.arange(100_000, dtype=np.float64)
    art = tmp_path / "big.qc.safetensors"
    assert run("quantize", src, "-o", art, "-q").exit_code == 0
    back = tmp_path / "back.h5"
    assert run("dequantize", art, "-o", back).exit_code == 0
    with h5py.File(back, "r") as f:
        assert f.attrs["model_config"] == config
        np.testing.assert_array_equal(f["dense"].attrs["numbers"], np.arange(100_000))


def test_small_attributes_keep_the_original_h5_format(tmp_path: Path) -> None:
    """Only files that need dense attribute storage change format: the others keep their
    bytes (the oldest format every HDF5 reader opens)."""
    infos = [TensorInfo("g/w", (2,), "float32")]
    meta = {"format": "h5", "attrs": {}, "groups": [], "datasets": {}}
    write_weights(tmp_path / "a.h5", "h5", infos, [np.ones(2, np.float32)], meta)
    write_weights(tmp_path / "b.h5", "h5", infos, [np.ones(2, np.float32)])
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f.id.get_create_plist().get_version()[0] == 0  # superblock version 0
