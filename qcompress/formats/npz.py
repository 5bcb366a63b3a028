"""npz: a zip of ``.npy`` members, as written by ``np.savez`` / ``np.savez_compressed``.

Layout is assumed PyTorch-style ``[out, in, ...]``: npz carries no framework information, and
most npz checkpoints are exported from PyTorch state dicts.

The reader lists names, shapes and dtypes from each member's ``.npy`` header without reading
its data, reads one member per ``read``, and never unpickles: members holding Python objects
are refused when the file is opened. The writer is deterministic (fixed timestamps, stored
members, fixed permissions), so the same tensors give the same bytes.
"""

from __future__ import annotations

import functools
import io
import lzma
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from qcompress.errors import FormatError, InputError, UsageError
from qcompress.formats._common import (
    check_array,
    check_empty_shape,
    check_names,
    dtype_name,
    one_line,
    require_regular_file,
    to_dtype,
)
from qcompress.formats.base import Format, TensorInfo, WeightReader

# dtype kinds an npz may hold and every numpy reads back: bool, ints, floats, complex, and
# fixed-length bytes/str. Objects need pickle; ml_dtypes types (bfloat16) are saved as opaque
# void ("<V2") and would come back as raw bytes.
_NPZ_KINDS = "biufcSU"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_DEFLATE_MAX_RATIO = 1032  # deflate's best case: 258-byte matches in ~2-bit codes
_DEFLATE_SLACK = 1024  # headers and tiny members
_ZIP64_LIMIT = 1 << 31  # below zipfile's own 2 GiB cut-off, leaving room for the .npy header
# What zipfile and the decompressors raise on damaged archives: a bad header can name an
# unknown compression method (NotImplementedError) or claim encryption (RuntimeError); bz2
# reports bad data as an errno-less OSError.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    OverflowError,
    # numpy parses a .npy header with tokenize and ast.literal_eval; a mangled header can
    # escape as either (numpy 2.4 wraps only some of them in ValueError).
    SyntaxError,
    tokenize.TokenError,
)


class NpzReader(WeightReader):
    """An ``.npz`` file opened lazily: one zip member read per ``read``."""

    format = "npz"
    layout = "pytorch"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._size = require_regular_file(self.path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except OSError as exc:
            raise self._os_error(exc) from exc
        except zipfile.BadZipFile as exc:
            raise FormatError(
                f"{self.path}: truncated or corrupt npz: the zip directory is missing or "
                f"damaged ({one_line(exc)})"
            ) from exc
        except _ZIP_ERRORS as exc:
            raise FormatError(f"{self.path}: corrupt npz (zip) file: {one_line(exc)}") from exc
        try:
            self._infos, self._members = self._index()
        except BaseException:
            self._zip.close()
            raise

    def _index(self) -> tuple[list[TensorInfo], dict[str, zipfile.ZipInfo]]:
        infos: list[TensorInfo] = []
        members: dict[str, zipfile.ZipInfo] = {}
        entries = self._zip.infolist()
        names = {e.filename for e in entries}
        for entry in entries:
            if entry.is_dir():
                continue
            if not entry.filename.endswith(".npy"):
                hint = (
                    " (a Keras .keras archive? it also needs config.json and metadata.json)"
                    if "model.weights.h5" in names
                    else ""
                )
                raise FormatError(
                    f"{self.path}: zip member {entry.filename!r} is not a .npy array{hint}"
                )
            self._check_declared_size(entry)
            name = entry.filename[: -len(".npy")]
            if name in members:
                raise FormatError(f"{self.path}: zip member {entry.filename!r} appears twice")
            try:
                with self._zip.open(entry) as fh:
                    shape, dtype = _read_npy_header(fh)
                    header_end = fh.tell()
            except OSError as exc:
                raise self._os_error(exc, entry.filename) from exc
            except _ZIP_ERRORS as exc:
                raise FormatError(
                    f"{self.path}: corrupt npz member {entry.filename!r}: {one_line(exc)}"
                ) from exc
            if dtype.hasobject:
                raise FormatError(
                    f"{self.path}: tensor {name!r} holds pickled Python objects; "
                    "qcompress never unpickles (re-save it as a numeric array)"
                )
            if dtype.kind not in _NPZ_KINDS or dtype.fields is not None:
                raise FormatError(
                    f"{self.path}: tensor {name!r} has dtype {dtype.str}, which qcompress "
                    "does not support in npz (numeric, bool or fixed-length strings only)"
                )
            check_empty_shape(self.path, name, shape, dtype)
            info = TensorInfo(name, shape, dtype_name(dtype))
            # Checked against the zip directory, so a lying header cannot make ``read``
            # allocate more than the member holds.
            expected = header_end + info.size * dtype.itemsize
            if entry.file_size != expected:
                raise FormatError(
                    f"{self.path}: npz member {entry.filename!r} has {entry.file_size} bytes "
                    f"but its header ({dtype.str} {list(shape)}) needs {expected} (truncated?)"
                )
            infos.append(info)
            members[name] = entry
        return infos, members

    def _check_declared_size(self, entry: zipfile.ZipInfo) -> None:
        """Refuse a member whose declared size its compressed bytes cannot hold (a zip bomb's
        headers, or damage), before anything is allocated for it: memory must follow the
        file's real size. ``read`` then allocates exactly what the ``.npy`` header declares,
        which ``_index`` matched against this declared size, and zipfile stops decompressing
        at the declared size, so a bomb's stream is never inflated past it. Stored members
        hold exactly their size; deflate expands at most 1032:1; other methods never appear
        in npz files."""
        if entry.compress_type == zipfile.ZIP_STORED:
            limit = entry.compress_size
        elif entry.compress_type == zipfile.ZIP_DEFLATED:
            limit = entry.compress_size * _DEFLATE_MAX_RATIO + _DEFLATE_SLACK
        else:
            raise FormatError(
                f"{self.path}: npz member {entry.filename!r} uses zip compression method "
                f"{entry.compress_type}; numpy writes only stored or deflated members"
            )
        if entry.header_offset + entry.compress_size > self._size:
            raise FormatError(
                f"{self.path}: npz member {entry.filename!r} declares {entry.compress_size} "
                f"compressed bytes, more than the file holds (truncated or corrupt)"
            )
        if entry.file_size > limit:
            raise FormatError(
                f"{self.path}: npz member {entry.filename!r} declares {entry.file_size} bytes "
                f"but its {entry.compress_size} compressed bytes cannot hold that (corrupt or "
                "a zip bomb)"
            )

    def _os_error(self, exc: OSError, member: str | None = None) -> InputError:
        """An OSError with an errno is the file system's (InputError); without one it is a
        decompressor rejecting the bytes (FormatError)."""
        if exc.errno is not None:
            return InputError(f"{self.path}: cannot read: {one_line(exc.strerror or exc)}")
        where = f" member {member!r}" if member else ""
        return FormatError(f"{self.path}: corrupt npz{where}: {one_line(exc)}")

    def tensor_infos(self) -> list[TensorInfo]:
        """Tensors in zip member order."""
        return list(self._infos)

    def read(self, name: str) -> np.ndarray:
        """Read and decompress one member; a bad CRC or short member is a FormatError."""
        if name not in self._members:
            raise InputError(f"{self.path}: no tensor named {name!r}")
        try:
            with self._zip.open(self._members[name]) as fh:
                array = np.lib.format.read_array(fh, allow_pickle=False)
                if fh.read(1):
                    raise ValueError("member has bytes after the array data")
        except MemoryError:
            raise InputError(f"{self.path}: not enough memory to read tensor {name!r}") from None
        except OSError as exc:
            raise self._os_error(exc, self._members[name].filename) from exc
        except _ZIP_ERRORS as exc:
            raise FormatError(
                f"{self.path}: corrupt npz member for tensor {name!r}: {one_line(exc)}"
            ) from exc
        if array.dtype.byteorder not in "=|":
            array = array.astype(array.dtype.newbyteorder("="))
        return array

    def metadata(self) -> dict[str, Any]:
        return {"format": "npz"}

    def close(self) -> None:
        self._zip.close()


_NPY_MAX_HEADER = 10_000  # numpy's own limit on a .npy header's length


def _read_npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header. The header's bytes are read here and parsed by
    :func:`_parse_npy_header`, which caches them: a model of 100k tiny tensors repeats a handful
    of headers, and numpy's parse (``ast.literal_eval``) costs more than the rest of the read."""
    prefix = fh.read(8)  # magic (6 bytes) and version (2)
    size_bytes = fh.read(4 if prefix[6:7] in (b"\x02", b"\x03") else 2)
    length = int.from_bytes(size_bytes, "little")
    header = fh.read(min(length, _NPY_MAX_HEADER + 1))
    return _parse_npy_header(prefix + size_bytes + header)


@functools.lru_cache(maxsize=4096)
def _parse_npy_header(raw: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """Parse a whole ``.npy`` header with numpy's ``read_array_header_*`` (``ast.literal_eval``,
    no code runs); what it raises (ValueError) is raised again for every member, uncached."""
    fh = io.BytesIO(raw)
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        # 3.0 only differs from 2.0 by allowing UTF-8 field names of structured dtypes, which
        # are refused anyway; numpy's reader for it is private and has moved between releases.
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    return tuple(int(d) for d in shape), dtype


def write_npz(
    path: Path, infos: Sequence[TensorInfo], arrays: Iterable[np.ndarray], metadata: Any = None
) -> None:
    """Write an uncompressed ``.npz`` (what ``np.savez`` makes), one member per tensor named
    ``name + ".npy"``, streaming each array into its member. ``metadata`` is ignored: npz has
    nowhere to keep it. Tensors npz cannot hold portably (bfloat16, float8) are a UsageError."""
    for info in infos:
        kind = to_dtype(info.dtype).kind
        if kind not in _NPZ_KINDS or info.dtype.startswith(("bfloat", "float8")):
            raise UsageError(
                f"{path}: npz cannot store tensor {info.name!r} of dtype {info.dtype}; "
                "write .safetensors instead, or convert it (e.g. --dtype float32)"
            )
    check_names(path, infos, "npz")
    for info in infos:
        if info.name.endswith("/"):  # a zip directory entry: readers skip it
            raise UsageError(
                f"{path}: tensor {info.name!r} ends in '/', which npz cannot store as a member; "
                "write .safetensors instead"
            )
    with (
        open(path, "wb") as fh,
        zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf,
    ):
        for info, array in zip(infos, arrays, strict=True):
            array = check_array(info, array)
            member = zipfile.ZipInfo(info.name + ".npy", date_time=_ZIP_DATE)
            member.compress_type = zipfile.ZIP_STORED
            member.external_attr = 0o644 << 16
            member.create_system = 3  # unix, whatever the host, for identical bytes
            with zf.open(member, "w", force_zip64=array.nbytes >= _ZIP64_LIMIT) as out:
                np.lib.format.write_array(out, array, allow_pickle=False)


FORMAT = Format(
    name="npz",
    label=".npz",
    open=NpzReader,
    layout="pytorch",
    magics=(b"PK\x03\x04", b"PK\x05\x06"),  # a local file header; the end record of an empty zip
    short_kind="npz",
    suffixes=(".npz",),
    write=lambda path, infos, arrays, _: write_npz(path, infos, arrays),  # no metadata kept
)
