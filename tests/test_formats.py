"""Format readers and writers: round trips, cross-format writes, determinism, detection by
content, and agreement with the ``safetensors`` package in both directions."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy as st_numpy
from weights_factory import (
    COMMON_DTYPES,
    SAFETENSORS_ONLY,
    all_h5_objects,
    bf16,
    infos_for,
    read_all,
    same_bits,
    sample_tensors,
    write_keras_h5,
    write_tensors,
)

from qcompress.errors import FormatError, UsageError
from qcompress.formats import (
    CODE_DTYPES,
    DTYPE_CODES,
    FORMATS,
    TensorInfo,
    detect_format,
    encode_header,
    format_for_output,
    open_weights,
    tensor_nbytes,
    write_weights,
)

SUFFIX = {"npz": ".npz", "h5": ".h5", "safetensors": ".safetensors", "onnx": ".onnx"}
LAYOUT = {"npz": "pytorch", "h5": "keras", "safetensors": "pytorch", "onnx": "pytorch"}


def dtypes_for(fmt: str) -> tuple[str, ...]:
    return COMMON_DTYPES + SAFETENSORS_ONLY if fmt == "safetensors" else COMMON_DTYPES


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_names_order_shapes_dtypes_and_bits(tmp_path: Path, fmt: str) -> None:
    tensors = sample_tensors(dtypes_for(fmt))
    path = write_tensors(tmp_path / f"w{SUFFIX[fmt]}", fmt, tensors)

    arrays, infos, meta = read_all(path)

    assert meta["format"] == fmt
    assert detect_format(path) == fmt
    expected = infos_for(tensors)
    if fmt == "h5":  # HDF5 lists links by name, whatever the creation order
        expected = sorted(expected, key=lambda i: i.name)
    assert infos == expected
    for name, array in tensors.items():
        assert same_bits(arrays[name], array), name


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_declares_layout(tmp_path: Path, fmt: str) -> None:
    path = write_tensors(tmp_path / f"w{SUFFIX[fmt]}", fmt, {"w": np.ones((2, 3), np.float32)})
    with open_weights(path) as reader:
        assert reader.format == fmt
        assert reader.layout == LAYOUT[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_float_tensors_pass_through_byte_identical(tmp_path: Path, fmt: str) -> None:
    tensors = {
        "ids": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max], np.int64),
        "mask": np.array([[True, False], [False, True]]),
    }
    arrays, _, _ = read_all(write_tensors(tmp_path / f"w{SUFFIX[fmt]}", fmt, tensors))
    for name, array in tensors.items():
        assert arrays[name].tobytes() == array.tobytes()


def test_bfloat16_and_float8_values_survive_safetensors(tmp_path: Path) -> None:
    tensors = {
        "bf": bf16([1.0, -2.5, 3.0e38, float("inf"), float("nan")]),
        "e4m3": np.array([0.5, -448.0], dtype=ml_dtypes.float8_e4m3fn),
        "e5m2": np.array([0.5, -57344.0], dtype=ml_dtypes.float8_e5m2),
    }
    arrays, infos, _ = read_all(write_tensors(tmp_path / "w.safetensors", "safetensors", tensors))
    assert [i.dtype for i in infos] == ["bfloat16", "float8_e4m3fn", "float8_e5m2"]
    for name, array in tensors.items():
        assert same_bits(arrays[name], array)


def test_npz_reads_compressed_fortran_and_big_endian_members(tmp_path: Path) -> None:
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    big = np.arange(5, dtype=">f8")
    path = tmp_path / "c.npz"
    np.savez_compressed(path, fortran=fortran, big=big, **{"a/b:0": np.ones(2)})

    arrays, infos, _ = read_all(path)

    assert [i.name for i in infos] == ["fortran", "big", "a/b:0"]
    assert infos[1].dtype == "float64"
    np.testing.assert_array_equal(arrays["fortran"], fortran)
    np.testing.assert_array_equal(arrays["big"], big)
    assert arrays["big"].dtype == np.dtype("float64")


def test_npz_lists_tensors_from_headers_without_reading_data(tmp_path: Path) -> None:
    """Damage past a member's .npy header (a bad CRC) shows only when that member is read."""
    path = write_tensors(tmp_path / "lazy.npz", "npz", {"w": np.zeros((100, 100), np.float32)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the float data
    path.write_bytes(bytes(data))
    with open_weights(path) as reader:
        assert reader.tensor_infos() == [TensorInfo("w", (100, 100), "float32")]
        with pytest.raises(FormatError, match=r"lazy\.npz.*'w'.*CRC"):
            reader.read("w")


def test_npz_member_shorter_than_its_header_says(tmp_path: Path) -> None:
    path = tmp_path / "short.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", header.getvalue() + b"\0" * 16)
    with pytest.raises(FormatError, match=r"short\.npz: npz member 'w.npy' has 144 bytes"):
        open_weights(path)


def test_h5_string_datasets_are_reported_and_round_trip_in_h5(tmp_path: Path) -> None:
    src = write_keras_h5(tmp_path / "k.h5")
    arrays, infos, meta = read_all(src)
    dtypes = {i.name: i.dtype for i in infos}
    assert dtypes["strings/fixed"] == "|S3"
    assert dtypes["strings/vlen"] == "object"
    assert arrays["strings/vlen"].tolist() == ["x", "yz"]

    out = tmp_path / "out.h5"
    write_weights(out, "h5", infos, (arrays[i.name] for i in infos), meta)
    again, again_infos, _ = read_all(out)
    assert again_infos == infos
    assert again["strings/fixed"].tolist() == [b"abc", b"de"]
    assert again["strings/vlen"].tolist() == ["x", "yz"]


# --- Keras HDF5: groups and attributes -----------------------------------------------------


def test_keras_h5_rewrite_keeps_every_group_and_attribute_with_exact_dtypes(
    tmp_path: Path,
) -> None:
    src = write_keras_h5(tmp_path / "keras.h5")
    arrays, infos, meta = read_all(src)
    meta = json.loads(json.dumps(meta, allow_nan=False))  # as stored in the artifact

    out = tmp_path / "rewritten.h5"
    write_weights(out, "h5", infos, (arrays[i.name] for i in infos), meta)

    before, after = all_h5_objects(src), all_h5_objects(out)
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].keys() == after[name].keys(), name
        for key in before[name]:
            assert before[name][key] == after[name][key], (name, key)
    with h5py.File(out) as f:
        assert "optimizer_weights/empty_group" in f
        assert f["model_weights"].attrs["layer_names"].dtype == np.dtype("S16")
        assert f.attrs["keras_version"] == "2.15.0"
        assert f["model_weights/dense/dense/kernel:0"].attrs["big_endian"].dtype.str == ">i4"


def test_h5_metadata_describes_keras_attributes_in_tagged_json(tmp_path: Path) -> None:
    _, _, meta = read_all(write_keras_h5(tmp_path / "keras.h5"))
    layer_names = next(g for g in meta["groups"] if g["name"] == "model_weights")["attrs"][
        "layer_names"
    ]
    assert layer_names == {
        "kind": "bytes",
        "dtype": "|S16",
        "cset": "ascii",
        "shape": [4],
        "value": ["conv2d", "depthwise_conv2d", "dense", "dropout"],
    }
    assert meta["attrs"]["keras_version"] == {
        "kind": "str",
        "cset": "ascii",
        "shape": [],
        "value": "2.15.0",
    }
    kernel = meta["datasets"]["model_weights/dense/dense/kernel:0"]["attrs"]
    assert kernel["float16_array"]["value"] == [1.5, "nan", "-inf"]
    assert kernel["raw_bytes"]["b64"] is True
    assert kernel["nothing"] == {"kind": "empty", "dtype": "<f4"}
    json.dumps(meta, allow_nan=False)


def test_h5_from_npz_source_makes_groups_from_names(tmp_path: Path) -> None:
    src = write_tensors(tmp_path / "w.npz", "npz", {"a/b/kernel:0": np.ones((2, 2), np.float32)})
    arrays, infos, meta = read_all(src)
    out = tmp_path / "w.h5"
    write_weights(out, "h5", infos, (arrays[i.name] for i in infos), meta)
    with h5py.File(out) as f:
        assert isinstance(f["a/b"], h5py.Group)
        assert f["a/b/kernel:0"].shape == (2, 2)
        assert dict(f.attrs) == {}


# --- cross-format ----------------------------------------------------------------------


def test_cross_format_chain_h5_safetensors_npz_h5_keeps_everything(tmp_path: Path) -> None:
    src = tmp_path / "start.h5"
    tensors = sample_tensors(COMMON_DTYPES)
    write_tensors(src, "h5", tensors)

    path = src
    for fmt in ("safetensors", "npz", "h5"):
        arrays, infos, meta = read_all(path)
        path = tmp_path / f"step{SUFFIX[fmt]}"
        write_weights(path, fmt, infos, (arrays[i.name] for i in infos), meta)

    arrays, infos, _ = read_all(path)
    assert {i.name: (i.shape, i.dtype) for i in infos} == {
        i.name: (i.shape, i.dtype) for i in infos_for(tensors)
    }
    for name, array in tensors.items():
        assert same_bits(arrays[name], array), name


def test_safetensors_metadata_is_kept_only_from_a_safetensors_source(tmp_path: Path) -> None:
    tensors = {"w": np.ones(3, np.float32)}
    write_tensors(
        tmp_path / "a.safetensors",
        "safetensors",
        tensors,
        {"format": "safetensors", "__metadata__": {"k": "v"}},
    )
    write_tensors(
        tmp_path / "b.safetensors", "safetensors", tensors, {"format": "npz", "__metadata__": {}}
    )
    assert read_all(tmp_path / "a.safetensors")[2]["__metadata__"] == {"k": "v"}
    assert read_all(tmp_path / "b.safetensors")[2]["__metadata__"] == {}


# --- safetensors against the reference package ------------------------------------------


def test_our_safetensors_output_loads_with_the_safetensors_package(tmp_path: Path) -> None:
    tensors = sample_tensors(COMMON_DTYPES)
    path = write_tensors(
        tmp_path / "w.safetensors",
        "safetensors",
        tensors,
        {"format": "safetensors", "__metadata__": {"purpose": "test"}},
    )
    loaded = st_numpy.load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, array in tensors.items():
        assert same_bits(loaded[name], array), name
    with safetensors.safe_open(path, framework="np") as f:
        assert f.metadata() == {"purpose": "test"}


def test_our_bfloat16_bytes_match_the_safetensors_package(tmp_path: Path) -> None:
    tensors = {"bf": bf16([1.0, -2.0, 0.1]), "f8": np.ones(2, ml_dtypes.float8_e5m2)}
    path = write_tensors(tmp_path / "w.safetensors", "safetensors", tensors)
    parsed = dict(safetensors.deserialize(path.read_bytes()))
    assert parsed["bf"]["dtype"] == "BF16"
    assert bytes(parsed["bf"]["data"]) == tensors["bf"].tobytes()
    assert parsed["f8"]["dtype"] == "F8_E5M2"
    assert bytes(parsed["f8"]["data"]) == tensors["f8"].tobytes()


def test_files_from_the_safetensors_package_read_with_our_reader(tmp_path: Path) -> None:
    tensors = sample_tensors(COMMON_DTYPES + SAFETENSORS_ONLY)
    path = tmp_path / "lib.safetensors"
    st_numpy.save_file(tensors, path, metadata={"format": "pt"})

    arrays, infos, meta = read_all(path)

    assert meta == {"format": "safetensors", "__metadata__": {"format": "pt"}}
    assert {i.name for i in infos} == tensors.keys()
    for name, array in tensors.items():
        assert same_bits(arrays[name], array), name


def test_dtype_codes_cover_both_directions() -> None:
    assert len(DTYPE_CODES) == len(CODE_DTYPES) == 15
    for name, code in DTYPE_CODES.items():
        assert CODE_DTYPES[code] == name
        np.dtype(name)  # every name is a numpy (or ml_dtypes) dtype


def test_encode_header_golden_bytes() -> None:
    infos = [TensorInfo("b", (2,), "float16"), TensorInfo("a", (), "bool")]
    header = encode_header(infos, {"z": "1", "a": "2"})
    body = b'{"__metadata__":{"a":"2","z":"1"},"b":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"a":{"dtype":"BOOL","shape":[],"data_offsets":[4,5]}}'  # noqa: E501
    padded = body + b" " * (-len(body) % 8)
    assert header == len(padded).to_bytes(8, "little") + padded
    assert len(header) % 8 == 0
    assert tensor_nbytes(infos[0]) == 4
    assert tensor_nbytes(TensorInfo("e", (0, 9), "float32")) == 0


def test_encode_header_refuses_dtypes_safetensors_cannot_hold() -> None:
    with pytest.raises(UsageError, match="complex64"):
        encode_header([TensorInfo("c", (1,), "complex64")], None)


# --- determinism ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_writing_twice_gives_identical_bytes(tmp_path: Path, fmt: str) -> None:
    tensors = sample_tensors(dtypes_for(fmt))
    a = write_tensors(tmp_path / f"a{SUFFIX[fmt]}", fmt, tensors)
    b = write_tensors(tmp_path / f"b{SUFFIX[fmt]}", fmt, tensors)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_npz_output_is_a_plain_numpy_archive(tmp_path: Path) -> None:
    path = write_tensors(tmp_path / "w.npz", "npz", {"x/y:0": np.arange(3)})
    with zipfile.ZipFile(path) as zf:
        (member,) = zf.infolist()
        assert member.filename == "x/y:0.npy"
        assert member.date_time == (1980, 1, 1, 0, 0, 0)
    with np.load(path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["x/y:0"], np.arange(3))


# --- detection and output suffixes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "misleading_name"),
    [("safetensors", "model.npz"), ("h5", "model.safetensors"), ("npz", "model.h5")],
)
def test_format_is_detected_by_content_not_name(
    tmp_path: Path, fmt: str, misleading_name: str
) -> None:
    path = write_tensors(tmp_path / misleading_name, fmt, {"w": np.ones(2, np.float32)})
    assert detect_format(path) == fmt
    arrays, _, meta = read_all(path)
    assert meta["format"] == fmt
    np.testing.assert_array_equal(arrays["w"], np.ones(2, np.float32))


def test_hdf5_with_a_user_block_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=1024) as f:
        f["w"] = np.ones(2)
    with open(path, "r+b") as fh:
        fh.write(b"not the magic")
    assert detect_format(path) == "h5"
    assert read_all(path)[1] == [TensorInfo("w", (2,), "float64")]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("m.npz", "npz"),
        ("m.h5", "h5"),
        ("m.HDF5", "h5"),
        ("m.weights.h5", "h5"),
        ("m.safetensors", "safetensors"),
        ("m.keras", "keras"),
    ],
)
def test_format_for_output_by_suffix(name: str, fmt: str) -> None:
    assert format_for_output(Path(name)) == fmt


@pytest.mark.parametrize("name", ["m.bin", "m", "m.pt"])
def test_format_for_output_refuses_other_suffixes(name: str) -> None:
    with pytest.raises(UsageError, match=r"\.npz, \.h5|\.h5") as info:
        format_for_output(Path(name))
    assert name in str(info.value)


# --- writer contracts --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_array_not_matching_its_info_is_a_programming_error(tmp_path: Path, fmt: str) -> None:
    infos = [TensorInfo("w", (2, 3), "float32")]
    with pytest.raises(ValueError, match="shape"):
        write_weights(tmp_path / f"w{SUFFIX[fmt]}", fmt, infos, [np.ones((3, 2), np.float32)], {})
    with pytest.raises(ValueError, match="dtype"):
        write_weights(tmp_path / f"w{SUFFIX[fmt]}", fmt, infos, [np.ones((2, 3), np.int32)], {})


@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_bfloat16_to_npz_or_h5_is_a_usage_error(tmp_path: Path, fmt: str) -> None:
    infos = [TensorInfo("w", (2,), "bfloat16")]
    with pytest.raises(UsageError, match="bfloat16") as info:
        write_weights(tmp_path / f"w{SUFFIX[fmt]}", fmt, infos, [bf16([1, 2])], {})
    assert "safetensors" in str(info.value)


def test_h5_refuses_a_name_that_is_also_a_group(tmp_path: Path) -> None:
    infos = [TensorInfo("a", (1,), "float32"), TensorInfo("a/b", (1,), "float32")]
    with pytest.raises(UsageError, match="'a' and 'a/b'"):
        write_weights(tmp_path / "w.h5", "h5", infos, [np.ones(1, np.float32)] * 2, {})


def test_arrays_are_consumed_one_at_a_time(tmp_path: Path) -> None:
    """The writer asks for the next array only after writing the previous one."""
    consumed: list[str] = []
    infos = [TensorInfo(n, (4,), "float32") for n in "abc"]

    def arrays():
        for info in infos:
            consumed.append(info.name)
            yield np.zeros(4, np.float32)

    for fmt in FORMATS:
        consumed.clear()
        write_weights(tmp_path / f"w{SUFFIX[fmt]}", fmt, infos, arrays(), {})
        assert consumed == ["a", "b", "c"]


def test_unwritable_output_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "folder" / "w.safetensors"
    with pytest.raises(UsageError, match="cannot write"):
        write_tensors(path, "safetensors", {"w": np.ones(2, np.float32)})


# --- the format registry -----------------------------------------------------------------


def test_registry_drives_detection_suffixes_and_writers() -> None:
    from qcompress.formats import OUTPUT_SUFFIXES, READERS, REGISTRY

    names = [f.name for f in REGISTRY]
    assert len(names) == len(set(names))
    assert FORMATS == ("npz", "h5", "safetensors", "onnx")  # the writable ones, in registry order
    assert OUTPUT_SUFFIXES == {
        ".npz": "npz",
        ".h5": "h5",
        ".hdf5": "h5",
        ".safetensors": "safetensors",
        ".keras": "keras",
        ".onnx": "onnx",
    }
    assert set(READERS) == {"npz", "h5", "safetensors", "gguf", "onnx"}  # file formats, by content
    folder = {f.name for f in REGISTRY if f.claims is not None}
    assert folder == {"compressed-tensors", "safetensors-sharded", "keras", "keras-sharded"}
    read_only = folder - {"keras"} | {"gguf"}  # keras-sharded: rebuilt unsharded as h5
    assert all(f.write is None for f in REGISTRY if f.name in read_only)
    # .keras is written only from a .keras source (its config.json), so not in FORMATS
    assert [f.name for f in REGISTRY if f.needs_source] == ["keras"]


def test_importing_formats_does_not_load_h5py() -> None:
    code = (
        "import sys; import qcompress.formats as f; import qcompress.formats.h5; "
        "assert f.FORMATS; assert 'h5py' not in sys.modules, 'h5py loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_content_message_lists_every_file_format(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 64)
    with pytest.raises(FormatError) as err:
        detect_format(path)
    assert str(err.value) == (
        f"{path}: not a weight file (expected .npz, HDF5, safetensors, GGUF or ONNX content)"
    )


@pytest.mark.parametrize(
    ("head", "kind"),
    [(b"\x89HD", "HDF5"), (b"PK\x03", "npz"), (b"\x00\x01", None), (b"GG", None)],
)
def test_a_file_cut_inside_a_magic_names_the_format(tmp_path: Path, head: bytes, kind: str) -> None:
    path = tmp_path / "w"
    path.write_bytes(head)
    with pytest.raises(FormatError) as err:
        detect_format(path)
    what = f"the start of an {kind} file" if kind else "too short to be a weight file"
    assert str(err.value) == f"{path}: only {len(head)} bytes, {what} (truncated?)"


@pytest.mark.parametrize(
    ("name", "shape", "layout", "axis"),
    [
        ("w", (8, 4, 3, 3), "pytorch", 0),
        ("dense/kernel:0", (4, 8), "keras", 1),
        ("conv/kernel:0", (3, 3, 4, 8), "keras", 3),
        ("dw/depthwise_kernel:0", (3, 3, 4, 1), "keras", 2),
        ("dw/depthwise_kernel:0", (4, 1), "keras", 1),  # not 4-D: an ordinary kernel
    ],
)
def test_default_axis_follows_the_layout_convention(
    name: str, shape: tuple[int, ...], layout: str, axis: int
) -> None:
    from qcompress.formats import default_axis
    from qcompress.formats.registry import BY_NAME

    info = TensorInfo(name, shape, "float32")
    assert default_axis(info, layout) == axis
    for fmt in BY_NAME.values():
        if fmt.layout == layout:
            assert fmt.default_axis(info) == axis
