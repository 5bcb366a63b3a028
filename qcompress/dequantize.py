"""``dequantize``: an artifact (or a GGUF file, a compressed-tensors checkpoint) rebuilt as a
float weight file: npz, h5 or safetensors by the output's suffix, or, for a sharded artifact,
shards mirroring the original checkpoint. Streams one tensor at a time; writes atomically."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qcompress.artifact.inputs import not_an_artifact, open_input
from qcompress.artifact.reader import Artifact
from qcompress.artifact.recipe import ARTIFACT_SUFFIX, FLOAT_DTYPES, TensorRecipe
from qcompress.artifact.sharded import ShardedArtifact
from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.errors import UsageError
from qcompress.formats import companion_outputs, format_for_output, write_weights
from qcompress.formats._common import to_dtype
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.formats.sharded import INDEX_SUFFIX, write_index
from qcompress.malloc import paused_gc

if TYPE_CHECKING:
    from qcompress.quantize.pipeline import Progress

DECODED_ON_READ = ("gguf", "compressed-tensors")  # weight files dequantize accepts
OUTPUT_DTYPES = ("original", "float32", "float16")


@dataclass(frozen=True)
class DequantizeResult:
    output: Path
    format: str
    tensors: int
    bytes: int
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "format": self.format,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "notes": list(self.notes),
        }


def _output_dtype(dtype: str, requested: str, fmt: str) -> tuple[str, str | None]:
    """The dtype a tensor is written with, and a note when it differs from what was asked."""
    if dtype not in FLOAT_DTYPES:
        return dtype, None
    if requested != "original":
        return requested, None
    if dtype == "bfloat16" and fmt not in ("safetensors", "onnx"):
        return "float32", f"bfloat16 tensors written as float32 ({fmt} has no bfloat16)"
    return dtype, None


@paused_gc()
def dequantize_file(
    artifact_path: str | Path,
    output: str | Path,
    *,
    dtype: str = "original",
    force: bool = False,
    progress: Progress | None = None,
) -> DequantizeResult:
    """Rebuild a float weight file (npz, h5 or safetensors, by ``output``'s suffix).

    A sharded artifact rebuilds into one file, or, when ``output`` is a
    ``*.safetensors.index.json``, into shards that mirror the original checkpoint.
    """
    if dtype not in OUTPUT_DTYPES:
        raise UsageError(f"--dtype {dtype}: must be one of {', '.join(OUTPUT_DTYPES)}")
    artifact_path, output = Path(artifact_path), Path(output)
    sharded_output = output.name.endswith(INDEX_SUFFIX)
    fmt = "safetensors" if sharded_output else format_for_output(output)
    opened = open_input(artifact_path)
    if isinstance(opened, WeightReader):  # not an artifact: fine if its reader decodes on read
        with opened:
            if not sharded_output and opened.format in DECODED_ON_READ:
                return _dequantize_weights(opened, output, fmt, dtype, force, progress)
        raise not_an_artifact(artifact_path)
    with opened as art:
        if sharded_output:
            if not isinstance(art, ShardedArtifact):
                raise UsageError(f"{output}: a sharded output needs a sharded artifact")
            parts = [
                (shard.entries, output.parent / _float_shard_name(shard.path), shard.source)
                for shard in art.shards
            ]
        else:
            parts = [(art.entries, output, art.source)]
        outputs = [path for _, path, _ in parts] + ([output] if sharded_output else [])
        side = [] if sharded_output else companion_outputs(output, fmt, art.source["metadata"])
        outputs += side  # an ONNX model's external-data file, placed with it
        check_outputs(outputs, [artifact_path], force)
        if progress:
            progress.start(
                len(art.entries),
                sum(e.info.nbytes for e in art.entries),
            )
        notes: set[str] = set()
        with atomic_outputs(outputs, force) as temps:
            side_temps = dict(zip(side, temps[len(temps) - len(side) :], strict=True))
            for (entries, _, source), tmp in zip(parts, temps, strict=False):
                notes |= _write_float(art, entries, tmp, fmt, dtype, source, progress, side_temps)
            if sharded_output:
                assert isinstance(art, ShardedArtifact)
                weight_map = {e.name: path.name for entries, path, _ in parts for e in entries}
                write_index(temps[-1], art.source_index.get("metadata") or {}, weight_map)
    return DequantizeResult(
        output, fmt, len(art.entries), sum(p.stat().st_size for p in outputs), tuple(sorted(notes))
    )


def _dequantize_weights(
    reader: WeightReader,
    output: Path,
    fmt: str,
    dtype: str,
    force: bool,
    progress: Progress | None,
) -> DequantizeResult:
    """A float file from weights that decode on read (GGUF, a compressed-tensors checkpoint)."""
    path = reader.path
    check_outputs([output], [path], force)
    infos, notes = [], set()
    for i in reader.tensor_infos():
        out_dtype, note = _output_dtype(i.dtype, dtype, fmt)
        infos.append(TensorInfo(i.name, i.shape, out_dtype))
        if note:
            notes.add(note)
    if progress:
        progress.start(len(infos), sum(i.nbytes for i in infos))

    def arrays() -> Iterator[np.ndarray]:
        for info in infos:
            x = reader.read(info.name)
            yield x if str(x.dtype) == info.dtype else _narrow(x, info, path, dtype)
            reader.release(info.name)
            if progress:
                progress.advance(info.name, info.nbytes)

    with atomic_outputs([output]) as (tmp,):
        write_weights(tmp, fmt, infos, arrays())
    return DequantizeResult(output, fmt, len(infos), output.stat().st_size, tuple(sorted(notes)))


def _float_shard_name(artifact_shard: Path) -> str:
    """``model-00001-of-00002.qc.safetensors`` rebuilds as ``model-00001-of-00002.safetensors``."""
    name = artifact_shard.name
    stem = name[: -len(ARTIFACT_SUFFIX)] if name.endswith(ARTIFACT_SUFFIX) else artifact_shard.stem
    return stem + ".safetensors"


def _write_float(
    art: Artifact | ShardedArtifact,
    entries: list[TensorRecipe],
    path: Path,
    fmt: str,
    dtype: str,
    source: dict[str, Any],
    progress: Progress | None,
    companions: dict[Path, Path] | None = None,
) -> set[str]:
    """Dequantize ``entries`` into one float file; the notes on dtypes that had to change."""
    infos, notes = [], set()
    for e in entries:
        out_dtype, note = _output_dtype(e.dtype, dtype, fmt)
        infos.append(TensorInfo(e.name, e.shape, out_dtype))
        if note:
            notes.add(note)

    def arrays() -> Iterator[np.ndarray]:
        for e, info in zip(entries, infos, strict=True):
            x = art.tensor(e)
            yield x if str(x.dtype) == info.dtype else _narrow(x, info, path, dtype)
            art.release(e)
            if progress:
                progress.advance(e.name, info.nbytes)

    write_weights(path, fmt, infos, arrays(), source["metadata"], companions)
    if fmt == "onnx" and source["metadata"].get("format") != "onnx":
        notes.add("no ONNX graph in the source: wrote the weights only (initializers, no nodes)")
    return notes


def _narrow(x: np.ndarray, info: TensorInfo, path: Path, requested: str) -> np.ndarray:
    """``x`` cast to ``info.dtype``; a UsageError if a finite value would become Inf there
    (float16 tops out at 65504), so no file ever holds Inf the model did not have."""
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(to_dtype(info.dtype))
    if y.dtype.kind == "f" and x.dtype.kind == "f" and y.size:
        became_inf = np.isinf(y) & np.isfinite(x)
        if became_inf.any():
            peak = float(np.max(np.abs(x[np.isfinite(x)])))
            fix = "--dtype float32" if requested == "original" else "--dtype float32 or original"
            raise UsageError(
                f"{path}: tensor {info.name!r} has values up to |{peak:.6g}|, beyond the range "
                f"of {info.dtype} (max {float(np.finfo(y.dtype).max):.6g}), where they would "
                f"become Inf; use {fix}"
            )
    return y
