"""Writing HDF5 files: one contiguous dataset per tensor, and, for metadata an h5 reader gave,
the groups and attributes of the source file, so Keras loads the result."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from qcompress.errors import UsageError
from qcompress.formats._common import check_array, check_names, to_dtype
from qcompress.formats.base import TensorInfo
from qcompress.formats.h5.attrs import decode_attr


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
