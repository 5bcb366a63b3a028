"""HDF5 weight files as Keras writes them (``model.save_weights("w.h5")``, ``model.save("m.h5")``).

Tensors are every dataset at any depth, named by full path without the leading "/"
(``model_weights/dense/dense/kernel:0``), in h5py's link-visit order (sorted by name at each
level). Layout is Keras-style ``[..., in, out]``.

``metadata()`` describes every group (empty ones too) and the attributes of the root, of every
group and of every dataset, so ``write_h5`` can rebuild a file Keras loads. Attributes use a
tagged JSON encoding that keeps the HDF5 type exactly (see ``encode_attr``):

- ``{"kind": "str", "cset": "utf-8"|"ascii", "shape": [...], "value": V}``: variable-length
  string (what h5py makes from ``str``, and from ``bytes`` since h5py 3; Keras's
  ``keras_version``, ``backend``, ``model_config``). V is a str, or nested lists of str for an
  array attribute.
- ``{"kind": "bytes", "dtype": "|S7", "cset": ..., "shape": [...], "value": V}``: fixed-length
  string (numpy ``|S`` arrays: Keras's ``layer_names`` and ``weight_names``). V holds each
  element decoded as UTF-8.
- ``{"kind": "number", "dtype": "<f4", "shape": [...], "value": V}``: numbers and bools; V is
  a number or nested lists; NaN and infinities are the strings "nan", "inf", "-inf".
- ``{"kind": "empty", "dtype": "<f4"}``: an attribute with a null dataspace (``h5py.Empty``).

For str and bytes, ``"b64": true`` means every element of V is base64 of the raw bytes instead
(used when some element is not valid UTF-8). ``"shape": []`` is a scalar attribute. ``dtype``
is numpy's ``dtype.str`` so byte order and width survive.

Fixed-length byte-string datasets are tensors of dtype ``"|Sn"`` and variable-length string
datasets tensors of dtype ``"object"`` (``read`` gives an object array of str); both round-trip
through ``write_h5`` but no other writer accepts them, so callers should pass them through or
refuse them. Other HDF5 types (compound, opaque, references, ...) are refused on open.

Never followed: external links, soft links, external raw storage and virtual datasets (HDF5
crashes on self-referencing or cyclic ones). Each is a FormatError on open. Hard links (one
dataset at two paths) are listed, and written back, at every path.

Crashes and hangs in the HDF5 C library: h5py and HDF5 parse the file, and any Python exception
they raise on damaged content becomes a FormatError. But HDF5 (2.0.0 here) trusts some on-disk
values, and a crafted or bit-flipped file can crash or hang the process inside it, out of reach
of any Python check. Fuzzing the sample files found hangs in ``H5Aread`` of variable-length
string attributes (a damaged global-heap reference; Keras's ``backend`` and ``model_config``
are such attributes), and there is no HDF5 call that reads those without following the
reference. So before a file is opened in-process, ``probe_h5`` runs the whole index (open, walk
every link, read every attribute, check every dataset's storage) in a short-lived child process
(forked, so it costs a few milliseconds and no re-import; spawned where fork is missing) with a
timeout. A child that dies by a signal or runs out of time becomes a FormatError naming the file;
a child that finishes hands its index back as JSON over a pipe, so this process never makes
those calls itself and the index is not built twice (measured: ~12 ms per open of the 110 KB
sample, ~25 ms of a 106 MB file with 400 datasets, whose index alone takes ~150 ms). A child
that ends in a clean error makes this process build the index itself, reaching the same error.
Dataset data is not read by the probe: ``_check_storage`` first bounds every dataset's data by
the bytes the file really holds for it, so the reads that follow are plain copies (contiguous)
or decompression of chunks HDF5 has already located (chunked).

``QCOMPRESS_H5_PROBE_TIMEOUT`` sets the child's time limit in seconds (default 30, at most 1e6);
``0`` turns the probe off, for trusted files in a process that may crash.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np
from h5py._objects import phil as _h5py_lock

from qcompress.errors import FormatError, InputError, QCompressError, UsageError
from qcompress.formats._common import (
    check_array,
    check_empty_shape,
    check_names,
    dtype_name,
    one_line,
    require_regular_file,
    to_dtype,
)
from qcompress.formats.base import TensorInfo, WeightReader

# h5py turns damage deep in a file into almost any exception: OSError and KeyError from HDF5,
# UnicodeDecodeError for a mangled link name, even SystemError when that happens inside a
# visit callback. For a file we are parsing, all of them mean "corrupt", so catch them all.
_H5_ERRORS = (Exception,)


class H5Reader(WeightReader):
    """An HDF5 file; the index is built on open, data read one dataset per ``read``."""

    format = "h5"
    layout = "keras"

    def __init__(self, path: Path, probe: bool = True) -> None:
        super().__init__(path)
        require_regular_file(self.path)
        snapshot = probe_h5(self.path) if probe else None
        try:
            self._file_size = self.path.stat().st_size
            # locking=False: reading must work on read-only media and files another process has.
            self._file = h5py.File(self.path, "r", locking=False)
        except FileNotFoundError as exc:
            raise InputError(f"{self.path}: no such file") from exc
        except PermissionError as exc:
            raise InputError(f"{self.path}: permission denied") from exc
        except _H5_ERRORS as exc:
            raise FormatError(
                f"{self.path}: not a readable HDF5 file (truncated or corrupt?): {one_line(exc)}"
            ) from exc
        try:
            if snapshot is not None:
                self._restore(snapshot)
            else:
                self._index()
        except QCompressError:
            self.close()
            raise
        except _H5_ERRORS as exc:
            self.close()
            raise FormatError(f"{self.path}: corrupt HDF5 file: {one_line(exc)}") from exc

    def _snapshot(self) -> dict[str, Any]:
        """The index as JSON-able data, for the probe child to hand to its parent."""
        return {
            "infos": [[i.name, list(i.shape), i.dtype] for i in self._infos],
            "groups": self._groups,
            "dataset_attrs": self._dataset_attrs,
            "root_attrs": self._root_attrs,
        }

    def _restore(self, snapshot: dict[str, Any]) -> None:
        """Take the index the probe child built: the parent never runs the HDF5 calls that
        could crash or hang, and does not pay for the index twice."""
        self._infos = [TensorInfo(n, tuple(shape), dt) for n, shape, dt in snapshot["infos"]]
        self._groups = snapshot["groups"]
        self._dataset_attrs = snapshot["dataset_attrs"]
        self._root_attrs = snapshot["root_attrs"]
        self._by_name = {info.name: info for info in self._infos}

    def _index(self) -> None:
        self._infos: list[TensorInfo] = []
        self._groups: list[dict[str, Any]] = []
        self._dataset_attrs: dict[str, dict[str, Any]] = {}
        self._root_attrs = self._attrs(self._file, "/")
        links: list[tuple[str, Any]] = []
        self._file.visititems_links(lambda name, link: links.append((name, link)))
        for name, link in links:
            if isinstance(link, h5py.ExternalLink):
                raise FormatError(
                    f"{self.path}: {name!r} is an external link to {link.filename}:{link.path}; "
                    "qcompress never follows links to other files"
                )
            if isinstance(link, h5py.SoftLink):
                raise FormatError(
                    f"{self.path}: {name!r} is a soft link to {link.path}; "
                    "qcompress does not copy links (make it a real group or dataset)"
                )
            obj = self._file.get(name)
            if isinstance(obj, h5py.Group):
                self._groups.append({"name": name, "attrs": self._attrs(obj, name)})
            elif isinstance(obj, h5py.Dataset):
                self._infos.append(self._dataset_info(name, obj))
                self._dataset_attrs[name] = self._attrs(obj, name)
            else:
                raise FormatError(
                    f"{self.path}: {name!r} is a named datatype, which qcompress does not copy"
                )

        self._by_name = {info.name: info for info in self._infos}

    def _dataset_info(self, name: str, dset: h5py.Dataset) -> TensorInfo:
        if dset.external:
            raise FormatError(
                f"{self.path}: dataset {name!r} keeps its data in external files; "
                "qcompress never reads outside the file"
            )
        if dset.is_virtual:
            # Checked before anything else touches it: HDF5 crashes (SIGSEGV) on virtual
            # datasets that map onto themselves or onto each other, in the probe and on read.
            raise FormatError(
                f"{self.path}: dataset {name!r} is a virtual dataset (its data is mapped from "
                "other datasets or files), which qcompress does not read; store its data in a "
                "regular dataset first (e.g. h5repack -l CONTI)"
            )
        if dset.shape is None:
            raise FormatError(f"{self.path}: dataset {name!r} is empty (null dataspace)")
        self._check_storage(name, dset)
        dt = dset.dtype
        string = h5py.check_string_dtype(dt)
        if string is not None and string.length is None:
            dtype = "object"
        elif string is not None or dt.kind in "biuf":
            dtype = dtype_name(dt)
        else:
            raise FormatError(
                f"{self.path}: dataset {name!r} has HDF5 type {dt}, which qcompress does not "
                "support (numbers, bools and strings only)"
            )
        shape = tuple(int(d) for d in dset.shape)
        check_empty_shape(
            self.path, name, shape, to_dtype("float32" if dtype == "object" else dtype)
        )
        return TensorInfo(name, shape, dtype)

    def _check_storage(self, name: str, dset: h5py.Dataset) -> None:
        """Refuse data said to lie past the end of the file, and a dataspace larger than the
        stored bytes could expand to: a damaged or hostile shape must not make ``read``
        allocate memory out of proportion to the file's real size."""
        size = self._file_size
        dsid = dset.id
        stored = dsid.get_storage_size()
        if dset.chunks is None:
            offset = dsid.get_offset()  # None for compact or never-written data
            if offset is not None and offset + stored > size:
                raise FormatError(
                    f"{self.path}: dataset {name!r} data runs to byte {offset + stored} but the "
                    f"file has {size} bytes (truncated?)"
                )
        else:
            for i in range(dsid.get_num_chunks()):
                chunk = dsid.get_chunk_info(i)
                if chunk.byte_offset + chunk.size > size:
                    raise FormatError(
                        f"{self.path}: dataset {name!r} has a chunk running to byte "
                        f"{chunk.byte_offset + chunk.size} but the file has {size} bytes "
                        "(truncated?)"
                    )
        nbytes = int(np.prod(dset.shape, dtype=np.float64)) * dset.dtype.itemsize
        if nbytes > _MAX_EXPANSION * stored + _EXPANSION_SLACK:
            raise FormatError(
                f"{self.path}: dataset {name!r} claims {nbytes} bytes of data but the file "
                f"holds only {stored} for it (corrupt shape?)"
            )

    def _attrs(self, obj: h5py.HLObject, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in obj.attrs:
            try:
                out[key] = encode_attr(obj.attrs, key)
            except _Unsupported as exc:
                raise FormatError(
                    f"{self.path}: attribute {key!r} of {where!r} has HDF5 type {exc.args[0]}, "
                    "which qcompress cannot copy"
                ) from None
        return out

    def tensor_infos(self) -> list[TensorInfo]:
        """Every dataset, in link-visit order."""
        return list(self._infos)

    def read(self, name: str) -> np.ndarray:
        """One dataset as a native-byte-order array (strings: ``|S`` or object array of str)."""
        info = self._by_name.get(name)
        if info is None:
            raise InputError(f"{self.path}: no tensor named {name!r}")
        try:
            dset = self._file[name]
            if info.dtype == "object":
                return np.asarray(dset.asstr()[()], dtype=object).reshape(info.shape)
            array = np.empty(info.shape, dtype=to_dtype(info.dtype))
            if array.size:
                dset.read_direct(array)
            return array
        except _H5_ERRORS as exc:
            raise FormatError(
                f"{self.path}: cannot read dataset {name!r}: {one_line(exc)}"
            ) from exc

    def metadata(self) -> dict[str, Any]:
        """``{"format": "h5", "attrs": {...}, "groups": [{"name", "attrs"}...],
        "datasets": {name: {"attrs": {...}}}}``; attributes as in the module docstring."""
        return {
            "format": "h5",
            "attrs": self._root_attrs,
            "groups": list(self._groups),
            "datasets": {name: {"attrs": attrs} for name, attrs in self._dataset_attrs.items()},
        }

    def close(self) -> None:
        with contextlib.suppress(*_H5_ERRORS):  # closing a damaged file can fail too
            self._file.close()


class _Unsupported(Exception):
    pass


# deflate, HDF5's usual filter, expands at most about 1032:1; the slack covers tiny datasets and
# fill values of never-written ones.
_MAX_EXPANSION = 1032
_EXPANSION_SLACK = 1 << 20

PROBE_TIMEOUT_ENV = "QCOMPRESS_H5_PROBE_TIMEOUT"
_PROBE_TIMEOUT_DEFAULT = 30.0
_PROBE_OK = 0
_PROBE_REFUSED = 3  # the child raised a QCompressError: the in-process open raises it again


_PROBE_TIMEOUT_MAX = 1e6  # about 11 days; select() refuses timeouts far beyond this


def probe_timeout() -> float:
    """Seconds the probe child may take (``QCOMPRESS_H5_PROBE_TIMEOUT``); 0 disables it.
    Anything but 0 or a positive finite number (junk, nan, inf, negative) is a UsageError;
    values above ``_PROBE_TIMEOUT_MAX`` are taken as that (no real parse takes days)."""
    raw = os.environ.get(PROBE_TIMEOUT_ENV, "")
    if not raw.strip():
        return _PROBE_TIMEOUT_DEFAULT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(
            f"{PROBE_TIMEOUT_ENV}={raw!r}: must be a number of seconds (0 turns the probe off)"
        )
    return min(value, _PROBE_TIMEOUT_MAX)


def _probe_work(path: Path, out: IO[bytes]) -> int:
    """What the child does: everything ``H5Reader`` does on open, plus reading the
    variable-length string datasets (their data are global-heap references, like the
    attributes that hang); the index goes to ``out`` as JSON. Returns the exit status."""
    try:
        with H5Reader(path, probe=False) as reader:
            for info in reader.tensor_infos():
                if info.dtype == "object":
                    reader.read(info.name)
            out.write(json.dumps(reader._snapshot()).encode())
            out.flush()
    except QCompressError:
        return _PROBE_REFUSED
    return _PROBE_OK


def probe_h5(path: Path) -> dict[str, Any] | None:
    """Parse ``path``'s HDF5 structure in a child process first; a crash or hang there becomes
    a FormatError here instead of killing or freezing this process. Returns the index the child
    built, or None when the caller should build it itself (probe off, or the child found a
    clean error, which the caller then raises). See the module docstring."""
    timeout = probe_timeout()
    if timeout <= 0:
        return None
    probe = _probe_forked if hasattr(os, "fork") else _probe_spawned
    status, output = probe(path, timeout)
    if status is None:
        raise FormatError(
            f"{path}: the HDF5 library did not finish parsing the file within {timeout:g} s "
            f"(corrupt or hostile file; {PROBE_TIMEOUT_ENV} sets the limit)"
        )
    if status < 0:
        raise FormatError(
            f"{path}: the HDF5 library crashed parsing the file "
            f"({_signal_name(-status)}); the file is corrupt or hostile"
        )
    if status != _PROBE_OK:
        return None
    try:
        snapshot: dict[str, Any] = json.loads(output)
    except ValueError:
        return None
    return snapshot


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _probe_forked(path: Path, timeout: float) -> tuple[int | None, bytes]:
    """Exit status of a forked child running ``_probe_work`` (negative: killed by that signal;
    None: ran out of time) and what it wrote. fork shares the already-imported h5py, so the
    probe costs a few milliseconds; the child leaves by ``os._exit`` without running any
    cleanup of ours."""
    read_end, write_end = os.pipe()
    # h5py serialises every HDF5 call on one lock. Holding it across fork means no other thread
    # of ours is inside HDF5 at that moment, so the child (whose only thread is this one, and
    # which re-enters the lock as its owner) never inherits a half-updated library or a lock
    # nobody will release.
    with _h5py_lock:
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its exit status is what is tested
        status = 4
        try:
            os.close(read_end)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # glibc and HDF5 abort messages must not reach our stderr
            os.dup2(devnull, 2)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            with os.fdopen(write_end, "wb") as out:
                status = _probe_work(path, out)
        finally:
            os._exit(status)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        # Read as the child writes (an index can exceed the pipe's buffer); the write end
        # closes when the child exits, however it exits.
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None, b""
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        _, raw = os.waitpid(pid, 0)
        pid = 0
        status = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
        return status, b"".join(chunks)
    finally:
        os.close(read_end)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _probe_spawned(path: Path, timeout: float) -> tuple[int | None, bytes]:  # pragma: no cover
    """``_probe_forked`` for platforms without fork (Windows): a fresh interpreter, slower
    since it imports h5py again."""
    code = (
        "import sys; from pathlib import Path; from qcompress.formats.h5 import _probe_work; "
        "sys.exit(_probe_work(Path(sys.argv[1]), sys.stdout.buffer))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, b""
    return proc.returncode, proc.stdout


def encode_attr(attrs: h5py.AttributeManager, key: str) -> dict[str, Any]:
    """One attribute as tagged JSON (see the module docstring), from its HDF5 type rather
    than from the Python value h5py returns, so the type survives a rewrite."""
    aid = attrs.get_id(key)
    dt = aid.dtype
    shape = aid.shape
    string = h5py.check_string_dtype(dt)
    if shape is None:
        if string is not None or dt.kind not in "biuf":
            raise _Unsupported(f"empty {dt}")
        return {"kind": "empty", "dtype": dt.str}
    value = attrs[key]
    if string is not None:
        fixed = string.length is not None
        raw = np.asarray(value, dtype=object)
        items = [_to_bytes(v) for v in raw.reshape(-1)]
        enc: dict[str, Any] = {"kind": "bytes" if fixed else "str"}
        if fixed:
            enc["dtype"] = dt.str
        enc["cset"] = string.encoding
        enc["shape"] = list(shape)
        try:
            texts = [b.decode("utf-8") for b in items]
        except UnicodeDecodeError:
            texts = [base64.b64encode(b).decode("ascii") for b in items]
            enc["b64"] = True
        enc["value"] = np.array(texts, dtype=object).reshape(shape).tolist()
        return enc
    if dt.kind not in "biuf" or dt.fields is not None:
        raise _Unsupported(str(dt))
    array = np.asarray(value, dtype=dt)
    return {
        "kind": "number",
        "dtype": dt.str,
        "shape": list(shape),
        "value": _json_numbers(array.tolist()),
    }


def decode_attr(attrs: h5py.AttributeManager, key: str, enc: dict[str, Any]) -> None:
    """Create attribute ``key`` from its tagged encoding, with the original HDF5 type."""
    kind = enc["kind"]
    if kind == "empty":
        attrs.create(key, h5py.Empty(np.dtype(enc["dtype"])))
        return
    shape = tuple(enc["shape"])
    if kind in ("str", "bytes"):
        flat = np.asarray(enc["value"], dtype=object).reshape(-1)
        items = [base64.b64decode(v) if enc.get("b64") else str(v).encode("utf-8") for v in flat]
        if kind == "bytes":
            dt = h5py.string_dtype(enc["cset"], np.dtype(enc["dtype"]).itemsize)
            data = np.array(items, dtype=enc["dtype"]).reshape(shape)
        else:
            dt = h5py.string_dtype(enc["cset"])
            data = np.empty(len(items), dtype=object)
            data[:] = items
            data = data.reshape(shape)
        attrs.create(key, data, shape=shape, dtype=dt)
        return
    if kind == "number":
        dt = np.dtype(enc["dtype"])
        data = np.array(_py_numbers(enc["value"]), dtype=dt).reshape(shape)
        attrs.create(key, data, shape=shape, dtype=dt)
        return
    raise ValueError(f"unknown attribute kind {kind!r}")


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    # h5py decodes variable-length strings, with surrogateescape for invalid bytes.
    return str(value).encode("utf-8", "surrogateescape")


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _json_numbers(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_numbers(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _py_numbers(value: Any) -> Any:
    if isinstance(value, list):
        return [_py_numbers(v) for v in value]
    if isinstance(value, str):
        return _NONFINITE[value]
    return value


def write_h5(
    path: Path,
    infos: Sequence[TensorInfo],
    arrays: Iterable[np.ndarray],
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write an HDF5 file: groups from "/" in names, one contiguous dataset per tensor in the
    given order, dtypes as given. When ``metadata`` came from an h5 reader, also rebuild its
    groups (empty ones too) and the attributes of the root, groups and datasets."""
    path = Path(path)
    _check_h5_names(path, infos)
    source = metadata if metadata and metadata.get("format") == "h5" else None
    # HDF5's original format keeps attributes in the object header, at most 64 KB per object;
    # larger ones (an 800 KB model_config) need dense attribute storage, from the 1.8 format.
    # Files without such attributes keep the original format, and so their bytes.
    libver = ("v108", "latest") if source is not None and _large_attrs(source) else None
    with h5py.File(path, "w", track_order=False, libver=libver) as f:
        if source is not None:
            for key, enc in source.get("attrs", {}).items():
                decode_attr(f.attrs, key, enc)
            for group in source.get("groups", []):
                g = f.require_group(group["name"])
                for key, enc in group.get("attrs", {}).items():
                    decode_attr(g.attrs, key, enc)
        dataset_meta = source.get("datasets", {}) if source is not None else {}
        for info, array in zip(infos, arrays, strict=True):
            array = check_array(info, array)
            if info.dtype == "object":
                dset = f.create_dataset(
                    info.name, shape=info.shape, dtype=h5py.string_dtype("utf-8")
                )
                if array.size:
                    dset[...] = array
            else:
                dset = f.create_dataset(info.name, data=array, dtype=array.dtype)
            for key, enc in dataset_meta.get(info.name, {}).get("attrs", {}).items():
                decode_attr(dset.attrs, key, enc)


_COMPACT_ATTRS_MAX = 16_384  # bytes of attributes per object kept in the original format


def _large_attrs(source: dict[str, Any]) -> bool:
    """Whether some object's attributes may not fit its header (estimated by their JSON)."""
    objects = [source.get("attrs", {})]
    objects += [g.get("attrs", {}) for g in source.get("groups", [])]
    objects += [d.get("attrs", {}) for d in source.get("datasets", {}).values()]
    return any(len(json.dumps(attrs)) > _COMPACT_ATTRS_MAX for attrs in objects)


def _check_h5_names(path: Path, infos: Sequence[TensorInfo]) -> None:
    """Refuse what HDF5 cannot represent exactly, before creating anything: names HDF5 would
    cut (NUL) or read as other paths (empty parts from a leading, trailing or doubled "/", and
    "." parts), so every name comes back as it was."""
    check_names(path, infos, "HDF5")
    names = set()
    for info in infos:
        parts = info.name.split("/")
        if not info.name or any(p in ("", ".") for p in parts):
            raise UsageError(
                f"{path}: tensor name {info.name!r} cannot be an HDF5 path (empty part); "
                "write .npz or .safetensors instead"
            )
        if info.dtype == "object":
            pass
        elif info.dtype.startswith(("bfloat", "float8")) or to_dtype(info.dtype).kind not in (
            "biufS"
        ):
            raise UsageError(
                f"{path}: HDF5 cannot store tensor {info.name!r} of dtype {info.dtype}; "
                "write .safetensors instead, or convert it (e.g. --dtype float32)"
            )
        names.add(info.name)
    for info in infos:
        parts = info.name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in names:
                raise UsageError(
                    f"{path}: tensors {prefix!r} and {info.name!r} cannot both be stored in "
                    "HDF5 (the first would also have to be a group); write .npz or .safetensors"
                )
