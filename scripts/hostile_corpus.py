#!/usr/bin/env python3
"""Generate the hostile-input corpus: broken, lying and malicious weight files and artifacts.

    python scripts/hostile_corpus.py [FOLDER]      # default: tests/corpus/

Every file is made from a fixed recipe and seed, so rerunning gives the same bytes and the
committed corpus only changes when a case is added. Names say what each case is:
``FORMAT-CASE.EXT`` where FORMAT is ``any``, ``npz``, ``safetensors``, ``h5`` or ``artifact``
(the format the bytes pretend to be; detection is by content, so the suffix is only a hint).
``tests/test_hostile.py`` and ``scripts/hostile_check.py`` run qcompress on every file; each
case must end in a clean error (or success), never a traceback, a hang or a leftover file.
The whole corpus stays well under 2 MB: base files are a few KB.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = REPO / "tests" / "corpus"
UNPICKLED_MARKER = "qcompress-was-unpickled.marker"  # created in the cwd if a pickle ever runs
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

Cases = dict[str, bytes]


def base_tensors() -> dict[str, np.ndarray]:
    """A tiny model: one tensor big enough to be quantized, a bias, an int tensor."""
    rng = np.random.default_rng(6)
    return {
        "dense/kernel": rng.normal(size=(32, 48)).astype(np.float32),
        "dense/bias": rng.normal(size=(32,)).astype(np.float32),
        "steps": np.arange(4, dtype=np.int64),
    }


def _write_with_qcompress(tmp: Path, fmt: str, suffix: str) -> bytes:
    from qcompress.formats import TensorInfo, write_weights

    tensors = base_tensors()
    infos = [TensorInfo(n, a.shape, a.dtype.name) for n, a in tensors.items()]
    path = tmp / f"base{suffix}"
    write_weights(path, fmt, infos, iter(tensors.values()), {})
    return path.read_bytes()


def _keras_h5(tmp: Path) -> bytes:
    """A small Keras-style h5 with variable-length string attributes (what Keras writes)."""
    path = tmp / "keras.h5"
    tensors = base_tensors()
    with h5py.File(path, "w", libver="earliest") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "layers": []})
        g = f.create_group("model_weights/dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"])
        g["dense/kernel:0"] = tensors["dense/kernel"].T.copy()
        g["dense/bias:0"] = tensors["dense/bias"]
    return path.read_bytes()


def _artifact(tmp: Path, source: bytes) -> bytes:
    from qcompress import api

    src = tmp / "art-src.npz"
    src.write_bytes(source)
    out = tmp / "base.qc.safetensors"
    api.quantize_file(src, api.QuantizeOptions(bits=4, min_elements=16), output=out, force=True)
    return out.read_bytes()


def truncations(prefix: str, data: bytes, ext: str) -> Cases:
    """The file cut at fixed small offsets (magic, lengths, headers) and at fractions."""
    size = len(data)
    offsets = {1, 4, 7, 8, 9, 16, 32, 64, 100, 256, 512, 1024, 2048}
    offsets |= {size * k // 8 for k in range(1, 8)} | {size - 1, size - 8, size - 100}
    return {
        f"{prefix}-truncated-at-{o:06d}{ext}": data[:o] for o in sorted(offsets) if 0 < o < size
    }


# --- files of any kind ---------------------------------------------------------------------


def any_cases() -> Cases:
    rng = np.random.default_rng(0)
    cases = {f"any-zero-bytes{ext}": b"" for ext in (".npz", ".h5", ".safetensors", ".bin")}
    cases["any-random-bytes.safetensors"] = rng.bytes(3000)
    cases["any-text-file.npz"] = b'{"hello": "this is JSON, not weights"}\n'
    cases["any-one-byte.h5"] = b"\x89"
    cases["any-hdf5-magic-only.h5"] = HDF5_MAGIC
    cases["any-hdf5-magic-then-garbage.h5"] = HDF5_MAGIC + rng.bytes(4000)
    cases["any-zip-magic-then-garbage.npz"] = b"PK\x03\x04" + rng.bytes(2000)
    cases["any-zeros.safetensors"] = bytes(4096)
    return cases


# --- safetensors ---------------------------------------------------------------------------


def st_file(header: object, data: bytes = b"", header_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


def safetensors_cases(base: bytes) -> Cases:
    f32 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    d16 = b"\0" * 16
    cases: Cases = {}
    put = cases.__setitem__
    huge_empty = {"dtype": "F32", "shape": [1 << 40, 1 << 40, 0], "data_offsets": [0, 0]}
    put("safetensors-zero-elements-huge-dims.safetensors", st_file({"a": huge_empty}))
    put(
        "safetensors-offsets-beyond-file.safetensors",
        st_file({"w": {**f32, "data_offsets": [1 << 40, (1 << 40) + 16]}}, d16),
    )
    put(
        "safetensors-end-beyond-file.safetensors",
        st_file({"w": {**f32, "data_offsets": [0, 1 << 62]}}, d16),
    )
    put(
        "safetensors-overlapping-ranges.safetensors",
        st_file({"a": f32, "b": {**f32, "data_offsets": [8, 24]}}, b"\0" * 24),
    )
    put("safetensors-same-range-twice.safetensors", st_file({"a": f32, "b": f32}, d16))
    put(
        "safetensors-hole-between.safetensors",
        st_file({"a": f32, "b": {**f32, "data_offsets": [20, 36]}}, b"\0" * 36),
    )
    put("safetensors-trailing-bytes.safetensors", st_file({"a": f32}, b"\0" * 4096))
    put("safetensors-dtype-mismatch.safetensors", st_file({"w": {**f32, "dtype": "F64"}}, d16))
    put("safetensors-unknown-dtype.safetensors", st_file({"w": {**f32, "dtype": "F7"}}, d16))
    put("safetensors-shape-mismatch.safetensors", st_file({"w": {**f32, "shape": [3, 3]}}, d16))
    put(
        "safetensors-byte-count-mismatch.safetensors",
        st_file({"w": {**f32, "data_offsets": [0, 12]}}, d16[:12]),
    )
    put(
        "safetensors-huge-shape.safetensors",
        st_file({"w": {**f32, "shape": [1 << 40, 1 << 40]}}, d16),
    )
    put(
        "safetensors-huge-shape-huge-offsets.safetensors",
        st_file({"w": {**f32, "shape": [1 << 30, 1 << 30], "data_offsets": [0, 1 << 62]}}, d16),
    )
    put("safetensors-negative-dim.safetensors", st_file({"w": {**f32, "shape": [-4, -1]}}, d16))
    put("safetensors-float-dim.safetensors", st_file({"w": {**f32, "shape": [2.0, 2]}}, d16))
    put(
        "safetensors-offsets-reversed.safetensors",
        st_file({"w": {**f32, "data_offsets": [16, 0]}}, d16),
    )
    put(
        "safetensors-offsets-not-list.safetensors",
        st_file({"w": {**f32, "data_offsets": "0-16"}}, d16),
    )
    put(
        "safetensors-missing-dtype.safetensors",
        st_file({"w": {"shape": [2, 2], "data_offsets": [0, 16]}}, d16),
    )
    put(
        "safetensors-header-len-larger-than-file.safetensors",
        st_file({"w": f32}, d16, header_len=10_000),
    )
    put("safetensors-header-len-2pow63.safetensors", st_file({"w": f32}, d16, header_len=1 << 63))
    put(
        "safetensors-header-len-max.safetensors", st_file({"w": f32}, d16, header_len=(1 << 64) - 1)
    )
    put("safetensors-header-len-zero.safetensors", st_file(b"", b"{}" + d16))
    put("safetensors-non-utf8-header.safetensors", st_file(b'{"w\xff\xfe": 1}', d16))
    put(
        "safetensors-lone-surrogate-key.safetensors",
        st_file(b'{"\\ud800": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}', d16),
    )
    put(
        "safetensors-deeply-nested-json.safetensors",
        st_file(b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"),
    )
    put(
        "safetensors-deeply-nested-objects.safetensors",
        st_file(b'{"a": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_001),
    )
    put("safetensors-invalid-json.safetensors", st_file(b'{"w": {"dtype": '))
    put("safetensors-json-array.safetensors", st_file(b"[1, 2, 3]"))
    put(
        "safetensors-duplicate-key.safetensors",
        st_file(
            b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, '
            b'"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}',
            d16,
        ),
    )
    put(
        "safetensors-metadata-not-strings.safetensors",
        st_file({"__metadata__": {"k": [1, 2]}, "w": f32}, d16),
    )
    put(
        "safetensors-metadata-huge-number.safetensors",
        st_file(
            b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1' + b"0" * 5000 + b"]}}",
            d16,
        ),
    )
    put(
        "safetensors-nan-in-json.safetensors",
        st_file(b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 16]}}', d16),
    )
    put(
        "safetensors-bf16-odd-bytes.safetensors",
        st_file({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 5]}}, b"\0" * 5),
    )
    put(
        "safetensors-nan-weights.safetensors",
        st_file(
            {"w": {"dtype": "F32", "shape": [32, 64], "data_offsets": [0, 8192]}},
            np.full((32, 64), np.nan, np.float32).tobytes(),
        ),
    )
    put("safetensors-reserved-name.safetensors", st_file({"__qcompress__/stats": f32}, d16))
    put(
        "safetensors-name-clash-with-codes.safetensors",
        st_file(
            {
                "w": {"dtype": "F32", "shape": [32, 64], "data_offsets": [0, 8192]},
                "w.qcodes": {**f32, "data_offsets": [8192, 8208]},
            },
            b"\0" * 8208,
        ),
    )
    cases.update(truncations("safetensors", base, ".safetensors"))
    return cases


# --- npz -----------------------------------------------------------------------------------


class _Marker:
    """Unpickling this creates UNPICKLED_MARKER in the current folder, which the checks notice."""

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (UNPICKLED_MARKER, "w"))


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _zip(members: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compress
            zf.writestr(info, data)
    return buf.getvalue()


def _lie_about_sizes(data: bytes, declared: int) -> bytes:
    """Rewrite every local and central header's uncompressed size (32-bit) to ``declared``."""
    out = bytearray(data)
    pos = 0
    while (pos := out.find(b"PK\x03\x04", pos)) >= 0:
        struct.pack_into("<I", out, pos + 22, declared)
        pos += 4
    pos = 0
    while (pos := out.find(b"PK\x01\x02", pos)) >= 0:
        struct.pack_into("<I", out, pos + 24, declared)
        pos += 4
    return bytes(out)


def npz_cases(base: bytes) -> Cases:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 16)).astype(np.float32)
    cases: Cases = {}
    obj = np.empty(1, dtype=object)
    obj[0] = _Marker()
    cases["npz-pickled-object-member.npz"] = _zip([("w.npy", _npy(w)), ("evil.npy", _npy(obj))])
    cases["npz-object-dtype-header-only.npz"] = _zip([("evil.npy", _npy_header((4,), "|O"))])
    cases["npz-structured-dtype.npz"] = _zip([("rec.npy", _npy(np.zeros(2, "f4,i4")))])
    # Headers that claim a huge array while the member holds a few bytes.
    huge_header = _npy_header((1 << 20, 1 << 20))
    cases["npz-npy-header-claims-4tb.npz"] = _zip([("w.npy", huge_header + b"\0" * 64)])
    # Zip directory that declares 4 GB of data for a member of a few bytes (zip-bomb headers).
    small = _zip([("w.npy", _npy_header((1 << 30,)) + b"\0" * 64)])
    cases["npz-declared-size-4gb-stored.npz"] = _lie_about_sizes(small, 0xFFFFFFF0)
    deflated = _zip([("w.npy", _npy_header((1 << 30,)) + b"\0" * 4096)], zipfile.ZIP_DEFLATED)
    cases["npz-declared-size-4gb-deflated.npz"] = _lie_about_sizes(deflated, 0xFFFFFFF0)
    # A real deflate bomb: 64 MB of zeros in ~64 KB, with an honest directory.
    bomb_data = _npy_header((1 << 24,)) + bytes(4 << 24)
    cases["npz-deflate-bomb-64mb.npz"] = _zip([("w.npy", bomb_data)], zipfile.ZIP_DEFLATED)
    cases["npz-member-not-npy.npz"] = _zip([("readme.txt", b"hello")])
    cases["npz-keras3-archive.npz"] = _zip([("config.json", b"{}"), ("model.weights.h5", b"")])
    cases["npz-garbage-npy-header.npz"] = _zip(
        [("w.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': <<<}\n")]
    )
    cases["npz-npy-bad-magic.npz"] = _zip([("w.npy", b"NOTNUMPY" + bytes(64))])
    cases["npz-npy-version-9.npz"] = _zip([("w.npy", b"\x93NUMPY\x09\x00" + bytes(64))])
    cases["npz-npy-negative-shape.npz"] = _zip([("w.npy", _npy_header((-1, 4)) + bytes(64))])
    dup = _zip([("w.npy", _npy(w)), ("x.npy", _npy(w))]).replace(b"x.npy", b"w.npy")
    cases["npz-duplicate-member-names.npz"] = dup
    cases["npz-name-clash-with-codes.npz"] = _zip(
        [("w.npy", _npy(rng.normal(size=(32, 64)).astype(np.float32))), ("w.qcodes.npy", _npy(w))]
    )
    cases["npz-nan-weights.npz"] = _zip([("w.npy", _npy(np.full((32, 64), np.inf, np.float32)))])
    crc = bytearray(_zip([("w.npy", _npy(w))]))
    crc[len(_npy(w)) // 2 + 40] ^= 0x10
    cases["npz-bad-crc.npz"] = bytes(crc)
    method = bytearray(_zip([("w.npy", _npy(w))]))
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        struct.pack_into("<H", method, method.find(sig) + off, 99)  # AES / unknown method
    cases["npz-unknown-compression.npz"] = bytes(method)
    enc = bytearray(_zip([("w.npy", _npy(w))]))
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        struct.pack_into("<H", enc, enc.find(sig) + off, 1)  # "encrypted" flag
    cases["npz-encrypted-flag.npz"] = bytes(enc)
    bad_deflate = bytearray(_zip([("w.npy", _npy(w))], zipfile.ZIP_DEFLATED))
    bad_deflate[60:80] = rng.bytes(20)
    cases["npz-corrupt-deflate-stream.npz"] = bytes(bad_deflate)
    eocd = bytearray(base)
    struct.pack_into("<I", eocd, eocd.rfind(b"PK\x05\x06") + 16, 0xFFFFFF00)  # directory offset
    cases["npz-directory-offset-beyond-file.npz"] = bytes(eocd)
    many = bytearray(base)
    struct.pack_into("<HH", many, many.rfind(b"PK\x05\x06") + 8, 0xFFFF, 0xFFFF)
    cases["npz-directory-claims-65535-entries.npz"] = bytes(many)
    # Issue 10: names and shapes that used to crash or lose a tensor.
    cases["npz-member-named-metadata.npz"] = _zip([("__metadata__.npy", _npy(np.ones(4, "f4")))])
    cases["npz-empty-archive.npz"] = _zip([])
    cases["npz-zero-elements-huge-dims.npz"] = _zip([("a.npy", _npy_header((1 << 40, 1 << 40, 0)))])
    cases.update(truncations("npz", base, ".npz"))
    return cases


# --- h5 ------------------------------------------------------------------------------------


def h5_cases(tmp: Path, keras: bytes) -> Cases:
    cases: Cases = {}
    outside = "/etc/passwd"  # what a hostile file would point at; must never be read

    def build(name: str, fill: Callable[[h5py.File], None]) -> None:
        path = tmp / name
        with h5py.File(path, "w") as f:
            f["w"] = np.ones((4, 4), np.float32)
            fill(f)
        cases[name] = path.read_bytes()

    build(
        "h5-external-link.h5", lambda f: f.__setitem__("stolen", h5py.ExternalLink(outside, "/x"))
    )
    build("h5-soft-link.h5", lambda f: f.__setitem__("alias", h5py.SoftLink("/w")))
    build("h5-dangling-soft-link.h5", lambda f: f.__setitem__("alias", h5py.SoftLink("/nowhere")))
    build(
        "h5-external-storage.h5",
        lambda f: f.create_dataset("raw", shape=(16,), dtype="u1", external=[(outside, 0, 16)]),
    )

    def virtual(f: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
        layout[:] = h5py.VirtualSource("/tmp/qcompress-elsewhere.h5", "data", shape=(4,))
        f.create_virtual_dataset("v", layout)

    build("h5-virtual-dataset-outside.h5", virtual)
    build("h5-compound-dataset.h5", lambda f: f.__setitem__("rec", np.zeros(2, "f4,i4")))
    build("h5-complex-attribute.h5", lambda f: f["w"].attrs.__setitem__("c", np.complex64(1j)))
    build(
        "h5-vlen-string-dataset.h5",
        lambda f: f.create_dataset("s", data=["a", "b"], dtype=h5py.string_dtype()),
    )
    build("h5-nan-weights.h5", lambda f: f.__setitem__("n", np.full((32, 64), np.nan, np.float32)))
    build("h5-bfloat-like-opaque.h5", lambda f: f.__setitem__("o", np.void(b"\x01\x02")))
    build("h5-named-datatype.h5", lambda f: f.__setitem__("t", np.dtype("f4")))
    build(
        "h5-never-written-huge-dataset.h5",
        lambda f: f.create_dataset("big", shape=(1 << 20, 1 << 16), dtype="f4", chunks=(64, 64)),
    )
    build(
        "h5-name-clash-with-codes.h5",
        lambda f: (
            f.__setitem__("k", np.ones((32, 64), "f4")),
            f.__setitem__("k.qcodes", np.ones(3, "f4")),
        ),
    )

    def self_virtual(f: h5py.File) -> None:  # HDF5 crashed (SIGSEGV) reading these
        for name, source in (("v", "v"), ("a", "b"), ("b", "a")):
            layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
            layout[:] = h5py.VirtualSource(".", source, shape=(4,))
            f.create_virtual_dataset(name, layout, fillvalue=0)

    build("h5-virtual-dataset-cycles.h5", self_virtual)
    build(
        "h5-zero-elements-huge-dims.h5",
        lambda f: f.create_dataset("a", shape=(1 << 40, 1 << 40, 0), dtype="f4"),
    )
    cases.update(_h5_damaged_vlen_attr(keras))
    cases.update(truncations("h5", keras, ".h5"))
    return cases


def _h5_damaged_vlen_attr(keras: bytes) -> Cases:
    """Bit flips in the global heap holding the variable-length string attributes: the kind of
    damage on which HDF5 2.0.0 hangs or crashes inside ``H5Aread`` (see formats/h5.py)."""
    heap = keras.find(b"GCOL")
    if heap < 0:
        return {}
    cases: Cases = {}
    for i, (delta, bit) in enumerate([(8, 7), (16, 6), (17, 3), (24, 7), (32, 5)]):
        data = bytearray(keras)
        data[heap + delta] ^= 1 << bit
        cases[f"h5-global-heap-flip-{i}.h5"] = bytes(data)
    return cases


# --- artifacts -----------------------------------------------------------------------------


def _retitle(art: bytes, edit: Callable[[dict], None]) -> bytes:
    """Re-encode an artifact's header with its recipe edited; the payload stays as it was."""
    (n,) = struct.unpack("<Q", art[:8])
    header = json.loads(art[8 : 8 + n])
    recipe = json.loads(header["__metadata__"]["qcompress"])
    edit(recipe)
    header["__metadata__"]["qcompress"] = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + art[8 + n :]


def _edit_header(art: bytes, edit: Callable[[dict], None]) -> bytes:
    (n,) = struct.unpack("<Q", art[:8])
    header = json.loads(art[8 : 8 + n])
    edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + art[8 + n :]


def artifact_cases(art: bytes) -> Cases:
    from qcompress.artifact.recipe import CHECKSUM_TENSOR  # the per-stored-tensor checksum table

    (n,) = struct.unpack("<Q", art[:8])
    data_start = 8 + n
    header = json.loads(art[8:data_start])
    cases: Cases = {}

    def tensor(name: str) -> tuple[int, int]:
        begin, end = header[name]["data_offsets"]
        return data_start + begin, data_start + end

    def flip(label: str, offset: int, bit: int = 0) -> None:
        data = bytearray(art)
        data[offset] ^= 1 << bit
        cases[f"artifact-flipped-bit-{label}.qc.safetensors"] = bytes(data)

    codes = tensor("dense/kernel.qcodes")
    flip("codes-first", codes[0], 3)
    flip("codes-middle", (codes[0] + codes[1]) // 2, 7)
    flip("codes-last", codes[1] - 1, 0)
    flip("scale", tensor("dense/kernel.qscale")[0] + 2, 6)
    flip("kept-bias", tensor("dense/bias")[0] + 1, 1)
    flip("passthrough-int", tensor("steps")[0], 0)
    flip("stats", tensor("__qcompress__/stats")[0] + 5, 4)
    flip("checksum-table", tensor(CHECKSUM_TENSOR)[0] + 40, 2)
    flip("last-byte", len(art) - 1, 5)

    def reason(r: dict) -> None:
        r["tensors"][0]["reason"] = "tampered"

    def bits(r: dict) -> None:
        for e in r["tensors"]:
            if e.get("bits"):
                e["bits"] = 3

    def axis(r: dict) -> None:
        for e in r["tensors"]:
            if e.get("granularity") not in (None, "tensor"):
                e["axis"] = 1

    def shape(r: dict) -> None:
        r["tensors"][0]["shape"] = [48, 32]

    def dtype(r: dict) -> None:
        for e in r["tensors"]:
            if e["name"] == "steps":
                e["dtype"] = "float32"

    def version(r: dict) -> None:
        r["format_version"] = 99

    def covers(r: dict) -> None:
        r["integrity"]["covers"].reverse()

    def no_tensors(r: dict) -> None:
        r["tensors"] = "none"

    def huge_shape(r: dict) -> None:
        r["tensors"][0]["shape"] = [1 << 40, 1 << 40]

    def scale_name(r: dict) -> None:
        e = next(e for e in r["tensors"] if e.get("scale"))
        e["scale"] = "steps"

    for label, edit in [
        ("reason", reason),
        ("bits", bits),
        ("axis", axis),
        ("shape", shape),
        ("dtype", dtype),
        ("format-version", version),
        ("integrity-order", covers),
        ("tensors-not-list", no_tensors),
        ("huge-shape", huge_shape),
        ("scale-points-elsewhere", scale_name),
    ]:
        cases[f"artifact-tampered-recipe-{label}.qc.safetensors"] = _retitle(art, edit)

    def recipe_not_json(h: dict) -> None:
        h["__metadata__"]["qcompress"] = "{not json"

    def recipe_list(h: dict) -> None:
        h["__metadata__"]["qcompress"] = "[1, 2]"

    def drop_checksums(h: dict) -> None:
        del h[CHECKSUM_TENSOR]

    for label, edit in [
        ("recipe-not-json", recipe_not_json),
        ("recipe-is-list", recipe_list),
        ("checksum-tensor-missing", drop_checksums),
    ]:
        cases[f"artifact-{label}.qc.safetensors"] = _edit_header(art, edit)
    for o in (art.find(b'"bits":') + 7, art.find(b'"shape":[') + 9, 8 + 20):
        data = bytearray(art)
        data[o] ^= 0x01
        cases[f"artifact-flipped-header-byte-{o:05d}.qc.safetensors"] = bytes(data)
    cases.update(truncations("artifact", art, ".qc.safetensors"))
    return cases


def generate(folder: Path) -> dict[str, int]:
    """Write every case into ``folder`` (emptied first); return the number of files per format."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        npz = _write_with_qcompress(tmp, "npz", ".npz")
        st = _write_with_qcompress(tmp, "safetensors", ".safetensors")
        keras = _keras_h5(tmp)
        art = _artifact(tmp, npz)
        cases = {
            **any_cases(),
            **safetensors_cases(st),
            **npz_cases(npz),
            **h5_cases(tmp, keras),
            **artifact_cases(art),
        }
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    counts: dict[str, int] = {}
    for name, data in sorted(cases.items()):
        (folder / name).write_bytes(data)
        kind = name.split("-", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    (folder / "README.md").write_text(
        "Generated by `python scripts/hostile_corpus.py`; do not edit by hand.\n"
        "Each file is one hostile or broken input, named FORMAT-CASE.EXT. "
        "`scripts/hostile_check.py` and `tests/test_hostile.py` run qcompress on all of them.\n"
    )
    return counts


def main(argv: list[str]) -> int:
    folder = Path(argv[1]) if len(argv) > 1 else DEFAULT_FOLDER
    counts = generate(folder)
    total = sum(len(p.read_bytes()) for p in folder.iterdir())
    for kind, n in sorted(counts.items()):
        print(f"{kind:12} {n:4d} files")
    print(f"{'total':12} {sum(counts.values()):4d} files, {total / 1024:.0f} KiB in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
