"""compressed-tensors checkpoints (the folders transformers and vLLM load), read as float tensors.

The layout, taken from compressed-tensors 0.20.1 (``compressors/pack_quantized``,
``compressors/naive_quantized``, ``quantization/lifecycle/forward_helpers.py``) and checked
against checkpoints that library writes:

- ``config.json`` holds ``quantization_config`` with ``quant_method: "compressed-tensors"``, a
  ``format`` and ``config_groups`` whose ``weights`` give ``num_bits``, ``symmetric``,
  ``strategy`` ("tensor", "channel", "group") and ``group_size``.
- ``pack-quantized``: a quantized Linear ``M`` stores ``M.weight_packed`` (int32, [out,
  ceil(in * bits / 32)]), ``M.weight_scale`` ([out, n_groups], the model's float dtype),
  ``M.weight_shape`` (int64 [out, in]) and, when asymmetric, ``M.weight_zero_point`` packed the
  same way along dim 0 (int32 [ceil(out * bits / 32), n_groups]). Codes are signed,
  [-2^(b-1), 2^(b-1) - 1]; packing adds 2^(b-1) and lays element i of a row at bit i * b of the
  row's little-endian int32 stream. (For 3/5/6/7 bits that stream crosses word boundaries, and
  releases before 0.13 did not: those widths are refused rather than guessed.)
- ``naive-quantized`` / ``int-quantized``: ``M.weight`` is int8 codes, with ``M.weight_scale``
  and, when asymmetric, an unpacked int8 ``M.weight_zero_point``.
- Dequantized value: (code - zero_point) * scale, per (row, group of ``group_size`` columns).

The reader lists every quantized Linear as one float32 tensor ``M.weight`` of its original
shape and every other tensor as stored, and decodes one tensor at a time with numpy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompress.errors import FormatError, InputError
from qcompress.formats._common import QUANT_METHOD as QUANT_METHOD
from qcompress.formats._common import is_compressed_tensors_dir, read_json
from qcompress.formats.base import Format, TensorInfo, WeightReader, closed_on_error

PACKED_FORMAT = "pack-quantized"
INT8_FORMATS = ("naive-quantized", "int-quantized")
PACKED_BITS = (1, 2, 4, 8)
"""Widths whose packed layout is the same in every compressed-tensors release (they divide 32)."""
STRATEGIES = ("tensor", "channel", "group")
SUFFIXES = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")


@dataclass(frozen=True)
class WeightScheme:
    """What one config group says about its weights."""

    bits: int
    symmetric: bool
    strategy: str
    group_size: int | None


# ---- packing (numpy; the exporter uses the same functions) -------------------------------------


def pack_int32(codes: np.ndarray, bits: int, dim: int = 1) -> np.ndarray:
    """Signed codes (2-D, in [-2^(b-1), 2^(b-1) - 1]) packed as compressed-tensors'
    ``pack_to_int32`` does: offset to unsigned, element i of a row at bit i * bits of its
    little-endian int32 words, ``ceil(n * bits / 32)`` words per row; ``dim=0`` packs columns."""
    if bits not in PACKED_BITS:
        raise ValueError(f"packing supports {PACKED_BITS} bits, not {bits}")
    a = np.asarray(codes)
    if dim == 0:
        a = a.T
    rows, cols = a.shape
    per = 32 // bits
    words = -(-cols // per)
    u = np.zeros((rows, words * per), np.uint32)
    u[:, :cols] = a.astype(np.int32) + (1 << (bits - 1))
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, None, :]
    packed = np.bitwise_or.reduce(u.reshape(rows, words, per) << shifts, axis=-1)
    out = packed.astype(np.uint32).view(np.int32)
    return np.ascontiguousarray(out.T if dim == 0 else out)


def unpack_int32(packed: np.ndarray, bits: int, n: int, dim: int = 1) -> np.ndarray:
    """Inverse of ``pack_int32``: int8 codes, ``n`` of them along ``dim``."""
    if bits not in PACKED_BITS:
        raise ValueError(f"packing supports {PACKED_BITS} bits, not {bits}")
    w = np.asarray(packed).astype(np.int32, copy=False).view(np.uint32)
    if dim == 0:
        w = w.T
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, None, :]
    u = (w[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    codes = u.reshape(w.shape[0], -1)[:, :n].astype(np.int16) - (1 << (bits - 1))
    codes = codes.astype(np.int8)
    return np.ascontiguousarray(codes.T if dim == 0 else codes)


def decode_weight(
    codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None
) -> np.ndarray:
    """(codes - zero_point) * scale in float32 for 2-D ``codes``: ``scale`` (and ``zero_point``)
    is [rows, n_groups] over equal groups of columns (n_groups == 1: per channel), or holds one
    value (per tensor)."""
    rows, cols = codes.shape
    s = _per_group(scale, rows)
    c = codes.reshape(rows, s.shape[1], -1).astype(np.float32)
    if zero_point is not None:
        c -= _per_group(zero_point, rows)[:, :, None]
    c *= s[:, :, None]
    return c.reshape(rows, cols)


def _per_group(values: np.ndarray, rows: int) -> np.ndarray:
    """A scale or zero-point as float32 [rows, n_groups] (one value repeats on every row)."""
    v = np.asarray(values).astype(np.float32)
    return np.full((rows, 1), v.reshape(-1)[0], np.float32) if v.size == 1 else v.reshape(rows, -1)


# ---- the reader --------------------------------------------------------------------------------


class CompressedTensorsReader(WeightReader):
    """A compressed-tensors checkpoint folder: quantized Linear weights decode to float32."""

    format = "compressed-tensors"
    layout = "pytorch"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._config = _read_config(self.path)
        qc = self._config["quantization_config"]
        self._format = qc.get("format")
        self._groups = _parse_groups(self.path, qc)
        self._inner = _open_inner(self.path)
        with closed_on_error(self._inner):
            self._plan()

    def _plan(self) -> None:
        stored = {i.name: i for i in self._inner.tensor_infos()}
        self._stored = stored
        self._modules: dict[str, str] = {}  # logical "M.weight" -> module M
        infos: list[TensorInfo] = []
        packed_fmt = self._format == PACKED_FORMAT
        for info in stored.values():
            module, _, leaf = info.name.rpartition(".")
            if leaf in SUFFIXES:
                is_codes = leaf == ("weight_packed" if packed_fmt else "weight_scale")
                if is_codes and module:
                    infos.append(self._quantized_info(module))
                continue
            if leaf == "weight" and f"{module}.weight_scale" in stored and not packed_fmt:
                continue  # int8 codes of a naive-quantized module: listed at its weight_scale
            infos.append(info)
        self._infos = infos

    def _quantized_info(self, module: str) -> TensorInfo:
        scheme = self._scheme(module)
        codes_name = f"{module}.weight_packed" if self._format == PACKED_FORMAT else None
        if codes_name is not None:
            shape_name = f"{module}.weight_shape"
            if shape_name not in self._stored:
                raise FormatError(f"{self.path}: {module} has weight_packed but no weight_shape")
            shape = tuple(int(v) for v in np.asarray(self._inner.read(shape_name)).reshape(-1))
        else:
            codes_name = f"{module}.weight"
            if codes_name not in self._stored:
                raise FormatError(f"{self.path}: {module} has weight_scale but no int8 weight")
            shape = self._stored[codes_name].shape
        if len(shape) != 2 or min(shape) < 0:
            raise FormatError(f"{self.path}: {module}: weight shape {shape} is not 2-D")
        if not scheme.symmetric and f"{module}.weight_zero_point" not in self._stored:
            raise FormatError(f"{self.path}: {module} is asymmetric but has no weight_zero_point")
        name = f"{module}.weight"
        self._modules[name] = module
        return TensorInfo(name, shape, "float32")

    def _scheme(self, module: str) -> WeightScheme:
        """The config group whose targets name ``module``; class-name targets ("Linear") cannot
        be checked without the model, so they match any module no named target claims."""
        fallback = None
        for targets, scheme in self._groups:
            for t in targets:
                if t == module or (t.startswith("re:") and re.match(t[3:], module)):
                    return scheme
            if fallback is None and any(not t.startswith("re:") and "." not in t for t in targets):
                fallback = scheme
        if fallback is None:
            raise FormatError(
                f"{self.path}: no config group of quantization_config targets {module}"
            )
        return fallback

    def read(self, name: str) -> np.ndarray:
        module = self._modules.get(name)
        if module is None:
            return self._inner.read(name)
        return self._decode(module)

    def _decode(self, module: str) -> np.ndarray:
        scheme = self._scheme(module)
        scale = np.asarray(self._inner.read(f"{module}.weight_scale"))
        zp_name = f"{module}.weight_zero_point"
        zp = None if scheme.symmetric else np.asarray(self._inner.read(zp_name))
        rows, cols = next(i.shape for i in self._infos if i.name == f"{module}.weight")
        if self._format == PACKED_FORMAT:
            packed = np.asarray(self._inner.read(f"{module}.weight_packed"))
            want = (rows, -(-cols * scheme.bits // 32))
            if packed.dtype != np.int32 or packed.shape != want:
                raise FormatError(
                    f"{self.path}: {module}.weight_packed is {packed.dtype} {packed.shape}, "
                    f"expected int32 {want} for {scheme.bits}-bit codes of [{rows}, {cols}]"
                )
            codes = unpack_int32(packed, scheme.bits, cols)
            if zp is not None and scheme.strategy in ("group", "channel"):
                zp = unpack_int32(zp, scheme.bits, rows, dim=0)
        else:
            codes = np.asarray(self._inner.read(f"{module}.weight"))
            if codes.dtype != np.int8:
                raise FormatError(f"{self.path}: {module}.weight is {codes.dtype}, expected int8")
        n_groups = _n_groups(scheme, cols)
        if (
            cols % n_groups
            or scale.size not in (1, rows * n_groups)
            or (zp is not None and zp.size != scale.size)
        ):
            raise FormatError(
                f"{self.path}: {module}: weight_scale {scale.shape} does not fit a "
                f"{scheme.strategy} grid of [{rows}, {cols}]"
            )
        return decode_weight(codes, scale, zp)

    def metadata(self) -> dict[str, Any]:
        return {"format": self.format, "config": self._config}

    def release(self, name: str) -> None:
        module = self._modules.get(name)
        for n in [f"{module}.{s}" for s in SUFFIXES] if module else [name]:
            if n in self._stored:
                self._inner.release(n)

    def close(self) -> None:
        self._inner.close()


def _n_groups(scheme: WeightScheme, cols: int) -> int:
    if scheme.strategy == "group":
        assert scheme.group_size is not None
        return -(-cols // scheme.group_size)
    return 1


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    doc = read_json(path, "valid JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("quantization_config"), dict):
        raise FormatError(f"{path}: no quantization_config object")
    return doc


def _parse_groups(folder: Path, qc: dict[str, Any]) -> list[tuple[list[str], WeightScheme]]:
    where = folder / "config.json"
    fmt = qc.get("format")
    if fmt != PACKED_FORMAT and fmt not in INT8_FORMATS:
        raise InputError(
            f"{where}: compressed-tensors format {fmt!r} is not supported; qcompress reads "
            f"{PACKED_FORMAT} and {', '.join(INT8_FORMATS)}"
        )
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise FormatError(f"{where}: quantization_config has no config_groups")
    out: list[tuple[list[str], WeightScheme]] = []
    for gname, group in groups.items():
        w = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(w, dict):
            raise InputError(f"{where}: config group {gname!r} has no weights scheme to decode")
        gfmt = group.get("format") or fmt
        bits, strategy, gs = w.get("num_bits"), w.get("strategy"), w.get("group_size")
        if w.get("type", "int") != "int" or gfmt != fmt:
            raise InputError(f"{where}: config group {gname!r}: only integer {fmt} weights")
        allowed = PACKED_BITS if fmt == PACKED_FORMAT else (8,)
        if bits not in allowed:
            raise InputError(
                f"{where}: config group {gname!r}: {bits}-bit {fmt} is not supported "
                f"(qcompress reads {allowed}; 3/5/6/7-bit packing differs between releases)"
            )
        if strategy not in STRATEGIES or (strategy == "group" and not isinstance(gs, int)):
            raise InputError(f"{where}: config group {gname!r}: strategy {strategy!r} unsupported")
        targets = group.get("targets") or []
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise FormatError(f"{where}: config group {gname!r}: targets must be a list of names")
        scheme = WeightScheme(bits, bool(w.get("symmetric", True)), strategy, gs)
        out.append((targets, scheme))
    return out


def _open_inner(folder: Path) -> WeightReader:
    """The folder's safetensors weights: its index if it has one, else its one .safetensors."""
    from qcompress.formats.safetensors import SafetensorsReader
    from qcompress.formats.sharded import INDEX_SUFFIX, ShardedReader, read_index

    indexes = sorted(folder.glob("*" + INDEX_SUFFIX))
    if len(indexes) == 1:
        return ShardedReader(read_index(indexes[0]))
    files = sorted(folder.glob("*.safetensors"))
    if len(indexes) > 1 or len(files) != 1:
        raise InputError(
            f"{folder}: expected one *.safetensors file or one *{INDEX_SUFFIX}, found "
            f"{len(files)} and {len(indexes)}"
        )
    return SafetensorsReader(files[0])


# Read only (``qcompress export --to compressed-tensors`` writes it): a folder, not a file.
FORMAT = Format(
    name="compressed-tensors",
    label="compressed-tensors",
    open=CompressedTensorsReader,
    layout="pytorch",
    claims=is_compressed_tensors_dir,
)
