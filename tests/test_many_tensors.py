"""Per-tensor costs that a model of 100k tiny tensors exposes: each fast path gives what the
general one gives, and is the one taken (counted, never timed)."""

from __future__ import annotations

import gc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompress import api
from qcompress.errors import FormatError, UsageError
from qcompress.formats import npz, safetensors
from qcompress.formats.base import TensorInfo
from qcompress.malloc import paused_gc


def test_paused_gc_restores_the_collector_and_nests() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a host that turned it off keeps it off
    finally:
        gc.enable()


def test_api_commands_run_without_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.npz"
    np.savez(model, w=np.ones((4, 4), np.float32))
    seen = []
    original = npz.NpzReader.tensor_infos

    def spy(self: npz.NpzReader) -> list[TensorInfo]:
        seen.append(gc.isenabled())
        return original(self)

    monkeypatch.setattr(npz.NpzReader, "tensor_infos", spy)
    api.inspect(model)
    with pytest.raises(UsageError):
        api.quantize_file(model, output=tmp_path / "out.npz")  # an error still re-enables it
    assert seen and not any(seen)
    assert gc.isenabled()


NAMES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), min_size=1
)


@settings(max_examples=25, deadline=None)
@given(
    names=st.lists(NAMES, min_size=1, max_size=4, unique=True),
    compressed=st.booleans(),
    shape=st.lists(st.integers(0, 3), max_size=3),
)
def test_npz_one_read_headers_match_zipfile(
    tmp_path_factory: pytest.TempPathFactory, names: list[str], compressed: bool, shape: list[int]
) -> None:
    """The one-``pread`` header path and ``ZipFile.open`` agree on every member np.savez and
    np.savez_compressed write (non-ASCII names set the UTF-8 flag; compressed members take the
    general path)."""
    path = tmp_path_factory.mktemp("npz") / "m.npz"
    arrays = {n: np.zeros(shape, np.float32) for n in names}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    with npz.NpzReader(path) as reader:
        for entry in reader._zip.infolist():
            with reader._zip.open(entry) as fh:
                expected = (*npz._read_npy_header(fh), fh.tell())
            assert reader._member_header(entry) == expected
        assert [i.name for i in reader.tensor_infos()] == names


def test_npz_index_opens_no_member_of_a_stored_npz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, **{f"t{i}": np.full((i, 2), i, np.float64) for i in range(50)})
    opened = []
    original = zipfile.ZipFile.open

    def counted(self: zipfile.ZipFile, *args: object, **kwargs: object) -> object:
        opened.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", counted)
    with npz.NpzReader(path) as reader:
        assert len(reader.tensor_infos()) == 50
        assert opened == []
        assert (reader.read("t7") == 7).all() and reader.read("t7").shape == (7, 2)


def test_npz_local_header_that_disagrees_takes_the_checked_path(tmp_path: Path) -> None:
    """A local header naming another file than the directory is zipfile's error, as before."""
    path = tmp_path / "m.npz"
    np.savez(path, abc=np.zeros(3, np.float32))
    data = bytearray(path.read_bytes())
    data[30:33] = b"xyz"  # the local header's copy of the name "abc.npy"
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="differ"):
        npz.NpzReader(path)


def test_safetensors_header_matches_per_entry_encoding() -> None:
    """The one-call header is byte for byte what encoding entry by entry gave."""
    import json

    infos = [
        TensorInfo('b\u00e9"\\', (2, 3), "float32"),
        TensorInfo("a", (), "bfloat16"),
        TensorInfo("z", (0, 5), "int8"),
    ]
    meta = {"z": "1", "a": "\u00fc"}
    header = safetensors.encode_header(infos, meta)

    def dumps(value: object, **kw: object) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, **kw)  # type: ignore[arg-type]

    parts = ['"__metadata__":' + dumps(meta, sort_keys=True)]
    offset = 0
    for info, size in zip(infos, (24, 2, 0), strict=True):
        entry = {"dtype": safetensors.DTYPE_CODES[info.dtype], "shape": list(info.shape)}
        parts.append(
            dumps(info.name) + ":" + dumps({**entry, "data_offsets": [offset, offset + size]})
        )
        offset += size
    text = ("{" + ",".join(parts) + "}").encode()
    text += b" " * (-len(text) % 8)
    assert header == len(text).to_bytes(8, "little") + text


def test_safetensors_read_reuses_only_buffers_nobody_holds(tmp_path: Path) -> None:
    """Large reads reuse a buffer once no array, view or memoryview of it is left; what a
    caller still holds is never overwritten."""
    path = tmp_path / "m.safetensors"
    n = safetensors._REUSE_MIN_BYTES // 4
    infos = [TensorInfo(f"t{i}", (n,), "float32") for i in range(3)]
    safetensors.write_safetensors(path, infos, [np.full(n, i, np.float32) for i in range(3)])
    with safetensors.SafetensorsReader(path) as reader:
        first = reader.read("t0")
        base = id(first.base)  # not the buffer itself: holding it would keep it from reuse
        view = memoryview(first[10:])
        del first
        second = reader.read("t1")  # t0's buffer is still held through the memoryview
        assert id(second.base) != base and np.frombuffer(view, np.float32)[0] == 0
        del view, second
        third = reader.read("t2")
        assert id(third.base) == base and (third == 2).all()
        small = [reader.read("t0")[:1] for _ in range(2)]
        assert small[0].base is not small[1].base  # both held: two buffers


def test_writer_syncs_in_the_background_and_still_fsyncs_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from qcompress.artifact import writer

    calls: list[str] = []
    monkeypatch.setattr(writer, "SYNC_EVERY", 1 << 10)
    real_fdatasync, real_fsync = os.fdatasync, os.fsync
    monkeypatch.setattr(
        writer.os, "fdatasync", lambda fd: (calls.append("fdatasync"), real_fdatasync(fd))[1]
    )
    monkeypatch.setattr(writer.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    model = tmp_path / "m.npz"
    np.savez(
        model,
        **{
            f"w{i}": np.random.default_rng(i).standard_normal((64, 256), np.float32)
            for i in range(8)
        },
    )
    api.quantize_file(model, output=tmp_path / "m.qc.safetensors")
    assert "fdatasync" in calls and calls[-1] == "fsync"


def test_kernels_load_in_a_thread_only_when_a_tensor_needs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from qcompress.engine import jit

    threads: list[str] = []
    real = jit.use_fast

    def spy(size: int) -> bool:
        threads.append(threading.current_thread().name)
        return real(size)

    monkeypatch.setattr(jit, "use_fast", spy)
    small = tmp_path / "small.npz"
    np.savez(small, w=np.ones((64, 64), np.float32))
    api.quantize_file(small, output=tmp_path / "small.qc.safetensors")
    assert "qcompress-kernels" not in threads
    big = tmp_path / "big.npz"
    np.savez(big, w=np.ones((jit.MIN_ELEMENTS // 256, 256), np.float32))
    api.quantize_file(big, output=tmp_path / "big.qc.safetensors")
    assert "qcompress-kernels" in threads


def test_npz_reads_stored_members_directly_and_checks_their_crc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored C-order members are read with one pread (numpy's read_array, which parses the
    header again, is not called); Fortran-order ones still go through it; a flipped bit in
    the data is the CRC error zipfile gives."""
    arrays = {
        "big_endian": np.arange(12, dtype=">f4").reshape(3, 4),
        "scalar": np.array(5),
        "empty": np.zeros((0, 3)),
        "text": np.array([b"ab", b"c"]),
        "flags": np.array([True, False]),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    }
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    read_array = []
    original = np.lib.format.read_array
    monkeypatch.setattr(
        np.lib.format, "read_array", lambda *a, **k: (read_array.append(1), original(*a, **k))[1]
    )
    with npz.NpzReader(path) as reader:
        for name, expected in arrays.items():
            got = reader.read(name)
            assert got.shape == expected.shape and (got == expected).all()
            assert got.dtype.byteorder in "=|"
    assert len(read_array) == 1  # the Fortran-order member only
    data = bytearray(path.read_bytes())
    data[data.find(arrays["big_endian"].tobytes()) + 5] ^= 1
    path.write_bytes(bytes(data))
    with npz.NpzReader(path) as reader, pytest.raises(FormatError, match="Bad CRC-32"):
        reader.read("big_endian")


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True) | st.just(float("nan")),
        min_size=1,
        max_size=12,
    ),
    dtype=st.sampled_from(["float32", "float16", "float64"]),
)
def test_min_max_is_the_finite_extremes(values: list[float], dtype: str) -> None:
    """The two-reduction fast path gives what masking out NaN and Inf gives."""
    from qcompress.quantize.pipeline import min_max

    with np.errstate(over="ignore"):
        x = np.array(values, dtype=dtype)
    finite = x.astype(np.float32)[np.isfinite(x.astype(np.float32))]
    expected = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
    assert min_max(x) == expected
