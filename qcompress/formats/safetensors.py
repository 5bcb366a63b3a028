"""safetensors: our own reader and writer.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
N, N bytes of UTF-8 JSON, then the data section. The JSON object maps each tensor name to
``{"dtype": CODE, "shape": [...], "data_offsets": [begin, end]}`` (offsets relative to the data
section) and may hold ``"__metadata__"``: a str -> str object. Data is little-endian and
row-major; tensors must cover the data section exactly, without holes or overlaps.

Why not the ``safetensors`` package: its writer needs every tensor in memory at once, and its
numpy loader cannot produce bfloat16. This reader reads one tensor per ``read`` with ``pread``
into a fresh array (not a memory map: a file truncated while mapped kills the process with
SIGBUS, while a short read is a clean error); the writer streams one tensor at a time. Tests
check both against the package in each direction.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompress.errors import FormatError, InputError, UsageError
from qcompress.formats._common import (
    cannot_read,
    check_array,
    check_empty_shape,
    check_names,
    one_line,
    read_exactly,
    require_regular_file,
    to_dtype,
)
from qcompress.formats.base import Format, TensorInfo, WeightReader

# numpy dtype name -> safetensors dtype code. The single source of truth for what can be stored.
DTYPE_CODES: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}
# safetensors dtype code -> numpy dtype name.
CODE_DTYPES: dict[str, str] = {code: name for name, code in DTYPE_CODES.items()}
# safetensors dtype code -> bytes per element: a table, so that sizing a header's entries
# needs neither a numpy dtype lookup per tensor nor ml_dtypes for bfloat16 and float8.
_ITEMSIZES: dict[str, int] = {
    code: 2 if name == "bfloat16" else 1 if name.startswith("float8") else np.dtype(name).itemsize
    for name, code in DTYPE_CODES.items()
}

# The reference implementation refuses headers above 100 MB; so do we, before reading them.
MAX_HEADER_BYTES = 100_000_000
_LEN = struct.Struct("<Q")
_REUSE_MIN_BYTES = 1 << 20  # read buffers at least this big are reused (SafetensorsReader._buffer)
_SPARE_BUFFERS = 4  # how many: tensors in flight under --jobs, plus one being read
_UNUSED_REFS = 3  # getrefcount of a pooled buffer nobody uses: the pool, the loop, the argument


def tensor_nbytes(info: TensorInfo) -> int:
    """Bytes ``info``'s tensor occupies in the data section (itemsize × elements)."""
    code = DTYPE_CODES.get(info.dtype)
    itemsize = _ITEMSIZES[code] if code else to_dtype(info.dtype).itemsize
    return itemsize * math.prod(info.shape)


def encode_header(infos: Sequence[TensorInfo], metadata: Mapping[str, str] | None = None) -> bytes:
    """The 8-byte length and the JSON header for ``infos`` laid out contiguously in the given
    order, ``__metadata__`` first. Padded with spaces to a multiple of 8 so every tensor whose
    offset is a multiple of its itemsize lands aligned. Deterministic: compact separators,
    metadata keys sorted, no timestamps. Raises UsageError for a duplicate or reserved name
    and for a dtype safetensors cannot hold.

    The whole header is one call to json's C encoder (one call per entry cost more than the
    rest of writing a model of 100k tiny tensors); the text is what per-entry encoding gave."""
    header: dict[str, Any] = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"safetensors __metadata__ must map str to str, got {key!r}")
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for info in infos:
        name = info.name
        if name in header:
            if name == "__metadata__":
                raise _reserved_name()
            raise UsageError(f"tensor name {name!r} appears twice")
        if name == "__metadata__":
            raise _reserved_name()
        code = DTYPE_CODES.get(info.dtype)
        if code is None:
            raise UsageError(
                f"tensor {name!r} has dtype {info.dtype}, which safetensors cannot store "
                f"(supported: {', '.join(DTYPE_CODES)})"
            )
        end = offset + _ITEMSIZES[code] * math.prod(info.shape)
        header[name] = {"dtype": code, "shape": list(info.shape), "data_offsets": [offset, end]}
        offset = end
    text = _dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return _LEN.pack(len(text)) + text


def _reserved_name() -> UsageError:
    return UsageError(
        "tensor '__metadata__' has the name safetensors reserves for its metadata; "
        "write .npz or .h5 instead, or rename the tensor"
    )


def write_safetensors(
    path: Path,
    infos: Sequence[TensorInfo],
    arrays: Iterable[np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write the header, then stream each array's bytes (C order, little-endian), one array at
    a time. An array that does not match its info is a programming error (ValueError)."""
    check_names(path, infos, "safetensors", nul=True)  # JSON holds NUL as \\u0000
    try:
        header = encode_header(infos, metadata)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    with open(path, "wb") as fh:
        fh.write(header)
        for info, array in zip(infos, arrays, strict=True):
            array = check_array(info, array).astype(_file_dtype(info.dtype), copy=False)
            if array.size:
                fh.write(memoryview(array.reshape(-1).view(np.uint8)))


def _dumps(value: Any, sort_keys: bool = False) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # the common case first: one dict, no per-key Python loop
    if len(result) != len(pairs):
        keys = [k for k, _ in pairs]
        raise _DuplicateKey(next(k for k in keys if keys.count(k) > 1))
    return result


class _DuplicateKey(Exception):
    pass


class SafetensorsReader(WeightReader):
    """A safetensors file; ``read`` reads one tensor into a fresh array."""

    format = "safetensors"
    layout = "pytorch"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._fh = None
        self._spare: list[np.ndarray] = []  # see _buffer
        require_regular_file(self.path)
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open for read(); closed in close()
        except OSError as exc:
            raise cannot_read(self.path, exc) from exc
        try:
            self._index(fh)
        except OSError as exc:
            fh.close()
            raise cannot_read(self.path, exc) from exc
        except BaseException:
            fh.close()
            raise
        self._fh = fh

    def _index(self, fh: Any) -> None:
        size = os.fstat(fh.fileno()).st_size
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise self._corrupt(f"file is {size} bytes, too short for the 8-byte header length")
        (header_len,) = _LEN.unpack(prefix)
        if header_len > size - 8:
            raise self._corrupt(
                f"header length {header_len} is larger than the file ({size} bytes; truncated?)"
            )
        if header_len > MAX_HEADER_BYTES:
            raise self._corrupt(
                f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
            )
        raw = fh.read(header_len)
        if len(raw) < header_len:
            raise self._corrupt("the file ended inside the header (truncated while reading?)")
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self._infos, self._offsets, self._meta = self._parse(raw, data_len)

    def _corrupt(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: corrupt safetensors header: {what}")

    def _parse(
        self, raw: bytes, data_len: int
    ) -> tuple[list[TensorInfo], dict[str, tuple[TensorInfo, int, int]], dict[str, str]]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._corrupt(f"header is not UTF-8 (byte {8 + exc.start})") from None
        try:
            header = json.loads(text, object_pairs_hook=_reject_duplicates)
        except _DuplicateKey as exc:
            raise self._corrupt(f"key {exc.args[0]!r} appears twice") from None
        except RecursionError:
            raise self._corrupt("JSON is nested too deeply") from None
        except ValueError as exc:
            raise self._corrupt(f"invalid JSON ({one_line(exc)})") from None
        if not isinstance(header, dict):
            raise self._corrupt(f"expected a JSON object, got {type(header).__name__}")

        meta: dict[str, str] = {}
        entries: list[tuple[int, int, int, TensorInfo]] = []
        for index, (name, entry) in enumerate(header.items()):
            self._check_text(name)
            if name == "__metadata__":
                meta = self._parse_metadata(entry)
                continue
            info, begin, end = self._parse_entry(name, entry)
            if end > data_len:
                raise self._corrupt(
                    f"tensor {name!r} data ends at byte {end} but the file has "
                    f"{data_len} data bytes (truncated?)"
                )
            entries.append((begin, end, index, info))

        entries.sort()  # (begin, end, index): the index is unique, so infos are never compared
        position = 0
        previous = None
        for begin, end, _, info in entries:
            if begin < position:
                assert previous is not None
                raise self._corrupt(
                    f"tensors {previous.name!r} and {info.name!r} overlap "
                    f"(bytes {begin}..{position} belong to both)"
                )
            if begin > position:
                raise self._corrupt(
                    f"bytes {position}..{begin} of the data section belong to no tensor "
                    f"(hole before tensor {info.name!r})"
                )
            position = end
            previous = info
        if position != data_len:
            raise self._corrupt(
                f"the data section has {data_len} bytes but the tensors cover only {position}"
            )
        infos = [e[3] for e in entries]
        offsets = {e[3].name: (e[3], e[0], e[1]) for e in entries}
        return infos, offsets, meta

    def _parse_metadata(self, entry: Any) -> dict[str, str]:
        if not isinstance(entry, dict):
            raise self._corrupt("__metadata__ must be an object of strings")
        for key, value in entry.items():
            if not isinstance(value, str):
                raise self._corrupt(
                    f"__metadata__ value for {key!r} must be a string, got {type(value).__name__}"
                )
            self._check_text(key)
            self._check_text(value)
        return dict(entry)

    def _check_text(self, text: str) -> None:
        """JSON's ``\\ud800`` escapes decode to lone surrogates, which are not Unicode text and
        would fail later, when a name or the metadata is written out again."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise self._corrupt(
                f"{text[:40]!r} holds an escaped lone surrogate (\\u{ord(text[exc.start]):04x}), "
                "which is not valid Unicode"
            ) from None

    def _parse_entry(self, name: str, entry: Any) -> tuple[TensorInfo, int, int]:
        if not isinstance(entry, dict):
            raise self._corrupt(f"tensor {name!r} must be an object, got {type(entry).__name__}")
        if "dtype" not in entry or "shape" not in entry or "data_offsets" not in entry:
            missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
            raise self._corrupt(f"tensor {name!r} lacks {', '.join(missing)}")
        code = entry["dtype"]
        if not isinstance(code, str) or code not in CODE_DTYPES:
            raise self._corrupt(
                f"tensor {name!r} has unknown dtype {code!r} (supported: {', '.join(CODE_DTYPES)})"
            )
        shape = entry["shape"]
        # type() is int: JSON gives plain ints, and excludes bool (True is an int instance)
        if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
            raise self._corrupt(
                f"tensor {name!r} shape must be a list of non-negative integers, got {shape!r}"
            )
        offsets = entry["data_offsets"]
        if (
            type(offsets) is not list
            or len(offsets) != 2
            or not (type(offsets[0]) is int and type(offsets[1]) is int)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise self._corrupt(
                f"tensor {name!r} data_offsets must be [begin, end] with "
                f"0 <= begin <= end, got {offsets!r}"
            )
        shape = tuple(shape)
        if 0 in shape:
            check_empty_shape(self.path, name, shape, to_dtype(CODE_DTYPES[code]))
        info = TensorInfo(name, shape, CODE_DTYPES[code])
        begin, end = offsets
        need = _ITEMSIZES[code] * math.prod(shape)
        if end - begin != need:
            raise self._corrupt(
                f"tensor {name!r} has {end - begin} data bytes but {code} {list(shape)} "
                f"needs {need}"
            )
        return info, begin, end

    def read(self, name: str) -> np.ndarray:
        """A fresh array holding the tensor's bytes; a file that shrank is an InputError."""
        info, begin, end = self._lookup(self._offsets, name)
        dtype = _file_dtype(info.dtype)
        if begin == end:
            return np.empty(info.shape, dtype=dtype)
        if self._fh is None:
            raise InputError(f"{self.path}: reader is closed")
        try:
            buffer = self._buffer(end - begin)
        except MemoryError:
            raise InputError(f"{self.path}: not enough memory to read tensor {name!r}") from None
        read_exactly(self._fh.fileno(), memoryview(buffer), self._data_start + begin, self.path)
        return buffer.view(dtype).reshape(info.shape)

    def _buffer(self, nbytes: int) -> np.ndarray:
        """``nbytes`` bytes to read a tensor into: a large buffer an earlier ``read`` returned
        and nobody holds any more, else a new one.

        Why: a large new array is fresh pages from the kernel, each faulted in while ``pread``
        fills it, which took half of reading a page-cached 64 MB tensor. A buffer is reused
        only when its reference count shows that no array, view or memoryview of it is left
        (the pool's own reference and ``getrefcount``'s argument), so every array ``read``
        returns is the caller's alone for as long as anything holds it."""
        if nbytes < _REUSE_MIN_BYTES:
            return np.empty(nbytes, dtype=np.uint8)
        for buffer in self._spare:
            if buffer.nbytes == nbytes and sys.getrefcount(buffer) <= _UNUSED_REFS:
                return buffer
        buffer = np.empty(nbytes, dtype=np.uint8)
        self._spare.append(buffer)
        if len(self._spare) > _SPARE_BUFFERS:
            self._spare.pop(0)
        return buffer

    def metadata(self) -> dict[str, Any]:
        return {"format": "safetensors", "__metadata__": dict(self._meta)}

    def close(self) -> None:
        self._spare.clear()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _file_dtype(name: str) -> np.dtype:
    """The dtype of the bytes on disk: little-endian for numpy's own types. ml_dtypes types
    (bfloat16, float8) have no byte-order variants and are taken as native, which is
    little-endian on every platform qcompress supports."""
    dt = to_dtype(name)
    return dt.newbyteorder("<") if name in _NUMPY_MULTIBYTE else dt


_NUMPY_MULTIBYTE = frozenset(
    ["float64", "float32", "float16", "int64", "int32", "int16", "uint64", "uint32", "uint16"]
)


def _sniff(head: bytes) -> bool:
    """A plausible 8-byte little-endian header length followed by "{"."""
    return (
        len(head) >= 9
        and head[8:9] == b"{"
        and int.from_bytes(head[:8], "little") <= MAX_HEADER_BYTES
    )


def _write(path: Path, infos: Sequence[TensorInfo], arrays: Iterable[np.ndarray], own: Any) -> None:
    write_safetensors(path, infos, arrays, own.get("__metadata__") if own else None)


FORMAT = Format(
    name="safetensors",
    label="safetensors",
    open=SafetensorsReader,
    layout="pytorch",
    sniff=_sniff,
    suffixes=(".safetensors",),
    write=_write,
)
