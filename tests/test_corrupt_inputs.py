"""Bad inputs to every reader: each must raise a QCompressError (never another exception)
whose one-line message names the file."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from weights_factory import raw_safetensors, write_keras_h5, write_tensors

from qcompress.errors import FormatError, InputError, QCompressError
from qcompress.formats import FORMATS, open_weights

SUFFIX = {"npz": ".npz", "h5": ".h5", "safetensors": ".safetensors", "onnx": ".onnx"}


def load_everything(path: Path) -> None:
    """Open, list, read every tensor and the metadata: whatever is wrong must surface."""
    with open_weights(path) as reader:
        for info in reader.tensor_infos():
            np.asarray(reader.read(info.name)).tobytes()
        reader.metadata()


def assert_refused(path: Path, kind: type[QCompressError] = QCompressError, match: str = "") -> str:
    with pytest.raises(QCompressError) as info:
        load_everything(path)
    message = str(info.value)
    assert isinstance(info.value, kind), message
    assert path.name in message
    assert "\n" not in message
    if match:
        assert match in message, message
    return message


def valid_file(tmp_path: Path, fmt: str) -> Path:
    tensors = {
        "a/kernel:0": np.arange(64, dtype=np.float32).reshape(8, 8),
        "b": np.arange(10, dtype=np.int64),
    }
    return write_tensors(tmp_path / f"valid{SUFFIX[fmt]}", fmt, tensors)


# --- any file ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [*SUFFIX.values(), ".bin"])
def test_zero_byte_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.touch()
    assert_refused(path, InputError, "empty")


def test_directory(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.mkdir()
    assert_refused(path, InputError, "directory")


def test_missing_path(tmp_path: Path) -> None:
    assert_refused(tmp_path / "nope.npz", InputError, "no such file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = valid_file(tmp_path, "npz")
    path.chmod(0)
    assert_refused(path, InputError, "permission denied")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    path = tmp_path / f"random{seed}.safetensors"
    path.write_bytes(np.random.default_rng(seed).bytes(1000))
    assert_refused(path, FormatError)


def test_text_file_is_not_a_weight_file(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_text('{"hello": "world, this is json, not weights"}')
    assert_refused(path, FormatError, "not a weight file")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cut", ["1", "7", "8", "9", "half", "size-1"])
def test_truncated(tmp_path: Path, fmt: str, cut: str) -> None:
    path = valid_file(tmp_path, fmt)
    data = path.read_bytes()
    keep = {"half": len(data) // 2, "size-1": len(data) - 1}.get(cut) or int(cut)
    path.write_bytes(data[:keep])
    assert_refused(path)


def flip_each(path: Path, offsets: Sequence[int]) -> None:
    """Flip one byte at a time; each corrupted file must load or raise a QCompressError whose
    one-line message names the file. Nothing else (UnicodeDecodeError, struct.error, ...) may
    get out."""
    data = path.read_bytes()
    for offset in offsets:
        corrupt = bytearray(data)
        corrupt[offset] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        try:
            load_everything(path)
        except QCompressError as exc:
            assert path.name in str(exc), (offset, str(exc))
            assert "\n" not in str(exc), (offset, str(exc))


# Runs ``flip_each`` in a child process, printing each offset before trying it, so that a
# crash inside the HDF5 C library (which trusts some on-disk lengths) kills only the child and
# tells us where. The parent then resumes after that offset.
_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import test_corrupt_inputs as t
path, offsets = Path(sys.argv[2]), [int(o) for o in sys.argv[3].split(",")]
original = path.read_bytes()
for offset in offsets:
    print(offset, flush=True)
    path.write_bytes(original)
    t.flip_each(path, [offset])
"""


def flip_each_in_child(path: Path, offsets: Sequence[int]) -> dict[int, str]:
    """``flip_each`` for HDF5 files, in child processes. Returns {offset: "crash" | "hang"}
    for the offsets at which the HDF5 library crashed or hung; a Python exception other than
    a QCompressError fails the test."""
    original = path.read_bytes()
    failures: dict[int, str] = {}
    remaining = list(offsets)
    while remaining:
        path.write_bytes(original)
        command = [sys.executable, "-c", _CHILD, str(Path(__file__).parent), str(path)]
        try:
            proc = subprocess.run(
                [*command, ",".join(map(str, remaining))],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if proc.returncode == 0:
                break
            assert proc.returncode < 0, proc.stderr  # a Python exception escaped
            out, kind = proc.stdout, "crash"
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            kind = "hang"
        last = int(out.split()[-1])
        failures[last] = kind
        remaining = remaining[remaining.index(last) + 1 :]
    return failures


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_every_flipped_byte_is_refused_cleanly(tmp_path: Path, fmt: str) -> None:
    path = valid_file(tmp_path, fmt)
    flip_each(path, range(path.stat().st_size))


@pytest.mark.slow  # every byte of an h5 file flipped, each in a crash-isolated child: half a minute
def test_flipped_bytes_in_hdf5_are_refused_cleanly(tmp_path: Path) -> None:
    """Every byte of the first 256 (superblock, root group), then every 5th.

    The file has no variable-length string attributes on purpose: HDF5 2.0.0 trusts their
    on-disk lengths, and a flipped length crashes or hangs the C library inside H5Aread,
    out of reach of any Python check. Native crashes are recorded, not hidden."""
    path = valid_file(tmp_path, "h5")
    size = path.stat().st_size
    failures = flip_each_in_child(path, [*range(256), *range(256, size, 5)])
    if failures:
        pytest.xfail(f"HDF5 library crashed or hung on flipped bytes: {failures}")


# --- safetensors headers -----------------------------------------------------------------

F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

BAD_HEADERS = [
    pytest.param(b"\xff\xfe{}", b"", "not UTF-8", id="non-utf8"),
    pytest.param(b'{"w": ', b"", "invalid JSON", id="invalid-json"),
    pytest.param(b"[1, 2]", b"", "expected a JSON object", id="not-object"),
    pytest.param(
        b"{" + b'"a":' * 1 + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"",
        "nested",
        id="deep-nesting",
    ),
    pytest.param({"w": {**F32_2, "dtype": "F7"}}, b"\0" * 8, "unknown dtype 'F7'", id="dtype"),
    pytest.param({"w": {**F32_2, "shape": [-2]}}, b"\0" * 8, "non-negative", id="negative-dim"),
    pytest.param({"w": {**F32_2, "shape": [2.0]}}, b"\0" * 8, "non-negative", id="float-dim"),
    pytest.param({"w": {**F32_2, "shape": [True]}}, b"\0" * 8, "non-negative", id="bool-dim"),
    pytest.param({"w": {**F32_2, "shape": "2"}}, b"\0" * 8, "shape must be", id="shape-str"),
    pytest.param(
        {"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "lacks data_offsets", id="missing-offsets"
    ),
    pytest.param({"w": [1]}, b"", "must be an object", id="entry-not-object"),
    pytest.param(
        {"w": {**F32_2, "data_offsets": [8, 0]}}, b"\0" * 8, "begin <= end", id="offsets-reversed"
    ),
    pytest.param(
        {"w": {**F32_2, "data_offsets": [0]}}, b"\0" * 8, "data_offsets", id="offsets-short"
    ),
    pytest.param(
        {"w": {**F32_2, "data_offsets": [792, 800]}},
        b"\0" * 640,
        "tensor 'w' data ends at byte 800 but the file has 640 data bytes (truncated?)",
        id="beyond-data",
    ),
    pytest.param(
        {"w": {**F32_2, "data_offsets": [0, 12]}}, b"\0" * 12, "needs 8", id="wrong-byte-count"
    ),
    pytest.param(
        {"a": F32_2, "b": {**F32_2, "data_offsets": [4, 12]}}, b"\0" * 12, "overlap", id="overlap"
    ),
    pytest.param(
        {"a": F32_2, "b": {**F32_2, "data_offsets": [12, 20]}},
        b"\0" * 20,
        "belong to no tensor",
        id="hole",
    ),
    pytest.param({"a": F32_2}, b"\0" * 12, "cover only 8", id="trailing-bytes"),
    pytest.param(
        b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {}}',
        b"\0" * 8,
        "appears twice",
        id="duplicate-key",
    ),
    pytest.param({"__metadata__": {"k": 1}}, b"", "__metadata__", id="metadata-not-str"),
    pytest.param({"__metadata__": ["k"]}, b"", "__metadata__", id="metadata-not-object"),
]


@pytest.mark.parametrize(("header", "data", "message"), BAD_HEADERS)
def test_bad_safetensors_header(tmp_path: Path, header: object, data: bytes, message: str) -> None:
    path = tmp_path / "x.safetensors"
    raw = raw_safetensors(header, data)
    if raw[8:9] != b"{":  # not detected as safetensors by content; open it as one
        from qcompress.formats.safetensors import SafetensorsReader

        path.write_bytes(raw)
        with pytest.raises(FormatError) as info:
            SafetensorsReader(path)
        assert "x.safetensors" in str(info.value)
        assert message in str(info.value)
        return
    path.write_bytes(raw)
    assert_refused(path, FormatError, message)


_JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=False), st.text(max_size=4)
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
_ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "BOOL", "F7", 3]),
        "shape": st.one_of(st.lists(st.integers(-1, 4), max_size=3), _JSON),
        "data_offsets": st.one_of(st.lists(st.integers(-1, 40), min_size=2, max_size=2), _JSON),
    }
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.dictionaries(st.text(max_size=3), st.one_of(_ENTRY, _JSON), max_size=4),
    data_len=st.integers(0, 48),
)
def test_arbitrary_safetensors_headers_load_or_raise_format_error(
    tmp_path: Path, header: dict, data_len: int
) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(raw_safetensors(header, b"\0" * data_len))
    try:
        load_everything(path)
    except QCompressError as exc:
        assert isinstance(exc, FormatError)
        assert path.name in str(exc)
        assert "\n" not in str(exc)


def test_header_length_larger_than_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw_safetensors({"w": F32_2}, b"\0" * 8, header_len=10_000))
    assert_refused(path, FormatError, "larger than the file")


def test_zero_tensors_and_zero_size_tensors_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    empty = {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}
    path.write_bytes(raw_safetensors({"e": empty, "f": empty}))
    load_everything(path)


# --- npz -----------------------------------------------------------------------------------


class _MakesMarker:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_npz_member_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = np.empty(1, dtype=object)
    payload[0] = _MakesMarker(marker)
    path = tmp_path / "evil.npz"
    np.savez(path, weights=np.ones(3), evil=payload)
    assert b"PWNED" in path.read_bytes()  # the pickle really is in there

    message = assert_refused(path, FormatError, "pickled")
    assert "'evil'" in message
    assert not marker.exists()


def test_npz_bad_crc(tmp_path: Path) -> None:
    path = valid_file(tmp_path, "npz")
    data = bytearray(path.read_bytes())
    # The last data byte of the first stored member: flip it, the CRC no longer matches.
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        first = zf.infolist()[0]
    local_header = 30 + len(first.filename.encode()) + len(first.extra)
    data[first.header_offset + local_header + first.compress_size - 1] ^= 0x01
    path.write_bytes(bytes(data))
    assert_refused(path, FormatError, "CRC")


def test_npz_member_that_is_not_an_array(tmp_path: Path) -> None:
    path = tmp_path / "notes.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert_refused(path, FormatError, "'readme.txt' is not a .npy array")


def test_keras3_archive_without_metadata_names_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"")
    assert_refused(path, FormatError, "has no metadata.json")


def test_npz_member_with_garbage_header(tmp_path: Path) -> None:
    path = tmp_path / "garbage.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': <<<<<}\n")
    assert_refused(path, FormatError, "'w.npy'")


def test_npz_structured_dtype_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rec.npz"
    np.savez(path, rec=np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]))
    assert_refused(path, FormatError, "'rec'")


# --- h5 ------------------------------------------------------------------------------------


def test_h5_external_link_is_refused_and_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target.h5"
    with h5py.File(target, "w") as f:
        f["secret"] = np.ones(3)
    path = tmp_path / "linked.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.ones(2)
        f["g/stolen"] = h5py.ExternalLink(str(target), "/secret")
    target.unlink()  # following the link now would fail with an HDF5 error instead
    assert_refused(path, FormatError, "external link")


def test_h5_soft_link_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "soft.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.ones(2)
        f["alias"] = h5py.SoftLink("/w")
    assert_refused(path, FormatError, "soft link")


def test_h5_external_storage_is_refused(tmp_path: Path) -> None:
    (tmp_path / "raw.bin").write_bytes(b"\0" * 16)
    path = tmp_path / "ext.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", shape=(4,), dtype="f4", external=[(str(tmp_path / "raw.bin"), 0, 16)])
    assert_refused(path, FormatError, "external files")


def test_h5_virtual_dataset_from_another_file_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["data"] = np.arange(4.0)
    layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(source), "data", shape=(4,))
    path = tmp_path / "virtual.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("v", layout)
    assert_refused(path, FormatError, "virtual dataset")


def test_h5_compound_dataset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "compound.h5"
    with h5py.File(path, "w") as f:
        f["rec"] = np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])
    assert_refused(path, FormatError, "'rec'")


def test_h5_unsupported_attribute_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "attr.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.ones(2)
        f["w"].attrs["complex"] = np.complex64(1 + 2j)
    assert_refused(path, FormatError, "'complex'")


def test_h5_magic_followed_by_garbage(tmp_path: Path) -> None:
    path = tmp_path / "fake.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(0).bytes(2000))
    assert_refused(path, FormatError, "HDF5")


def test_keras_file_truncated_in_the_data(tmp_path: Path) -> None:
    path = write_keras_h5(tmp_path / "keras.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    assert_refused(path)


def test_struct_helper_is_little_endian() -> None:
    assert raw_safetensors(b"{}")[:8] == struct.pack("<Q", 2)


def test_pickle_marker_class_works_when_actually_unpickled(tmp_path: Path) -> None:
    """Guard for the pickle test: the payload really would create the marker."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_MakesMarker(marker))).close()
    assert marker.exists()
