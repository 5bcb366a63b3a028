"""Export a safetensors checkpoint to a compressed-tensors folder that transformers and vLLM load.

Weight-only integer quantization of the Linear layers: ``pack-quantized`` for 2 and 4 bits,
``naive-quantized`` (int8 codes) for 8 bits; per-group or per-channel, symmetric or asymmetric.
The tensor layout and config schema are those of compressed-tensors 0.20.1, described in
:mod:`qcompress.formats.compressed_tensors`, which also reads the result back.

Scales are chosen by qcompress's engine (its MSE range search, float scales: compressed-tensors
has no second-level scale codes) and stored in the weight's own dtype, and the codes are encoded
with exactly the stored scales, so what the library decodes is what qcompress measured.
Asymmetric grids keep an integer zero-point (compressed-tensors stores it as an integer code)
and always cover 0.

Which tensors are Linear weights is read from names (a safetensors file does not say): 2-D float
``*.weight`` tensors except embeddings (``*embed*``, ``wte``, ``wpe``, ``shared``) and the output
head (``lm_head``, by the convention of llm-compressor). Every 2-D weight that stays float is
listed in ``ignore``, so the ``targets: ["Linear"]`` group never claims a layer without codes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from qcompress.engine.elementwise import encode
from qcompress.engine.metrics import error_stats
from qcompress.engine.params import Grid, code_range, grid_for_range
from qcompress.engine.ranges import choose_range, group_minmax
from qcompress.engine.rows import group_len, iter_col_tiles, iter_row_chunks, tile_view
from qcompress.engine.spec import ErrorStats, QuantSpec
from qcompress.errors import InputError, UsageError
from qcompress.formats import open_weights
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.formats.compressed_tensors import (
    PACKED_FORMAT,
    QUANT_METHOD,
    CompressedTensorsReader,
    decode_weight,
    pack_int32,
)
from qcompress.formats.safetensors import write_safetensors
from qcompress.formats.sharded import INDEX_SUFFIX, ShardedReader, write_index

CT_VERSION = "0.20.1"
"""The compressed-tensors release whose layout and config schema this writes (recorded in
config.json as ``version``; fixed, so the output does not depend on what is installed)."""
EXPORT_BITS = (2, 4, 8)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_KEEP_FLOAT = re.compile(r"(^|\.)([^.]*embed[^.]*|wte|wpe|shared|lm_head)(\.|$)")


@dataclass(frozen=True)
class CTTensor:
    """One tensor of the source checkpoint and what the export did with it."""

    name: str
    action: str  # "quantized" or "kept"
    bits: int | None
    strategy: str | None  # "group" or "channel" for quantized tensors
    stored_bytes: int
    error: ErrorStats | None
    reason: str = ""


@dataclass(frozen=True)
class CTExportResult:
    """The folder written and, per source tensor, what it holds."""

    out_dir: Path
    format: str
    tensors: tuple[CTTensor, ...]
    ignore: tuple[str, ...]


def export_compressed_tensors(
    input_path: Path,
    out_dir: Path,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = True,
    force: bool = False,
) -> CTExportResult:
    """Write ``out_dir``, a compressed-tensors checkpoint of the safetensors checkpoint at
    ``input_path`` (a file, an index, or a folder with an index; its config.json beside it).

    ``group_size=None`` is per-channel. The folder appears complete or not at all (written
    beside it under a hidden name, renamed at the end); an existing folder is replaced only with
    ``force``. Same input and options, same bytes. Raises UsageError or InputError (exit 2)."""
    input_path, out_dir = Path(input_path), Path(out_dir)
    _check_options(bits, group_size)
    folder = input_path if input_path.is_dir() else input_path.parent
    config = _read_source_config(folder)
    _check_out_dir(out_dir, folder, force)
    with open_weights(_weights_path(input_path)) as reader:
        if reader.format != "safetensors":
            raise UsageError(
                f"{input_path}: is {reader.format}; --to compressed-tensors needs a safetensors "
                "checkpoint (with its config.json)"
            )
        shards = _shards(reader)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            result = _write(reader, shards, folder, config, tmp, bits, group_size, symmetric)
            _verify(tmp, reader, result)
            _move_into_place(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return CTExportResult(out_dir, result.format, result.tensors, result.ignore)


# ---- checks -------------------------------------------------------------------------------------


def _weights_path(path: Path) -> Path:
    """A folder names its index, or else its one ``*.safetensors`` file."""
    if not path.is_dir() or any(path.glob("*" + INDEX_SUFFIX)):
        return path
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise InputError(
            f"{path}: holds {len(files)} *.safetensors files and no *{INDEX_SUFFIX}; "
            "name the weight file"
        )
    return files[0]


def _check_options(bits: int, group_size: int | None) -> None:
    if bits not in EXPORT_BITS:
        raise UsageError(
            f"--bits {bits}: compressed-tensors export writes {', '.join(map(str, EXPORT_BITS))} "
            "bits (the 3/5/6/7-bit pack-quantized layout changed between releases)"
        )
    if group_size is not None and group_size < 1:
        raise UsageError(f"--group-size {group_size}: must be a positive number of columns")


def _read_source_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(
            f"{folder}: no config.json beside the weights; compressed-tensors export needs the "
            "model's transformers config"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: cannot read as JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a JSON object")
    if "quantization_config" in doc:
        raise InputError(f"{path}: the model is already quantized; export its float checkpoint")
    return doc


def _check_out_dir(out_dir: Path, folder: Path, force: bool) -> None:
    if out_dir.resolve() == folder.resolve():
        raise UsageError(f"{out_dir}: is the input's folder; choose another output folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and not force:
        raise UsageError(f"{out_dir}: already exists; pass --force to replace it")
    if not out_dir.parent.is_dir():
        raise UsageError(f"{out_dir}: folder {out_dir.parent} does not exist")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; a folder already there (``force``) is moved aside first
    and deleted only once the new one is in place."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        os.replace(out_dir, old / "previous")
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- planning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    info: TensorInfo
    quantize: bool
    reason: str


def _shards(reader: WeightReader) -> list[tuple[str, list[str]]]:
    """(output file, source tensor names) per file: the shards' own names, or model.safetensors."""
    if isinstance(reader, ShardedReader):
        return [(s, reader.index.names_in(s)) for s in reader.index.shards]
    return [("model.safetensors", [i.name for i in reader.tensor_infos()])]


def _plan(info: TensorInfo, bits: int, group_size: int | None) -> _Plan:
    module, _, leaf = info.name.rpartition(".")
    if leaf != "weight" or len(info.shape) != 2 or info.dtype not in FLOAT_DTYPES:
        return _Plan(info, False, "not a 2-D float weight")
    if _KEEP_FLOAT.search(module):
        return _Plan(info, False, "embedding or output head (kept float by convention)")
    if group_size is not None and info.shape[1] % group_size:
        return _Plan(info, False, f"{info.shape[1]} columns are not a multiple of {group_size}")
    if info.size == 0:
        return _Plan(info, False, "empty")
    return _Plan(info, True, "")


def _out_infos(p: _Plan, bits: int, group_size: int | None, symmetric: bool) -> list[TensorInfo]:
    """The stored tensors for one source tensor, in the order compressed-tensors writes them."""
    if not p.quantize:
        return [p.info]
    m = p.info.name[: -len(".weight")]
    rows, cols = p.info.shape
    n_groups = 1 if group_size is None else cols // group_size
    sdt = _scale_dtype(p.info.dtype)
    out: list[TensorInfo] = []
    if bits == 8:
        out.append(TensorInfo(f"{m}.weight", (rows, cols), "int8"))
    else:
        out.append(TensorInfo(f"{m}.weight_packed", (rows, -(-cols * bits // 32)), "int32"))
    out.append(TensorInfo(f"{m}.weight_scale", (rows, n_groups), sdt))
    if bits != 8:
        out.append(TensorInfo(f"{m}.weight_shape", (2,), "int64"))
    if not symmetric:
        if bits == 8:
            out.append(TensorInfo(f"{m}.weight_zero_point", (rows, n_groups), "int8"))
        else:
            zp_rows = -(-rows * bits // 32)
            out.append(TensorInfo(f"{m}.weight_zero_point", (zp_rows, n_groups), "int32"))
    return out


def _scale_dtype(weight_dtype: str) -> str:
    """Scales in the weight's dtype, as compressed-tensors initialises them (float64 -> float32)."""
    return "float32" if weight_dtype == "float64" else weight_dtype


# ---- quantizing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Quantized:
    codes: np.ndarray  # int8, compressed-tensors' signed codes
    scale: np.ndarray  # in the scale dtype
    zero_point: np.ndarray | None  # int8 signed codes


def quantize_weight(
    x: np.ndarray, bits: int, group_size: int | None, symmetric: bool, scale_dtype: str
) -> _Quantized:
    """Codes and parameters of a 2-D weight on compressed-tensors' grid, chosen by the engine's
    MSE range search; ValueError (NonFiniteError) for NaN/Inf."""
    xf = np.asarray(x).astype(np.float32)
    scheme = "symmetric" if symmetric else "affine"
    gran = "channel" if group_size is None else "group"
    spec = QuantSpec(bits, scheme, gran, 0, group_size or 1, "mse", "float32")
    lo, hi = group_minmax(xf, spec)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError("tensor holds NaN or Inf; no integer grid can represent them")
    lo += np.float32(0)
    hi += np.float32(0)
    sdt = np.dtype(scale_dtype)
    qlo, qhi = code_range(bits, scheme)

    def grid_fn(a: np.ndarray, b: np.ndarray) -> Grid:
        return _grid(a, b, bits, symmetric, sdt)

    rows, cols = xf.shape
    glen = group_len(cols, spec)
    scale = np.zeros(lo.shape, sdt)
    zero = None if symmetric else np.zeros(lo.shape, np.float32)
    codes = np.empty((rows, cols), np.float32)
    for rs in iter_row_chunks(rows, cols):
        grid = grid_fn(*choose_range(xf[rs], lo[rs], hi[rs], spec, grid_fn))
        scale[rs] = grid.scale
        if zero is not None:
            zero[rs] = grid.zero_point
        _, inv, zp = grid.float32()
        for t in iter_col_tiles(cols, glen):
            gs = slice(t.g0, t.g0 + t.k)
            z = None if zp is None else zp[:, gs]
            encode(tile_view(xf, rs, t), inv[:, gs], z, qlo, qhi, out=tile_view(codes, rs, t))
    offset = 0 if symmetric else 1 << (bits - 1)  # affine codes [0, 2^b - 1] -> signed
    signed = (codes - offset).astype(np.int8)
    zp8 = None if zero is None else (zero - offset).astype(np.int8)
    return _Quantized(signed, scale, zp8)


def _grid(lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool, sdt: np.dtype) -> Grid:
    """The grid for ranges [lo, hi] with scales stored in ``sdt`` (rounded up, so the range
    stays covered): the engine's symmetric grid, or an affine one with an integer zero-point."""
    if symmetric:
        g = grid_for_range(lo, hi, QuantSpec(bits, "symmetric", scale_dtype="float32"))
        s = _round_up(g.scale.astype(np.float64), sdt)
        cover = code_range(bits, "symmetric")[1] * s.astype(np.float64)
        return Grid(s, None, (-cover).astype(np.float32), cover.astype(np.float32))
    qmax = 2**bits - 1
    lo64 = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi64 = np.maximum(np.asarray(hi, np.float64), 0.0)
    s = _round_up((hi64 - lo64) / qmax, sdt)
    s64 = s.astype(np.float64)
    z = np.zeros_like(s64)
    np.divide(-lo64, s64, out=z, where=s64 > 0)
    z = np.clip(np.rint(z), 0, qmax)
    return Grid(
        s,
        z.astype(np.float32),
        (-z * s64).astype(np.float32),
        ((qmax - z) * s64).astype(np.float32),
    )


def _round_up(s: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``s`` (float64, >= 0) in ``dt``, never below ``s`` and never a positive value that rounds
    to 0 (so 1/scale stays finite); values beyond ``dt``'s range are clamped to its largest."""
    fi = ml_dtypes.finfo(dt)
    floor = float(fi.smallest_normal)
    s = np.where(s > 0, np.maximum(s, floor), 0.0)
    with np.errstate(over="ignore"):
        st = s.astype(dt)
    low = st.astype(np.float64) < s
    if low.any():
        bits = st.view(np.uint16 if dt.itemsize == 2 else np.uint32)
        bits[low] += 1  # positive floats: the next representable value up
    big = np.isinf(st.astype(np.float64))
    st[big] = fi.max
    return st


# ---- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Written:
    format: str
    tensors: tuple[CTTensor, ...]
    ignore: tuple[str, ...]


def _write(
    reader: WeightReader,
    shards: list[tuple[str, list[str]]],
    folder: Path,
    config: dict[str, Any],
    tmp: Path,
    bits: int,
    group_size: int | None,
    symmetric: bool,
) -> _Written:
    infos = {i.name: i for i in reader.tensor_infos()}
    plans = {n: _plan(i, bits, group_size) for n, i in infos.items()}
    if not any(p.quantize for p in plans.values()):
        raise InputError(
            f"{reader.path}: no 2-D float *.weight tensor to quantize (Linear layers) "
            + (f"with columns divisible by --group-size {group_size}" if group_size else "")
        )
    entries: list[CTTensor] = []
    weight_map: dict[str, str] = {}
    total = 0
    for shard, names in shards:
        out_infos = [o for n in names for o in _out_infos(plans[n], bits, group_size, symmetric)]
        for o in out_infos:
            weight_map[o.name] = shard
            total += o.nbytes
        arrays = _arrays(reader, [plans[n] for n in names], bits, group_size, symmetric, entries)
        write_safetensors(tmp / shard, out_infos, arrays, {"format": "pt"})
    if isinstance(reader, ShardedReader):
        write_index(tmp / ("model" + INDEX_SUFFIX), {"total_size": total}, weight_map)
    fmt = PACKED_FORMAT if bits < 8 else "naive-quantized"
    ignore = tuple(sorted(p.info.name[: -len(".weight")] for p in plans.values() if _ignored(p)))
    doc = dict(config)
    doc["quantization_config"] = _quantization_config(fmt, bits, group_size, symmetric, ignore)
    (tmp / "config.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    outputs = {s for s, _ in shards} | {"config.json", "model" + INDEX_SUFFIX}
    _copy_other_files(reader, folder, tmp, outputs)
    return _Written(fmt, tuple(entries), ignore)


def _ignored(p: _Plan) -> bool:
    """A 2-D weight kept float: a layer the Linear target must not claim."""
    return not p.quantize and p.info.name.endswith(".weight") and len(p.info.shape) == 2


def _arrays(
    reader: WeightReader,
    plans: list[_Plan],
    bits: int,
    group_size: int | None,
    symmetric: bool,
    entries: list[CTTensor],
) -> Iterator[np.ndarray]:
    """The stored arrays of ``plans`` in order, one source tensor in memory at a time."""
    for p in plans:
        name = p.info.name
        x = reader.read(name)
        if not p.quantize:
            entries.append(CTTensor(name, "kept", None, None, p.info.nbytes, None, p.reason))
            yield x
            reader.release(name)
            continue
        try:
            q = quantize_weight(x, bits, group_size, symmetric, _scale_dtype(p.info.dtype))
        except ValueError as exc:
            raise InputError(f"{reader.path}: tensor {name!r}: {exc}") from None
        stats = error_stats(x, decode_weight(q.codes, q.scale, q.zero_point))
        reader.release(name)
        stored = [q.codes if bits == 8 else pack_int32(q.codes, bits), q.scale]
        if bits != 8:
            stored.append(np.asarray(p.info.shape, np.int64))
        if q.zero_point is not None:
            stored.append(q.zero_point if bits == 8 else pack_int32(q.zero_point, bits, dim=0))
        strategy = "channel" if group_size is None else "group"
        nbytes = sum(a.nbytes for a in stored)
        entries.append(CTTensor(name, "quantized", bits, strategy, nbytes, stats))
        yield from stored


def _quantization_config(
    fmt: str, bits: int, group_size: int | None, symmetric: bool, ignore: tuple[str, ...]
) -> dict[str, Any]:
    """``quantization_config`` as compressed-tensors 0.20.1 writes it (keys sorted as it does)."""
    weights = {
        "dynamic": False,
        "group_size": group_size,
        "num_bits": bits,
        "observer": "mse",
        "strategy": "channel" if group_size is None else "group",
        "symmetric": symmetric,
        "type": "int",
    }
    group = {
        "format": fmt,
        "input_activations": None,
        "output_activations": None,
        "targets": ["Linear"],
        "weights": weights,
    }
    return {
        "config_groups": {"group_0": group},
        "format": fmt,
        "global_compression_ratio": None,
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "quant_method": QUANT_METHOD,
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": CT_VERSION,
    }


def _copy_other_files(reader: WeightReader, folder: Path, tmp: Path, outputs: set[str]) -> None:
    """Copy every file of the source folder that is not a weight file read or a file written
    (tokenizer, generation config, README, ...); folders inside are copied whole."""
    weights = {Path(reader.path).name}
    if isinstance(reader, ShardedReader):
        weights |= set(reader.index.shards)
    for src in sorted(folder.iterdir()):
        if src.name in weights or src.name in outputs or src.name.startswith("."):
            continue
        if src.is_dir():
            shutil.copytree(src, tmp / src.name)
        elif src.is_file():
            shutil.copyfile(src, tmp / src.name)


# ---- checking what was written ------------------------------------------------------------------


def _verify(tmp: Path, source: WeightReader, result: _Written) -> None:
    """Reopen the written folder, decode every quantized tensor and recompute its error against
    the source: it must be the error recorded while quantizing (black's assert_equivalent)."""
    with CompressedTensorsReader(tmp) as written:
        for e in result.tensors:
            if e.error is None:
                continue
            got = error_stats(source.read(e.name), written.read(e.name))
            source.release(e.name)
            written.release(e.name)
            if got != e.error:
                raise RuntimeError(f"{e.name}: decoded error {got} differs from {e.error}")
