"""The functions the CLI calls, and Python users too: quantize_file, dequantize_file, inspect.

Each opens its inputs, streams tensors one at a time through the engine, writes its outputs
atomically, and returns plain data (the report, a summary) for the caller to render. Errors a user
can cause are raised as :class:`qcompress.errors.QCompressError` naming the file and tensor.
"""

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
from qcompress.atomic import Terminated as Terminated
from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.checks.gates import METRICS as METRICS
from qcompress.checks.gates import build_gates as build_gates
from qcompress.checks.gates import shown as shown
from qcompress.config import DEFAULT_BITS as DEFAULT_BITS
from qcompress.config import DEFAULT_MIN_ELEMENTS as DEFAULT_MIN_ELEMENTS
from qcompress.config import OPTIMIZER_GLOBS as OPTIMIZER_GLOBS
from qcompress.config import QuantizeOptions
from qcompress.engine.spec import BITS as BITS
from qcompress.engine.spec import GRANULARITIES as GRANULARITIES
from qcompress.engine.spec import RANGE_METHODS as RANGE_METHODS
from qcompress.engine.spec import SCALE_BITS as SCALE_BITS
from qcompress.engine.spec import SCALE_DTYPES as SCALE_DTYPES
from qcompress.engine.spec import SCHEMES as SCHEMES
from qcompress.errors import UsageError
from qcompress.formats import companion_outputs, format_for_output, open_weights, write_weights
from qcompress.formats._common import to_dtype
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.formats.sharded import INDEX_SUFFIX, find_index, read_index, write_index
from qcompress.malloc import keep_freed_memory as keep_freed_memory

if TYPE_CHECKING:  # the workflow modules load in the functions that run them: start-up stays small
    from qcompress.checks.gates import Gate
    from qcompress.quantize.pipeline import Progress
    from qcompress.quantize.plan_file import Plan

__all__ = [
    "DequantizeResult",
    "QuantizeOptions",
    "QuantizeResult",
    "compare",
    "dequantize_file",
    "export",
    "inspect",
    "load_plan",
    "quantize_file",
    "verify",
]

DECODED_ON_READ = ("gguf", "compressed-tensors")  # weight files dequantize accepts
OUTPUT_DTYPES = ("original", "float32", "float16")


@dataclass(frozen=True)
class QuantizeResult:
    """The artifact (for a share of a sharded checkpoint's shards: the output folder), the
    report's path (None for such a share) and the report itself."""

    artifact: Path
    report_path: Path | None
    report: dict[str, Any]


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


def default_outputs(
    input_path: Path, output: Path | None, report: Path | None
) -> tuple[Path, Path]:
    """``model.npz`` gives ``model.qc.safetensors`` and ``model.qc.json`` beside it.

    An artifact is a safetensors file whatever it is called, so a ``-o`` ending in anything but
    ``.safetensors`` (``out.npz``, ``out.h5``, no suffix) would give a file that lies about its
    format: refused, as ``dequantize`` is the command that writes other formats."""
    if output is None:
        output = input_path.with_name(input_path.name.rsplit(".", 1)[0] + ".qc.safetensors")
    elif output.suffix.lower() != ".safetensors":
        raise UsageError(
            f"{output}: an artifact is a safetensors file; give a path ending in .safetensors "
            "(to write other formats, run qcompress dequantize ARTIFACT -o OUTPUT)"
        )
    if report is None:
        report = output.with_suffix(".json")
    return output, report


def quantize_file(
    input_path: str | Path,
    options: QuantizeOptions | None = None,
    *,
    output: str | Path | None = None,
    report: str | Path | None = None,
    force: bool = False,
    jobs: int | None = None,
    shard: str | None = None,
    merge: bool = False,
    progress: Progress | None = None,
) -> QuantizeResult:
    """Quantize a weight file (or a sharded checkpoint) into an artifact plus a JSON report.

    For a sharded checkpoint ``output`` is a folder (default: the checkpoint's own), ``shard``
    ("K/N") quantizes only every N-th shard starting at the K-th, and ``merge`` only joins the
    shards' reports into the index and the checkpoint's report.
    """
    from qcompress.quantize.pipeline import default_jobs, quantize_single
    from qcompress.quantize.sharded import quantize_sharded

    options = options or QuantizeOptions()
    input_path = Path(input_path)
    jobs = jobs or default_jobs()
    index_path = find_index(input_path)
    if index_path is not None:
        done = quantize_sharded(
            read_index(index_path),
            options,
            output=Path(output) if output else None,
            report=Path(report) if report else None,
            force=force,
            jobs=jobs,
            shard=shard,
            merge=merge,
            progress=progress,
        )
        return QuantizeResult(done.artifact, done.report_path, done.report)
    if shard or merge:
        raise UsageError(f"{input_path}: --shard and --merge need a sharded checkpoint's index")
    artifact_path, report_path = default_outputs(
        input_path, Path(output) if output else None, Path(report) if report else None
    )
    with open_weights(input_path) as reader:
        result = quantize_single(
            reader, artifact_path, report_path, options, force=force, jobs=jobs, progress=progress
        )
    return QuantizeResult(artifact_path, report_path, result)


def _output_dtype(dtype: str, requested: str, fmt: str) -> tuple[str, str | None]:
    """The dtype a tensor is written with, and a note when it differs from what was asked."""
    if dtype not in FLOAT_DTYPES:
        return dtype, None
    if requested != "original":
        return requested, None
    if dtype == "bfloat16" and fmt not in ("safetensors", "onnx"):
        return "float32", f"bfloat16 tensors written as float32 ({fmt} has no bfloat16)"
    return dtype, None


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


def inspect(path: str | Path) -> dict[str, Any]:
    """List a weight file's or an artifact's tensors; for artifacts, with bits and error."""
    from qcompress.inspect import inspect as run

    return run(path)


def verify(
    artifact_path: str | Path, *, against: str | Path | None = None, gates: list[Gate] | None = None
) -> dict[str, Any]:
    """Check an artifact's structure and checksums and, against gates, each tensor's error.

    Without ``against`` the errors are those recorded at quantization; with it they are recomputed
    from the original file. ``result["passed"]`` is False when a checksum or a gate failed.
    """
    from qcompress.checks.verify import verify as run

    return run(artifact_path, against=against, gates=gates)


def compare(a: str | Path, b: str | Path, *, gates: list[Gate] | None = None) -> dict[str, Any]:
    """Per-tensor error of B against A (any formats, artifacts dequantized), checked by gates."""
    from qcompress.checks.compare import compare as run

    return run(a, b, gates=gates)


def load_plan(path: str | Path) -> Plan:
    """PLAN.toml parsed and checked (:mod:`qcompress.quantize.plan_file`)."""
    from qcompress.quantize.plan_file import load_plan as run

    return run(path)


def export(
    input_path: str | Path,
    output: str | Path,
    *,
    to: str,
    type_: str | None = None,
    bits: int | None = None,
    arch: str | None = None,
    target_bpw: float | None = None,
    no_fallback: bool = False,
    group_size: int | None = None,
    symmetric: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export a weight file or an artifact for another runtime: ``to="gguf"`` writes one GGUF
    file (K-quants computed by qcompress), ``to="compressed-tensors"`` a checkpoint folder.
    Options that the chosen format does not take are a UsageError, not silently ignored."""
    from qcompress.exports import export as run_export

    if to == "gguf":
        unused = {"--group-size": group_size, "--scheme": symmetric}
        bad = [k for k, v in unused.items() if v is not None]
        if bad:
            raise UsageError(f"{', '.join(bad)}: not used by --to gguf (the GGUF type fixes them)")
        options: dict[str, Any] = {
            "type_": type_,
            "bits": bits,
            "target_bpw": target_bpw,
            "no_fallback": no_fallback,
            "force": force,
        }
        if arch is not None:
            options["arch"] = arch
        return run_export(input_path, output, to="gguf", **options)
    if to == "compressed-tensors":
        unused = {"--type": type_, "--arch": arch, "--target-bpw": target_bpw}
        bad = [k for k, v in unused.items() if v is not None] + (
            ["--no-fallback"] if no_fallback else []
        )
        if bad:
            raise UsageError(f"{', '.join(bad)}: only used by --to gguf")
        given = {"bits": bits, "group_size": group_size, "symmetric": symmetric}
        options = {k: v for k, v in given.items() if v is not None}
        return run_export(input_path, output, to=to, force=force, **options)
    return run_export(input_path, output, to=to)
