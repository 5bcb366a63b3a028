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

The reader is split by job: ``reader`` (this index and the reads), ``probe`` (crash
isolation: the index is first built in a child process), ``attrs`` (the attribute codec) and
``writer``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

from qcompress.errors import FormatError, InputError, QCompressError
from qcompress.formats._common import (
    check_empty_shape,
    dtype_name,
    one_line,
    require_regular_file,
    to_dtype,
)
from qcompress.formats.base import AxisHint, TensorInfo, WeightReader
from qcompress.formats.h5.attrs import Unsupported, encode_attr
from qcompress.formats.h5.probe import PROBE_OK, PROBE_REFUSED, probe_h5
from qcompress.formats.keras3 import KerasFacts, keras_facts

# h5py turns damage deep in a file into almost any exception: OSError and KeyError from HDF5,
# UnicodeDecodeError for a mangled link name, even SystemError when that happens inside a
# visit callback. For a file we are parsing, all of them mean "corrupt", so catch them all.
_H5_ERRORS = (Exception,)


class H5Reader(WeightReader):
    """An HDF5 file; the index is built on open, data read one dataset per ``read``."""

    format = "h5"
    layout = "keras"

    def __init__(self, path: Path, probe: bool = True, config: Any = None) -> None:
        super().__init__(path)
        self._config = config  # a .keras archive's config.json: layer classes for the axes
        self._keras: KerasFacts | None = None
        require_regular_file(self.path)
        snapshot = probe_h5(self.path, _probe_work) if probe else None
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
            except Unsupported as exc:
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

    def keras(self) -> KerasFacts:
        """What the index says as a Keras file (layers, axes, optimizer state), worked out once."""
        if self._keras is None:
            self._keras = keras_facts(self._infos, self._groups, self._root_attrs, self._config)
        return self._keras

    def axis_hints(self) -> Mapping[str, AxisHint]:
        return self.keras().axis_hints

    def as_stored(self) -> Mapping[str, str]:
        return self.keras().as_stored

    def optimizer_state(self) -> frozenset[str]:
        return self.keras().optimizer

    def close(self) -> None:
        with contextlib.suppress(*_H5_ERRORS):  # closing a damaged file can fail too
            self._file.close()


# deflate, HDF5's usual filter, expands at most about 1032:1; the slack covers tiny datasets and
# fill values of never-written ones.
_MAX_EXPANSION = 1032
_EXPANSION_SLACK = 1 << 20


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
        return PROBE_REFUSED
    return PROBE_OK
