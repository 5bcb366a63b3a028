"""Small weight files for tests: tensors of every dtype and layout, a Keras-style HDF5 file,
and raw safetensors bytes for corrupt-header tests."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import ml_dtypes
import numpy as np

from qcompress.formats import TensorInfo, open_weights, write_weights
from qcompress.formats._common import dtype_name

# dtypes each format can hold; bfloat16 and float8 only in safetensors.
COMMON_DTYPES = ("float64", "float32", "float16", "int64", "int32", "int8", "uint8", "bool")
SAFETENSORS_ONLY = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Values that exercise the dtype: signed floats, full-range ints, mixed bools."""
    dt = np.dtype(dtype)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return rng.normal(size=shape).astype(dt)


def sample_tensors(formats_dtypes: tuple[str, ...] = COMMON_DTYPES) -> dict[str, np.ndarray]:
    """Named tensors covering names with "/" and ":", conv kernels in both layouts, 0-d and
    empty tensors, and one 2-D tensor of each dtype."""
    rng = np.random.default_rng(1234)
    tensors: dict[str, np.ndarray] = {
        "encoder/layer.0/weight": random_array(rng, (8, 4), "float32"),
        "dense/kernel:0": random_array(rng, (4, 8), "float32"),
        "conv/pytorch.weight": random_array(rng, (6, 3, 3, 3), "float32"),  # [out, in, kh, kw]
        "conv/keras/kernel:0": random_array(rng, (3, 3, 3, 6), "float32"),  # [kh, kw, in, out]
        "dw/depthwise_kernel:0": random_array(rng, (3, 3, 4, 2), "float32"),  # [kh, kw, ch, mult]
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    for dtype in formats_dtypes:
        tensors[f"dtypes/{dtype}"] = random_array(rng, (3, 5), dtype)
    return tensors


def infos_for(tensors: Mapping[str, np.ndarray]) -> list[TensorInfo]:
    return [TensorInfo(name, a.shape, dtype_name(a.dtype)) for name, a in tensors.items()]


def write_tensors(
    path: Path, fmt: str, tensors: Mapping[str, np.ndarray], metadata: dict | None = None
) -> Path:
    """Write through ``write_weights`` from a generator, so streaming is what gets tested."""
    write_weights(path, fmt, infos_for(tensors), (a for a in tensors.values()), metadata or {})
    return path


def read_all(path: Path) -> tuple[dict[str, np.ndarray], list[TensorInfo], dict[str, Any]]:
    """Every tensor (copied), the infos and the metadata of a weight file."""
    with open_weights(path) as reader:
        infos = reader.tensor_infos()
        arrays = {i.name: np.array(reader.read(i.name), copy=True) for i in infos}
        return arrays, infos, reader.metadata()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape, dtype and bytes (NaN-safe, and exact for bfloat16/float8)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def write_keras_h5(path: Path) -> Path:
    """An HDF5 file shaped like Keras 2's ``model.save("m.h5")``, plus attributes of every
    kind the encoding must keep: vlen str (utf-8 and ascii), fixed-length bytes arrays,
    numpy scalars, numeric arrays, NaN, bools, an empty attribute, invalid UTF-8 and an empty
    group."""
    rng = np.random.default_rng(7)
    layers = {
        "conv2d": {"kernel:0": (3, 3, 3, 8), "bias:0": (8,)},
        "depthwise_conv2d": {"depthwise_kernel:0": (3, 3, 8, 2)},
        "dense": {"kernel:0": (16, 4), "bias:0": (4,)},
        "dropout": {},
    }
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": []}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.15.0"  # h5py 3 stores bytes as vlen ascii
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config)  # vlen utf-8
        f.attrs["training_config"] = '{"loss": "mse", "note": "π≈3.14"}'
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([n.encode() for n in layers])  # |S16
        mw.attrs["backend"] = b"tensorflow"
        mw.attrs["keras_version"] = b"2.15.0"
        for layer, weights in layers.items():
            g = mw.create_group(layer)
            names = [f"{layer}/{w}".encode() for w in weights]
            g.attrs["weight_names"] = np.array(names, dtype="S") if names else np.array([], "S1")
            sub = g.create_group(layer) if weights else g
            for w, shape in weights.items():
                sub.create_dataset(w, data=rng.normal(size=shape).astype(np.float32))
        ds = mw["dense/dense/kernel:0"]
        ds.attrs["float_scalar"] = np.float32(0.25)
        ds.attrs["int_scalar"] = np.int64(-3)
        ds.attrs["float16_array"] = np.array([1.5, np.nan, -np.inf], dtype=np.float16)
        ds.attrs["bool"] = np.bool_(True)
        ds.attrs["big_endian"] = np.array([1, 2, 3], dtype=">i4")
        ds.attrs["matrix"] = np.arange(6, dtype=np.uint16).reshape(2, 3)
        ds.attrs["vlen_list"] = ["a", "bé", ""]
        ds.attrs["raw_bytes"] = np.array([b"\xff\x00x", b"ok"])  # not UTF-8: base64 path
        ds.attrs["nothing"] = h5py.Empty("f4")
        f.create_group("optimizer_weights/empty_group")
        f.create_dataset("optimizer_weights/iterations:0", data=np.int64(42))
        f.create_dataset("strings/fixed", data=np.array([b"abc", b"de"]))
        f.create_dataset("strings/vlen", data=["x", "yz"], dtype=h5py.string_dtype())
    return path


def all_h5_objects(path: Path) -> dict[str, dict[str, tuple]]:
    """For the root, every group and every dataset: each attribute's HDF5 dtype, string
    info, shape and value, for attribute-by-attribute comparison."""
    out: dict[str, dict[str, tuple]] = {}

    def describe(name: str, obj: Any) -> None:
        attrs = {}
        for key in obj.attrs:
            aid = obj.attrs.get_id(key)
            value = obj.attrs[key]
            if isinstance(value, h5py.Empty):
                value = ("empty", value.dtype.str)
            elif isinstance(value, np.ndarray):
                value = (
                    value.dtype.str,
                    value.shape,
                    value.tobytes() if value.dtype != object else tuple(value.reshape(-1).tolist()),
                )
            elif isinstance(value, np.generic):
                value = (value.dtype.str, value.tobytes())
            attrs[key] = (aid.dtype.str, h5py.check_string_dtype(aid.dtype), aid.shape, value)
        kind = "group" if isinstance(obj, h5py.Group) else f"dataset {obj.dtype.str}"
        out[name] = {"__kind__": (kind,), **attrs}

    with h5py.File(path, "r") as f:
        describe("/", f)
        f.visititems(describe)
    return out


def raw_safetensors(header: Any, data: bytes = b"", header_len: int | None = None) -> bytes:
    """A safetensors file from a header (dict/list dumped as JSON, or raw bytes) and data,
    with no validation, for corrupt-input tests."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    return struct.pack("<Q", length) + raw + data


def bf16(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=ml_dtypes.bfloat16)
