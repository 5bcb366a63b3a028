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

Never followed: external links, soft links, external raw storage and virtual datasets whose
sources lie in another file. Each is a FormatError on open.

Limit: h5py and the HDF5 C library parse the file. Any Python exception they raise on damaged
content becomes a FormatError, but HDF5 (2.0.0 here) trusts some on-disk lengths, notably of
variable-length string attributes, and a crafted or bit-flipped file can crash or hang the
process inside it. Do not open untrusted HDF5 files in a process that must survive.
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from qcompress.errors import FormatError, InputError, QCompressError, UsageError
from qcompress.formats._common import check_array, dtype_name, one_line, to_dtype
from qcompress.formats.base import TensorInfo, WeightReader

# h5py turns damage deep in a file into almost any exception: OSError and KeyError from HDF5,
# UnicodeDecodeError for a mangled link name, even SystemError when that happens inside a
# visit callback. For a file we are parsing, all of them mean "corrupt", so catch them all.
_H5_ERRORS = (Exception,)


class H5Reader(WeightReader):
    """An HDF5 file; the index is built on open, data read one dataset per ``read``."""

    format = "h5"
    layout = "keras"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
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
            self._index()
        except QCompressError:
            self.close()
            raise
        except _H5_ERRORS as exc:
            self.close()
            raise FormatError(f"{self.path}: corrupt HDF5 file: {one_line(exc)}") from exc

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
        if dset.is_virtual and any(src.file_name != "." for src in dset.virtual_sources()):
            raise FormatError(
                f"{self.path}: dataset {name!r} is a virtual dataset drawing on other files; "
                "qcompress never reads outside the file"
            )
        if dset.shape is None:
            raise FormatError(f"{self.path}: dataset {name!r} is empty (null dataspace)")
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
        return TensorInfo(name, tuple(int(d) for d in dset.shape), dtype)

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
    with h5py.File(path, "w", track_order=False) as f:
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


def _check_h5_names(path: Path, infos: Sequence[TensorInfo]) -> None:
    """Refuse what HDF5 cannot represent, before creating anything."""
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
    if len(names) != len(infos):
        raise ValueError("duplicate tensor names")
