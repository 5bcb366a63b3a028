"""ONNX models: the weights of a ``ModelProto``, read and written back into the same graph.

What is a tensor here: every initializer of the main graph, and the ``value`` tensor of every
``Constant`` node in it (paddle2onnx and some other exporters keep weights that way), named by
the initializer's name or by the Constant node's output name. Tensors qcompress can store
(floats to quantize; integers and bool to pass through) are listed; anything else (strings,
complex, float8, 4-bit types, sparse initializers, tensors inside subgraphs and functions)
stays in the graph untouched.

Rebuilding: ``metadata()`` is the whole model with the listed tensors' data taken out (the
"skeleton", a few KB to MB of protobuf, kept base64 in the artifact's recipe). The writer puts
the tensors back into the same places, so graph, opsets, metadata and every other field survive
as they were. A tensor that lived in an external-data side file in the source is written to one
side file named after the output (``model.onnx`` -> ``model.onnx.data``; see ``companions``), so
a rebuilt model never writes over the source's own side files.

External data (weights in side files, for models over protobuf's 2 GB): each location must name
a regular file inside the model's folder (no absolute path, no ``..``, no symlink leading out),
and each tensor's offset and length must fit that file; a tensor's bytes are read from it with
``pread`` only when asked for.

Output channels, for per-channel quantization, follow the op that consumes the tensor (see
``consumer_axes``). The ``onnx`` package is optional (``pip install 'qcompress[onnx]'``) and
imported only when an ONNX file is opened or written; ONNX files are recognised by their first
protobuf fields (``ir_version``, then a ModelProto field), not by their name.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np

from qcompress.errors import FormatError, InputError, UsageError
from qcompress.formats._common import (
    check_array,
    check_empty_shape,
    check_names,
    one_line,
    read_exactly,
    require_regular_file,
    shown,
    to_dtype,
)
from qcompress.formats.base import AxisHint, Format, TensorInfo, WeightReader

INSTALL_HINT = "pip install 'qcompress[onnx]'"

# ONNX TensorProto.DataType -> numpy dtype name: the floats qcompress quantizes, and the integer
# and bool types it passes through byte for byte. Other types stay inside the graph.
FLOAT_TYPES: dict[int, str] = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}
PASS_TYPES: dict[int, str] = {
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    12: "uint32",
    13: "uint64",
}
DATA_TYPES: dict[int, str] = {**FLOAT_TYPES, **PASS_TYPES}
_TYPE_CODES: dict[str, int] = {name: code for code, name in DATA_TYPES.items()}
_INLINE_MAX = (1 << 31) - (1 << 24)  # protobuf's 2 GiB message limit, less room for the graph
# Where a TensorProto keeps its values when not in raw_data (onnx.proto's comments on each field).
_TYPED_FIELD: dict[int, str] = {
    1: "float_data",
    11: "double_data",
    7: "int64_data",
    12: "uint64_data",
    13: "uint64_data",
    **{t: "int32_data" for t in (2, 3, 4, 5, 6, 9, 10, 16)},
}
_DATA_FIELDS = ("raw_data", "float_data", "double_data", "int32_data", "int64_data", "uint64_data")
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# Side-file offsets: tensors of 1 MiB and more start on a page (runtimes map them), the rest on
# 64 bytes, so a model of many small tensors does not grow by a page each.
_PAGE, _SMALL_ALIGN, _PAGE_FROM = 4096, 64, 1 << 20
_MAX_IR_VERSION = 64  # ir_version is 11 in 2025; a larger first varint is not an ONNX model


def import_onnx(path: Path | str, purpose: str) -> Any:
    """The ``onnx`` module, or an InputError naming the extra that brings it."""
    try:
        import onnx
    except ImportError:
        raise InputError(
            f"{shown(path)}: {purpose} needs the onnx package: {INSTALL_HINT}"
        ) from None
    return onnx


@dataclass(frozen=True)
class _Slot:
    """Where one listed tensor lives: the TensorProto (an initializer, or a Constant node's
    ``value``) and, for external data, the side file, offset and length."""

    proto: Any
    external: tuple[Path, int, int] | None


class OnnxReader(WeightReader):
    """An ONNX model: the protobuf parsed once; ``read`` decodes one tensor (external data is
    read from its side file then)."""

    format = "onnx"
    layout = "pytorch"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        require_regular_file(self.path)
        onnx = import_onnx(self.path, "reading an ONNX model")
        self._model = _parse_model(onnx, self.path)
        self._slots: dict[str, _Slot] = {}
        self._infos: list[TensorInfo] = []
        self._fds: dict[Path, int] = {}
        self._skeleton: str | None = None
        try:
            for name, proto in listed_tensors(self._model.graph, self.path):
                info = TensorInfo(name, tuple(proto.dims), DATA_TYPES[proto.data_type])
                self._slots[name] = _Slot(proto, self._check_data(info, proto))
                self._infos.append(info)
        except BaseException:
            self.close()
            raise

    def _check_data(self, info: TensorInfo, proto: Any) -> tuple[Path, int, int] | None:
        """Refuse, on open, data that does not hold ``info``'s bytes; the side file of external
        data, its offset and length."""
        if any(d < 0 for d in info.shape):
            raise self._corrupt(info.name, f"has negative dimensions {list(info.shape)}")
        check_empty_shape(self.path, info.name, info.shape, to_dtype(info.dtype))
        nbytes = info.nbytes
        if proto.data_location == _EXTERNAL:
            return self._check_external(info, proto, nbytes)
        if proto.HasField("raw_data") or nbytes == 0:
            if len(proto.raw_data) != nbytes:
                raise self._corrupt(
                    info.name,
                    f"holds {len(proto.raw_data)} data bytes but {info.dtype} "
                    f"{list(info.shape)} needs {nbytes}",
                )
            return None
        count = len(getattr(proto, _TYPED_FIELD[proto.data_type]))
        if count != info.size:
            raise self._corrupt(
                info.name,
                f"holds {count} values but its shape {list(info.shape)} needs {info.size}",
            )
        return None

    def _check_external(self, info: TensorInfo, proto: Any, nbytes: int) -> tuple[Path, int, int]:
        entries = {e.key: e.value for e in proto.external_data}
        location = entries.get("location")
        if not location:
            raise self._corrupt(info.name, "is stored externally but names no location")
        side = side_file(self.path, location, info.name)
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError:
            raise self._corrupt(
                info.name, "has an external offset or length that is no number"
            ) from None
        if offset < 0 or (length is not None and length != nbytes):
            raise self._corrupt(
                info.name,
                f"declares {length} external bytes at offset {offset}, but {info.dtype} "
                f"{list(info.shape)} needs {nbytes}",
            )
        size = require_regular_file(side, "external data file")
        if offset + nbytes > size:
            raise FormatError(
                f"{shown(self.path)}: tensor {info.name!r} needs bytes {offset}..{offset + nbytes} "
                f"of {shown(side)}, which has {size} (truncated?)"
            )
        return side, offset, nbytes

    def _corrupt(self, name: str, what: str) -> FormatError:
        return FormatError(f"{shown(self.path)}: tensor {name!r} {what}; the model is corrupt")

    def tensor_infos(self) -> list[TensorInfo]:
        """Initializers in graph order, then Constant-node tensors in node order."""
        return list(self._infos)

    def read(self, name: str) -> np.ndarray:
        """A fresh array of tensor ``name`` (little-endian, as ONNX stores it)."""
        slot = self._slots.get(name)
        if slot is None:
            raise InputError(f"{shown(self.path)}: no tensor named {name!r}")
        proto = slot.proto
        dtype = to_dtype(DATA_TYPES[proto.data_type])
        shape = tuple(proto.dims)
        if slot.external is not None:
            side, offset, nbytes = slot.external
            flat = np.empty(nbytes // dtype.itemsize if dtype.itemsize else 0, dtype=dtype)
            if nbytes:
                read_exactly(self._fd(side), memoryview(flat.view(np.uint8)), offset, side)
            return flat.reshape(shape)
        if proto.HasField("raw_data"):
            return np.frombuffer(proto.raw_data, dtype=_le(dtype)).astype(dtype).reshape(shape)
        if 0 in shape:
            return np.empty(shape, dtype=dtype)
        values = getattr(proto, _TYPED_FIELD[proto.data_type])
        if proto.data_type in (10, 16):  # float16 / bfloat16 bits in the low half of int32s
            return np.asarray(values, dtype=np.int32).astype(np.uint16).view(dtype).reshape(shape)
        return np.asarray(values).astype(dtype).reshape(shape)

    def _fd(self, side: Path) -> int:
        fd = self._fds.get(side)
        if fd is None:
            try:
                fd = os.open(side, os.O_RDONLY)
            except OSError as exc:
                raise InputError(
                    f"{shown(side)}: cannot read: {one_line(exc.strerror or exc)}"
                ) from None
            self._fds[side] = fd
        return fd

    def axis_hints(self) -> dict[str, AxisHint]:
        """The output-channel axis of each listed tensor, by the op that consumes it."""
        return consumer_axes(self._model.graph, self._infos)

    def metadata(self) -> dict[str, Any]:
        """The model without the listed tensors' data, for the writer to fill in again."""
        if self._skeleton is None:
            skeleton = type(self._model)()
            skeleton.CopyFrom(self._model)
            for _, proto in listed_tensors(skeleton.graph, self.path):
                for field in (*_DATA_FIELDS, "external_data"):
                    proto.ClearField(field)
            raw = skeleton.SerializeToString(deterministic=True)
            self._skeleton = base64.b64encode(raw).decode("ascii")
        return {"format": "onnx", "model": self._skeleton}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _le(dtype: np.dtype) -> np.dtype:
    """The on-disk (little-endian) form of ``dtype``; ml_dtypes types have no byte order."""
    return dtype.newbyteorder("<") if dtype.kind in "iuf" and dtype.name != "bfloat16" else dtype


def _parse_model(onnx: Any, path: Path) -> Any:
    """The ModelProto in ``path``; a FormatError for bytes protobuf cannot parse (a truncated or
    damaged file) or a model without a graph."""
    from google.protobuf.message import DecodeError

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{shown(path)}: cannot read: {one_line(exc.strerror or exc)}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise FormatError(
            f"{shown(path)}: truncated or corrupt ONNX model (protobuf: {one_line(exc)})"
        ) from None
    if not model.HasField("graph"):
        raise FormatError(f"{shown(path)}: ONNX model has no graph (truncated or corrupt?)")
    return model


def listed_tensors(graph: Any, path: Path) -> list[tuple[str, Any]]:
    """(name, TensorProto) of every tensor qcompress lists, in order: initializers, then the
    ``value`` of Constant nodes. A name that appears twice is a FormatError."""
    found: list[tuple[str, Any]] = []
    for init in graph.initializer:
        if init.data_type in DATA_TYPES:
            found.append((init.name, init))
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.HasField("t") and attr.t.data_type in DATA_TYPES:
                if len(node.output) != 1 or not node.output[0]:
                    raise FormatError(f"{shown(path)}: a Constant node has no output name")
                found.append((node.output[0], attr.t))
    seen: set[str] = set()
    for name, _ in found:
        if not name:
            raise FormatError(f"{shown(path)}: an initializer has no name; the model is corrupt")
        if name in seen:
            raise FormatError(f"{shown(path)}: tensor {name!r} is defined twice in the graph")
        seen.add(name)
    return found


def side_file(model: Path, location: str, name: str) -> Path:
    """The external-data file ``location`` names, if it is inside the model's folder; else a
    FormatError: a model must not make qcompress read files elsewhere (``/etc/passwd``,
    ``../../secret``), which its onnx loader refuses too."""
    folder = model.parent.resolve()
    rel = PurePosixPath(location)
    bad = (
        "\x00" in location or rel.is_absolute() or ".." in rel.parts or Path(location).is_absolute()
    )
    target = (folder / location).resolve() if not bad else folder
    if bad or target == folder or not target.is_relative_to(folder):
        raise FormatError(
            f"{shown(model)}: tensor {name!r} keeps its data in {location!r}, outside the "
            "model's folder; external data must be a file beside the model"
        )
    return target


def _rule(op: str, slot: int, node: Any, ndim: int) -> AxisHint | None:
    """The output-channel axis of input ``slot`` of ``node`` (an ``op`` with a weight layout
    qcompress knows), or None."""
    if op == "Conv" and slot == 1:
        return AxisHint(0, "ONNX Conv weight [out, in/group, k...]: axis 0")
    if op == "ConvTranspose" and slot == 1 and ndim >= 2:
        return AxisHint(1, "ONNX ConvTranspose weight [in, out/group, k...]: axis 1")
    if op == "Gemm" and slot == 1 and ndim == 2:
        if _int_attr(node, "transB", 0):
            return AxisHint(0, "ONNX Gemm B [N, K] (transB=1): axis 0")
        return AxisHint(1, "ONNX Gemm B [K, N] (transB=0): axis 1")
    if op == "MatMul" and slot == 1 and ndim >= 2:
        return AxisHint(ndim - 1, "ONNX MatMul B [..., in, out]: last axis")
    if op == "Gather" and slot == 0:
        axis = _int_attr(node, "axis", 0) % ndim
        return AxisHint(
            axis, f"ONNX Gather data (a lookup table): one scale per entry, axis {axis}"
        )
    return None


def _int_attr(node: Any, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def consumer_axes(graph: Any, infos: Sequence[TensorInfo]) -> dict[str, AxisHint]:
    """For each tensor, its output-channel axis by the op of the main graph that consumes it,
    and the rule that says so. A tensor used by no op, by an op without a rule, or by several
    ops that disagree gets the PyTorch-style default (axis 0), with the rule saying why."""
    uses: dict[str, list[tuple[str, int, Any]]] = {i.name: [] for i in infos}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in uses:
                uses[name].append((node.op_type, slot, node))
    axes: dict[str, AxisHint] = {}
    for info in infos:
        found = uses[info.name]
        ndim = len(info.shape)
        if ndim == 0:
            continue  # a scalar has no channels (and stays in float anyway)
        if not found:
            axes[info.name] = AxisHint(0, "ONNX: used by no op of the main graph: default axis 0")
            continue
        rules = [_rule(op, slot, node, ndim) for op, slot, node in found]
        chosen = {r.axis for r in rules if r is not None}
        ops = ", ".join(sorted({f"{op} input {slot}" for op, slot, _ in found}))
        if None not in rules and len(chosen) == 1:
            hint = rules[0]
            assert hint is not None
            if len(found) > 1:
                hint = AxisHint(hint.axis, f"{hint.rule} (used by {len(found)} ops, which agree)")
            axes[info.name] = hint
        elif len(found) > 1:
            axes[info.name] = AxisHint(0, f"ONNX: used by {len(found)} ops ({ops}): default axis 0")
        else:
            axes[info.name] = AxisHint(0, f"ONNX: used by {ops}, no channel rule: default axis 0")
    return axes


def companions(path: Path, metadata: Mapping[str, Any] | None) -> tuple[Path, ...]:
    """The side file writing ``path`` makes: ``<name>.data`` when the source model kept any
    listed tensor as external data, else none."""
    if not metadata or metadata.get("format") != "onnx":
        return ()
    skeleton = _load_skeleton(path, metadata)
    external = any(p.data_location == _EXTERNAL for _, p in listed_tensors(skeleton.graph, path))
    return (path.with_name(path.name + ".data"),) if external else ()


def _load_skeleton(path: Path, metadata: Mapping[str, Any]) -> Any:
    onnx = import_onnx(path, "writing an ONNX model")
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(base64.b64decode(str(metadata.get("model", "")), validate=True))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"{shown(path)}: the artifact's record of the ONNX graph is damaged ({one_line(exc)}); "
            "write .safetensors instead"
        ) from None
    return model


def write_onnx(
    path: Path,
    infos: Sequence[TensorInfo],
    arrays: Iterable[np.ndarray],
    own: Mapping[str, Any] | None,
    companions: Mapping[Path, Path] | None = None,
) -> None:
    """Fill the source model's skeleton (``own``; None: a model of initializers only, see
    ``_weights_only``) with ``arrays`` and write it to ``path``: inline
    tensors as ``raw_data``, tensors that were external into the one side file (its final path
    -> the temporary to write, in ``companions``), each at an aligned offset. The graph
    needs every tensor back in its own dtype and shape, so an extra or changed tensor is a
    UsageError, and so is a missing one that the graph uses (an unused one is taken out)."""
    check_names(path, infos, "ONNX")
    model = _load_skeleton(path, own) if own is not None else _weights_only(path, infos)
    slots = dict(listed_tensors(model.graph, path))
    given = {i.name for i in infos}
    missing = [n for n in slots if n not in given]
    if missing:
        _remove_unused(path, model.graph, missing)
        slots = dict(listed_tensors(model.graph, path))  # the graph's messages were copied
    for info in infos:
        proto = slots.get(info.name)
        if proto is None:
            raise UsageError(f"{shown(path)}: tensor {info.name!r} has no place in the ONNX graph")
        declared = DATA_TYPES[proto.data_type], tuple(proto.dims)
        if declared != (info.dtype, tuple(info.shape)):
            raise UsageError(
                f"{shown(path)}: the ONNX graph declares tensor {info.name!r} as {declared[0]} "
                f"{list(declared[1])}, not {info.dtype} {list(info.shape)}; "
                "an ONNX output keeps each tensor's dtype (use --dtype original)"
            )
    inline = sum(i.nbytes for i in infos if slots[i.name].data_location != _EXTERNAL)
    if inline > _INLINE_MAX:
        raise UsageError(
            f"{shown(path)}: {inline} bytes of tensors inline exceed protobuf's 2 GB limit for "
            "one ONNX file; write .safetensors instead"
        )
    side = next(iter(companions.items()), None) if companions else None
    with _SideFile(side) as data:
        for info, array in zip(infos, arrays, strict=True):
            raw = _raw_bytes(check_array(info, array))
            proto = slots[info.name]
            if proto.data_location == _EXTERNAL and data.open:
                data.put(proto, raw)
            else:  # inline, as in the source: data_location stays as it was (unset or DEFAULT)
                if proto.data_location == _EXTERNAL:
                    proto.ClearField("data_location")
                proto.raw_data = raw
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString(deterministic=True))


def _remove_unused(path: Path, graph: Any, missing: Sequence[str]) -> None:
    """Take tensors the artifact does not hold (``--drop``) out of ``graph``: an initializer,
    or the Constant node making it. One that a node (in any subgraph too) or a graph output
    uses cannot go, so the graph could not run: a UsageError naming it."""
    used = _used_names(graph)
    for name in missing:
        if name in used:
            raise UsageError(
                f"{shown(path)}: the ONNX graph uses tensor {name!r}, which the artifact does not "
                "hold (left out with --drop?); write .safetensors instead, or quantize again "
                "without dropping it"
            )
    gone = set(missing)
    kept_inits = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    kept_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in gone)]
    del graph.node[:]
    graph.node.extend(kept_nodes)


def _used_names(graph: Any) -> set[str]:
    """Every name a node of ``graph`` or of its subgraphs reads, and the graph's outputs."""
    used = {o.name for o in graph.output}
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            used.update(node.input)
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return used


def _weights_only(path: Path, infos: Sequence[TensorInfo]) -> Any:
    """A model of initializers only (no nodes), for tensors that come from no ONNX model: what
    the file can say without a graph. Fixed ir_version and opset, so the bytes do not depend on
    the onnx release."""
    onnx = import_onnx(path, "writing an ONNX model")
    model = onnx.ModelProto(ir_version=8, producer_name="qcompress")
    model.opset_import.add(domain="", version=17)
    model.graph.name = "weights"
    for info in infos:
        if not info.name:
            raise UsageError(f"{shown(path)}: ONNX cannot hold a tensor without a name")
        code = _TYPE_CODES.get(info.dtype)
        if code is None:
            raise UsageError(
                f"{shown(path)}: tensor {info.name!r} has dtype {info.dtype}, which qcompress "
                "does not write to ONNX; write .safetensors instead"
            )
        model.graph.initializer.add(name=info.name, dims=info.shape, data_type=code)
    return model


def _raw_bytes(array: np.ndarray) -> bytes:
    """The tensor's bytes as ONNX stores them: little-endian, row-major."""
    return array.astype(_le(array.dtype), copy=False).tobytes()


class _SideFile:
    """The external-data side file being written, one tensor after another (aligned)."""

    def __init__(self, side: tuple[Path, Path] | None) -> None:
        self.open = side is not None
        self._location = side[0].name if side else ""
        self._temp = side[1] if side else None
        self._fh: BinaryIO | None = None
        self._offset = 0

    def __enter__(self) -> _SideFile:
        if self._temp is not None:
            self._fh = open(self._temp, "wb")  # closed in __exit__
        return self

    def put(self, proto: Any, raw: bytes) -> None:
        assert self._fh is not None
        pad = -self._offset % (_PAGE if len(raw) >= _PAGE_FROM else _SMALL_ALIGN)
        self._fh.write(b"\x00" * pad)
        self._offset += pad
        del proto.external_data[:]
        for key, value in (
            ("location", self._location),
            ("offset", str(self._offset)),
            ("length", str(len(raw))),
        ):
            entry = proto.external_data.add()
            entry.key, entry.value = key, value
        proto.data_location = _EXTERNAL
        self._fh.write(raw)
        self._offset += len(raw)

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()


def looks_like_onnx(fh: BinaryIO, size: int) -> bool:
    """A ModelProto as onnx writes it: field 1 (``ir_version``, a small varint) first, then
    the end of the file or another ModelProto field with its wire type. Run after every quick
    magic test failed, so npz, HDF5, safetensors and GGUF never reach it."""
    fh.seek(0)
    head = fh.read(16)
    if len(head) < 2 or head[0] != 0x08:
        return False
    value, pos = _varint(head, 1)
    if value is None or not 1 <= value <= _MAX_IR_VERSION:
        return False
    if pos == len(head) == size:
        return True
    tag, _ = _varint(head, pos)
    if tag is None:
        return False
    field, wire = tag >> 3, tag & 7
    return _MODEL_FIELDS.get(field) == wire


# ModelProto field number -> wire type (0 varint, 2 length-delimited).
_MODEL_FIELDS = {2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos


FORMAT = Format(
    name="onnx",
    label="ONNX",
    open=OnnxReader,
    layout="pytorch",
    deep_sniff=looks_like_onnx,
    suffixes=(".onnx",),
    write=write_onnx,
    companions=companions,
)
