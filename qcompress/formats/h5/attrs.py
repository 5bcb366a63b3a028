"""The tagged JSON encoding of HDF5 attributes (the format is in ``reader``'s docstring): it
keeps each attribute's exact HDF5 type, so a rewritten file is one Keras loads."""

from __future__ import annotations

import base64
import math
from typing import Any

import h5py
import numpy as np


class Unsupported(Exception):
    """An attribute whose HDF5 type the encoding cannot hold; ``args[0]`` names the type."""


def encode_attr(attrs: h5py.AttributeManager, key: str) -> dict[str, Any]:
    """One attribute as tagged JSON (see the module docstring), from its HDF5 type rather
    than from the Python value h5py returns, so the type survives a rewrite."""
    aid = attrs.get_id(key)
    dt = aid.dtype
    shape = aid.shape
    string = h5py.check_string_dtype(dt)
    if shape is None:
        if string is not None or dt.kind not in "biuf":
            raise Unsupported(f"empty {dt}")
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
        raise Unsupported(str(dt))
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
