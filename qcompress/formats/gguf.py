"""GGUF read back (llama.cpp, ComfyUI-GGUF, stable-diffusion.cpp files) with the ``gguf`` package.

So that ``inspect``, ``compare`` and ``dequantize`` take a GGUF file like any weight file: the
tensors are listed from the file's index (memory-mapped, nothing decoded), and ``read`` decodes
one tensor to float32 with ``gguf.quants.dequantize``, the same decoder ComfyUI-GGUF uses.

Shapes: GGUF stores dimensions innermost first (ggml's ``ne``); they are reversed here into numpy
order. A tensor flattened to fit whole blocks carries its real shape in
``comfy.gguf.orig_shape.<name>`` (ComfyUI-GGUF's key, which ``qcompress export`` writes too); it is
read back in that shape. Names are as stored; :func:`source_names` maps llama.cpp names back to
Hugging Face ones with the gguf package's own tensor-name tables.

The ``gguf`` package is optional (``pip install 'qcompress[gguf]'``); without it a GGUF input is a
one-line error, not a traceback.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from qcompress.errors import FormatError, InputError
from qcompress.formats._common import cannot_read, one_line
from qcompress.formats.base import Format, TensorInfo, WeightReader

MAGIC = b"GGUF"
ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."
INSTALL_HINT = "pip install 'qcompress[gguf]'"

# What GGUFReader raises on damaged files: short reads while parsing (ValueError from numpy,
# struct.error, IndexError), bad enum values (ValueError), undecodable strings, impossible sizes.
_READ_ERRORS = (
    ValueError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    UnicodeDecodeError,
    MemoryError,
    AssertionError,
)

_PLAIN_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}


def import_gguf(path: Path | str, purpose: str) -> Any:
    """The ``gguf`` module, or an InputError saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise InputError(f"{path}: {purpose} needs the gguf package: {INSTALL_HINT}") from None
    return gguf


class GgufReader(WeightReader):
    """A GGUF file, memory-mapped; ``read`` decodes one tensor (to float32 if block-quantized)."""

    format = "gguf"
    layout = "pytorch"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        gguf = import_gguf(self.path, "reading a GGUF file")
        self._quants = gguf.quants
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
        except OSError as exc:
            raise cannot_read(self.path, exc) from exc
        except _READ_ERRORS as exc:
            raise FormatError(
                f"{self.path}: truncated or corrupt GGUF file ({one_line(exc)})"
            ) from exc
        self._tensors: dict[str, Any] = {}
        self._infos: list[TensorInfo] = []
        size = self.path.stat().st_size
        for t in self._reader.tensors:
            if t.name in self._tensors:
                raise FormatError(f"{self.path}: tensor {t.name!r} appears twice")
            if int(t.data_offset) + int(t.n_bytes) > size:
                raise FormatError(f"{self.path}: tensor {t.name!r} runs past the end (truncated?)")
            shape = self._orig_shape(t.name) or tuple(int(d) for d in reversed(t.shape.tolist()))
            n = 1
            for d in shape:
                n *= d
            if n != int(t.n_elements):
                raise FormatError(
                    f"{self.path}: tensor {t.name!r}: recorded shape {list(shape)} does not hold "
                    f"its {int(t.n_elements)} values"
                )
            qtype = t.tensor_type.name
            dtype = _PLAIN_DTYPES.get(qtype, "bfloat16" if qtype == "BF16" else "float32")
            self._tensors[t.name] = t
            self._infos.append(TensorInfo(t.name, shape, dtype))

    def _orig_shape(self, name: str) -> tuple[int, ...] | None:
        field = self._reader.get_field(ORIG_SHAPE_KEY + name)
        if field is None:
            return None
        try:
            return tuple(int(field.parts[i][0]) for i in field.data)
        except _READ_ERRORS as exc:
            raise FormatError(
                f"{self.path}: bad {ORIG_SHAPE_KEY}{name} entry ({one_line(exc)})"
            ) from exc

    def gguf_type(self, name: str) -> str:
        """The GGML type ``name`` is stored as (e.g. "Q4_K", "F32")."""
        return self._tensors[name].tensor_type.name

    def read(self, name: str) -> np.ndarray:
        t = self._lookup(self._tensors, name)
        info = next(i for i in self._infos if i.name == name)
        qtype = t.tensor_type.name
        try:
            if qtype in _PLAIN_DTYPES:
                return np.array(t.data).reshape(info.shape)
            with np.errstate(all="ignore"):  # a damaged scale decodes as inf/NaN, not a warning
                values = self._quants.dequantize(np.asarray(t.data), t.tensor_type)
        except NotImplementedError:
            raise InputError(
                f"{self.path}: tensor {name!r} is {qtype}, which the gguf package cannot decode"
            ) from None
        except _READ_ERRORS as exc:
            raise FormatError(
                f"{self.path}: tensor {name!r}: corrupt data ({one_line(exc)})"
            ) from exc
        values = values.reshape(info.shape)
        return values.astype(info.dtype) if info.dtype == "bfloat16" else values

    def metadata(self) -> dict[str, Any]:
        return {"format": "gguf", "architecture": self.architecture()}

    def architecture(self) -> str | None:
        """``general.architecture``, if the file names one."""
        field = self._reader.get_field("general.architecture")
        if field is None:
            return None
        try:
            return bytes(field.parts[field.data[0]]).decode("utf-8")
        except _READ_ERRORS:
            return None

    def close(self) -> None:
        self._tensors.clear()
        self.__dict__.pop("_reader", None)


def source_names(arch: str | None, gguf_names: list[str], n_blocks: int) -> dict[str, list[str]]:
    """GGUF tensor name -> the Hugging Face names it may have come from, for an architecture the
    gguf package's tables know (e.g. "llama": "blk.0.attn_q.weight" ->
    ["model.layers.0.self_attn.q_proj.weight", ...]). Names the tables cannot map (or every
    name, for an unknown architecture) are left out: the caller pairs those by their own name."""
    if not arch:
        return {}
    try:
        import gguf
    except ImportError:
        return {}
    arch_id = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_id is None:
        return {}
    tmap = gguf.get_tensor_name_map(arch_id, n_blocks)
    # TensorNameMap maps each source name -> gguf name; invert it for the names this file holds.
    wanted = set(gguf_names)
    inverse: dict[str, list[str]] = {}
    for src, (_, gguf_name) in tmap.mapping.items():
        for suffix in (".weight", ".bias"):
            if gguf_name + suffix in wanted:
                inverse.setdefault(gguf_name + suffix, []).append(src + suffix)
    return inverse


# Read only: GGUF is written by ``qcompress export``.
FORMAT = Format(name="gguf", label="GGUF", open=GgufReader, layout="pytorch", magics=(MAGIC,))
