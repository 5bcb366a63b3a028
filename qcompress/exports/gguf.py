"""Export to GGUF: a weights-only file that ComfyUI-GGUF, stable-diffusion.cpp and the ``gguf``
package read, with K-quant blocks computed by qcompress (``engine.kquants``).

What each tensor becomes (the result says which rule, per tensor):
- 1-D tensors (biases, norms) stay float (F32, or F16 if stored as float16): GGUF readers keep
  them in float and they cost almost nothing; so do tensors under ``min_elements`` values.
- Other float tensors get the requested type. A block type needs whole blocks per row (32 or
  256 values); a tensor of 3+ dimensions whose rows do not fit but whose size does is flattened
  to ``(size / block, block)`` with its shape in ``comfy.gguf.orig_shape.<name>`` (ComfyUI-GGUF's
  rule and key). Otherwise the tensor *falls back* to the nearest type that fits (Q4_K -> Q4_0,
  Q5_K -> Q5_0, Q6_K -> Q8_0, then F16), and the result names it with the bits it cost;
  ``no_fallback`` makes any fallback an error instead.
- Integer tensors pass through as I8/I16/I32/I64; other dtypes have no GGUF type (error).

``type="auto"`` chooses per tensor among Q4_K, Q5_K, Q6_K and Q8_0 to minimise the total relative
error under ``target_bpw`` (qcompress's allocator, over measured errors: one extra encoding pass).

Input is a weight file (quantized from its floats) or a qcompress artifact (dequantized first,
then encoded: the GGUF error is then measured against the artifact's values, not the original).
Tensors stream one at a time; the file is written to a temporary path, reopened with
``gguf.GGUFReader``, every tensor decoded with ``gguf.quants.dequantize`` and checked to be
bit-identical to the values the error was measured on, and only then renamed into place.
The same input and options give the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompress import engine
from qcompress.artifact.inputs import open_if_artifact
from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.engine import kquants
from qcompress.engine.bit_allocation import BudgetError, ErrorCurve, allocate_bits
from qcompress.errors import InputError, UsageError
from qcompress.formats import open_weights
from qcompress.formats.base import TensorInfo
from qcompress.formats.gguf import ORIG_SHAPE_KEY, import_gguf
from qcompress.report import error_fields

DEFAULT_TYPE = "Q4_K"
DEFAULT_ARCH = "qcompress"
AUTO_CANDIDATES = ("Q4_K", "Q5_K", "Q6_K", "Q8_0")
BITS_TO_TYPE = {4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0"}
TYPES = (*kquants.BLOCK_TYPES, "F16", "F32", "auto")
MIN_ELEMENTS = 1024
FALLBACKS = {"Q4_K": "Q4_0", "Q5_K": "Q5_0", "Q6_K": "Q8_0"}
_INT_TYPES = {"int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64"}
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class TypeChoice:
    """What one source tensor becomes in the GGUF file, and why."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    gguf_type: str
    reason: str
    stored_shape: tuple[int, ...]  # numpy order; differs from shape when flattened
    wanted: str | None = None  # the requested type, when it fell back to another

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return stored_nbytes(self.gguf_type, self.size)


def bits_per_weight(gguf_type: str) -> float:
    """Stored bits per value of a GGUF type (F32 32, F16 16, Q4_K 4.5, ...)."""
    if gguf_type in kquants.BLOCK_TYPES:
        return kquants.BLOCK_TYPES[gguf_type].bits_per_weight
    return 8.0 * {"F32": 4, "F16": 2, "I8": 1, "I16": 2, "I32": 4, "I64": 8}[gguf_type]


def stored_nbytes(gguf_type: str, size: int) -> int:
    if gguf_type in kquants.BLOCK_TYPES:
        t = kquants.BLOCK_TYPES[gguf_type]
        return size // t.block * t.nbytes
    return size * int(bits_per_weight(gguf_type)) // 8


def resolve_type(type_: str | None, bits: int | None, target_bpw: float | None) -> str:
    """The requested GGUF type from ``--type`` / ``--bits`` / ``--target-bpw``."""
    if type_ is not None and bits is not None:
        raise UsageError("--type and --bits both choose the GGUF type; give one of them")
    if bits is not None:
        if bits not in BITS_TO_TYPE:
            raise UsageError(
                f"--bits {bits}: GGUF export supports {sorted(BITS_TO_TYPE)} "
                f"({', '.join(f'{b} -> {t}' for b, t in BITS_TO_TYPE.items())})"
            )
        type_ = BITS_TO_TYPE[bits]
    if type_ is None:
        type_ = "auto" if target_bpw is not None else DEFAULT_TYPE
    canon = type_ if type_ == "auto" else type_.upper()
    if canon not in TYPES:
        raise UsageError(f"--type {type_}: not a GGUF type qcompress writes; use one of {TYPES}")
    if canon == "auto" and target_bpw is None:
        raise UsageError("--type auto needs --target-bpw X (the bits per weight to allocate)")
    if canon != "auto" and target_bpw is not None:
        raise UsageError(
            f"--target-bpw chooses types per tensor; use it with --type auto, not {canon}"
        )
    return canon


def choose_type(info: TensorInfo, wanted: str, min_elements: int = MIN_ELEMENTS) -> TypeChoice:
    """The GGUF type of one tensor for a requested type (see the module docstring)."""
    shape = tuple(info.shape)

    def made(gguf_type: str, reason: str, stored: tuple[int, ...] = shape, **kw: Any) -> TypeChoice:
        return TypeChoice(info.name, shape, info.dtype, gguf_type, reason, stored, **kw)

    if info.dtype in _INT_TYPES:
        return made(_INT_TYPES[info.dtype], "integer tensor, stored as is", shape or (1,))
    if info.dtype not in _FLOAT_DTYPES:
        raise UsageError(
            f"tensor {info.name!r}: dtype {info.dtype} has no GGUF type "
            "(GGUF holds float and signed integer tensors)"
        )
    keep = "F16" if info.dtype == "float16" else "F32"
    if wanted in ("F16", "F32"):
        return made(wanted, f"--type {wanted}")
    if len(shape) == 0:
        return made(keep, "0-d tensor: kept in float, stored as shape [1] (GGUF has no 0-d)", (1,))
    if len(shape) == 1:
        return made(keep, "1-D tensor (bias, norm): kept in float")
    if info.size < min_elements:
        return made(keep, f"fewer than {min_elements} values: kept in float")
    if kquants.fits(wanted, shape[-1]):
        return made(wanted, f"--type {wanted}")
    block = kquants.BLOCK_TYPES[wanted].block
    if len(shape) > 2 and info.size % block == 0:
        return made(
            wanted,
            f"--type {wanted}; rows of {shape[-1]} are not whole blocks of {block}, so stored "
            f"flattened to ({info.size // block}, {block}) with its shape in {ORIG_SHAPE_KEY}*",
            (info.size // block, block),
        )
    fallback = FALLBACKS.get(wanted)
    if fallback is None or not kquants.fits(fallback, shape[-1]):
        fallback = "F16"
    why = f"rows of {shape[-1]} values are not whole {wanted} blocks of {block}"
    return made(fallback, f"fallback from {wanted}: {why}", wanted=wanted)


def _native_choice(p: TypeChoice, codes: dict[str, Any]) -> TypeChoice:
    """An artifact tensor whose codes are IQ4_NL blocks (``iq4nl_native``) is written as them,
    whatever block type was asked for: re-quantizing its values could only add error."""
    if p.name not in codes or p.gguf_type in _INT_TYPES.values() or p.gguf_type == "IQ4_NL":
        return p
    native = choose_type(TensorInfo(p.name, p.shape, p.dtype), "IQ4_NL", 0)
    if native.gguf_type != "IQ4_NL":
        return p
    return TypeChoice(
        p.name,
        p.shape,
        p.dtype,
        "IQ4_NL",
        "codes use the IQ4_NL table in groups of 32: written as IQ4_NL blocks as they are "
        "(scales / 127 rounded to float16)",
        native.stored_shape,
    )


def fallback_cost_bits(p: TypeChoice) -> int:
    """Extra stored bits a fallback cost over the requested type (0 if none)."""
    if p.wanted is None:
        return 0
    return 8 * p.nbytes - round(bits_per_weight(p.wanted) * p.size)


@contextmanager
def _float_source(
    path: Path,
) -> Iterator[tuple[list[TensorInfo], Callable[[str], np.ndarray], str, dict[str, Any]]]:
    """(infos, read, kind, codes) of a weight file or an artifact (dequantized on read);
    ``codes``: the artifact's tensors whose codes GGUF can hold as they are (``iq4nl_native``),
    name -> a function giving their IQ4_NL bytes."""
    art = open_if_artifact(path)
    if art is None:
        with open_weights(path) as reader:
            yield reader.tensor_infos(), reader.read, "weights", {}
        return
    with art:
        entries = {e.name: e for e in art.entries}

        def read(name: str) -> np.ndarray:
            return art.tensor(entries[name])

        def native(entry: Any) -> Callable[[], np.ndarray]:
            return lambda: iq4nl_native_bytes(art.quantized(entry))

        infos = [e.info for e in entries.values()]
        codes = {e.name: native(e) for e in art.entries if iq4nl_native(e)}
        yield infos, read, "artifact", codes


def iq4nl_native(entry: Any) -> bool:
    """Whether an artifact entry's codes are IQ4_NL blocks already: the iq4nl table, groups of
    32 on rows of whole groups along the last axes (axis 0), which GGUF's blocks of 32
    consecutive values then match one for one."""
    s = entry.quantized
    return (
        s is not None
        and s.codebook == "iq4nl"
        and s.granularity == "group"
        and s.group_size == 32
        and s.axis == 0
        and s.cols % 32 == 0
        and len(entry.shape) >= 2
    )


def iq4nl_native_bytes(q: engine.QuantizedTensor) -> np.ndarray:
    """IQ4_NL bytes (rows of 32-value blocks, as GGUF stores the flattened tensor) of a tensor
    whose codes use the iq4nl table: the same indices, each scale / 127 rounded to float16."""
    from qcompress.engine import iq4nl

    idx = (q.codes.astype(np.int16) + 8).astype(np.uint8).reshape(-1, 32)
    return iq4nl.blocks_from_codes(idx, q.scale.reshape(-1))


def _as_float32(name: str, path: Path, x: np.ndarray) -> np.ndarray:
    x32 = np.asarray(x, dtype=np.float32)  # (ascontiguousarray would make a 0-d array 1-d)
    if not np.isfinite(x32).all():
        bad = int(np.size(x32) - np.isfinite(x32).sum())
        raise InputError(
            f"{path}: tensor {name!r} holds {bad} NaN/Inf value(s); cannot quantize it"
        )
    return x32


def encode_tensor(p: TypeChoice, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes to store, decoded float32 values in the tensor's shape) of one tensor, as chosen."""
    if p.gguf_type in _INT_TYPES.values():
        return np.ascontiguousarray(x).reshape(p.stored_shape), x
    if p.gguf_type in ("F32", "F16"):
        stored = np.ascontiguousarray(x, dtype=np.float32 if p.gguf_type == "F32" else np.float16)
        return stored.reshape(p.stored_shape), stored.astype(np.float32).reshape(p.shape)
    data = kquants.encode(x.reshape(p.stored_shape), p.gguf_type)
    return data, kquants.decode(data, p.gguf_type).reshape(p.shape)


def _auto_choices(
    path: Path,
    infos: list[TensorInfo],
    read: Callable[[str], np.ndarray],
    target_bpw: float,
    min_elements: int,
) -> list[TypeChoice]:
    """Per tensor, the candidate of AUTO_CANDIDATES that minimises total relative error under
    ``target_bpw`` (over the quantized tensors; float-kept ones do not count, as in quantize)."""
    choices: list[TypeChoice | None] = []
    curves: list[ErrorCurve] = []
    options: list[list[TypeChoice]] = []
    for info in infos:
        first = choose_type(info, AUTO_CANDIDATES[0], min_elements)
        if first.gguf_type not in kquants.BLOCK_TYPES:
            choices.append(first)
            continue
        x = _as_float32(info.name, path, read(info.name))
        signal = float(np.dot(x.reshape(-1).astype(np.float64), x.reshape(-1).astype(np.float64)))
        cands = [choose_type(info, t, min_elements) for t in AUTO_CANDIDATES]
        errors = []
        for c in cands:
            _, y = encode_tensor(c, x)
            d = (x - y).reshape(-1).astype(np.float64)
            errors.append(float(np.dot(d, d)) / signal if signal > 0 else 0.0)
        curves.append(ErrorCurve.of(info.size, [8 * c.nbytes for c in cands], errors))
        options.append(cands)
        choices.append(None)
    if curves:
        try:
            choice = allocate_bits(curves, target_bpw).choice
        except BudgetError as exc:
            raise UsageError(f"{path}: --target-bpw {target_bpw:g}: {exc}") from None
        picked = iter(cands[k] for cands, k in zip(options, choice, strict=True) if k is not None)
        choices = [p if p is not None else next(picked) for p in choices]
    out = []
    for p in choices:
        assert p is not None
        if p.gguf_type in kquants.BLOCK_TYPES and p.wanted is None:
            p = TypeChoice(
                p.name,
                p.shape,
                p.dtype,
                p.gguf_type,
                f"--type auto --target-bpw {target_bpw:g}: least total error",
                p.stored_shape,
            )
        out.append(p)
    return out


def export_gguf(
    input_path: str | Path,
    output: str | Path,
    *,
    type_: str | None = None,
    bits: int | None = None,
    arch: str = DEFAULT_ARCH,
    target_bpw: float | None = None,
    no_fallback: bool = False,
    force: bool = False,
    min_elements: int = MIN_ELEMENTS,
) -> dict[str, Any]:
    """Write ``input_path`` (weight file or artifact) as a weights-only GGUF at ``output``.

    Returns a JSON-able result: per tensor its GGUF type, the rule that chose it, any fallback
    with the bits it cost, stored bytes and error (mse, max abs error, SQNR dB) against the
    input's float values; totals; and ``verified`` (the file reopened and decoded by gguf).
    """
    input_path, output = Path(input_path), Path(output)
    gguf = import_gguf(output, "GGUF export")
    if not arch or not arch.isprintable():
        raise UsageError(f"--arch {arch!r}: give a non-empty architecture name")
    wanted = resolve_type(type_, bits, target_bpw)
    check_outputs([output], [input_path], force)
    with _float_source(input_path) as (infos, read, kind, codes):
        if wanted == "auto":
            assert target_bpw is not None
            choices = _auto_choices(input_path, infos, read, target_bpw, min_elements)
        else:
            choices = [choose_type(i, wanted, min_elements) for i in infos]
        if wanted not in ("F16", "F32"):
            choices = [_native_choice(p, codes) for p in choices]
        fallbacks = [p for p in choices if p.wanted is not None]
        if no_fallback and fallbacks:
            names = ", ".join(f"{p.name!r} ({p.shape[-1]} per row)" for p in fallbacks[:5])
            more = f" and {len(fallbacks) - 5} more" if len(fallbacks) > 5 else ""
            raise UsageError(
                f"{input_path}: --no-fallback: {len(fallbacks)} tensor(s) do not fit whole "
                f"{fallbacks[0].wanted} blocks: {names}{more}; drop --no-fallback to store them "
                "as the nearest type that fits"
            )
        with atomic_outputs([output]) as (tmp,):
            tensors, digests = _write(gguf, tmp, arch, choices, read, input_path, codes)
            _verify(gguf, tmp, choices, digests)
    return _result(input_path, output, arch, wanted, kind, target_bpw, tensors, choices)


def _write(
    gguf: Any,
    path: Path,
    arch: str,
    choices: list[TypeChoice],
    read: Callable[[str], np.ndarray],
    input_path: Path,
    codes: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    writer = gguf.GGUFWriter(path, arch)
    try:
        for p in choices:
            if p.stored_shape != p.shape and p.shape:  # (0-d tensors: no shape to record)
                writer.add_array(ORIG_SHAPE_KEY + p.name, [int(d) for d in p.shape])
        for p in choices:
            qtype = gguf.GGMLQuantizationType[p.gguf_type]
            if p.gguf_type in kquants.BLOCK_TYPES:
                t = kquants.BLOCK_TYPES[p.gguf_type]
                byte_shape = (*p.stored_shape[:-1], p.stored_shape[-1] // t.block * t.nbytes)
                writer.add_tensor_info(p.name, byte_shape, np.dtype(np.uint8), p.nbytes, qtype)
            else:
                dtype = np.dtype({"F32": np.float32, "F16": np.float16}.get(p.gguf_type, p.dtype))
                writer.add_tensor_info(p.name, p.stored_shape, dtype, p.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        tensors, digests = [], {}
        for p in choices:
            x = read(p.name)
            ref = x if p.gguf_type in _INT_TYPES.values() else _as_float32(p.name, input_path, x)
            if p.gguf_type == "IQ4_NL" and p.name in codes:
                data = codes[p.name]().reshape(*p.stored_shape[:-1], -1)
                decoded = kquants.decode(data, "IQ4_NL").reshape(p.shape)
            else:
                data, decoded = encode_tensor(p, ref)
            writer.write_tensor_data(data)
            digests[p.name] = hashlib.sha256(np.ascontiguousarray(decoded).tobytes()).hexdigest()
            tensors.append(_entry(p, ref, decoded))
            del x, ref, data, decoded
    finally:
        writer.close()
    return tensors, digests


def _entry(p: TypeChoice, x: np.ndarray, decoded: np.ndarray) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": p.name,
        "shape": list(p.shape),
        "dtype": p.dtype,
        "gguf_type": p.gguf_type,
        "reason": p.reason,
        "bits_per_weight": bits_per_weight(p.gguf_type),
        "bytes": p.nbytes,
    }
    if p.stored_shape != p.shape:
        entry["stored_shape"] = list(p.stored_shape)
    if p.wanted is not None:
        entry["fallback"] = {
            "wanted": p.wanted,
            "used": p.gguf_type,
            "extra_bits": fallback_cost_bits(p),
            "extra_bits_per_weight": bits_per_weight(p.gguf_type) - bits_per_weight(p.wanted),
        }
    if x.dtype.kind == "f":
        entry.update(error_fields(engine.error_stats(x, decoded)))
    return entry


def _verify(gguf: Any, path: Path, choices: list[TypeChoice], digests: dict[str, str]) -> None:
    """Reopen the written file with gguf's own reader and decoder; every tensor must decode to
    exactly the values its error was measured on (else the export is not written)."""
    reader = gguf.GGUFReader(path, "r")
    by_name = {t.name: t for t in reader.tensors}
    for p in choices:
        t = by_name.get(p.name)
        if t is None or t.tensor_type.name != p.gguf_type:
            raise InputError(f"{path}: tensor {p.name!r} missing or mistyped after writing")
        if p.gguf_type in _INT_TYPES.values():
            values = np.asarray(t.data)
        else:
            values = np.asarray(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type))
        values = np.ascontiguousarray(values.reshape(p.shape))
        if hashlib.sha256(values.tobytes()).hexdigest() != digests[p.name]:
            raise InputError(
                f"{path}: tensor {p.name!r}: gguf decodes other values than qcompress measured "
                "(a bug: please report it)"
            )
    del reader


def _result(
    input_path: Path,
    output: Path,
    arch: str,
    wanted: str,
    kind: str,
    target_bpw: float | None,
    tensors: list[dict[str, Any]],
    choices: list[TypeChoice],
) -> dict[str, Any]:
    quantized = [p for p in choices if p.gguf_type in kquants.BLOCK_TYPES]
    params = sum(p.size for p in quantized)
    qbytes = sum(p.nbytes for p in quantized)
    fallbacks = [t for t in tensors if "fallback" in t]
    sse = sum(t["mse"] * int(np.prod(t["shape"])) for t in tensors if t.get("mse") is not None)
    return {
        "input": str(input_path),
        "input_kind": kind,
        "note": (
            "input is a qcompress artifact: dequantized, then encoded; errors are against the "
            "artifact's values"
            if kind == "artifact"
            else None
        ),
        "output": str(output),
        "format": "gguf",
        "architecture": arch,
        "type": wanted,
        "target_bpw": target_bpw,
        "verified": True,
        "totals": {
            "tensors": len(tensors),
            "parameters": sum(p.size for p in choices),
            "bytes": output.stat().st_size,
            "quantized_parameters": params,
            "quantized_bits_per_weight": 8 * qbytes / params if params else None,
            "sum_squared_error": sse,
            "fallbacks": len(fallbacks),
            "fallback_extra_bits": sum(t["fallback"]["extra_bits"] for t in fallbacks),
        },
        "fallbacks": [
            {"name": t["name"], **t["fallback"], "reason": t["reason"]} for t in fallbacks
        ],
        "tensors": tensors,
    }
