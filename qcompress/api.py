"""The functions the CLI calls, and Python users too: quantize_file, dequantize_file, inspect.

Each opens its inputs, streams tensors one at a time through the engine, writes its outputs
atomically, and returns plain data (the report, a summary) for the caller to render. Errors a user
can cause are raised as :class:`qcompress.errors.QCompressError` naming the file and tensor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompress import engine
from qcompress.artifact import STATS_COLUMNS, Artifact, ArtifactWriter, build_recipe, is_artifact
from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.engine.spec import ErrorStats, NonFiniteError
from qcompress.errors import InputError, UsageError
from qcompress.formats import format_for_output, open_weights, write_weights
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.policy import FLOAT_DTYPES, QUANTIZED, QuantizeOptions, TensorPlan, plan_tensor
from qcompress.report import build_report, dumps, finite_or_none, sha256_file, tensor_entry

__all__ = [
    "DequantizeResult",
    "QuantizeOptions",
    "QuantizeResult",
    "dequantize_file",
    "inspect",
    "quantize_file",
]

OUTPUT_DTYPES = ("original", "float32", "float16")
ProgressCallback = Callable[
    [str, int], None
]  # (tensor name, its original bytes), after each tensor


@dataclass(frozen=True)
class QuantizeResult:
    artifact: Path
    report_path: Path
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
    """``model.npz`` gives ``model.qc.safetensors`` and ``model.qc.json`` beside it."""
    if output is None:
        output = input_path.with_name(input_path.name.rsplit(".", 1)[0] + ".qc.safetensors")
    if report is None:
        report = output.with_suffix(".json")
    return output, report


def nbytes(info: TensorInfo) -> int:
    return info.size * _dtype(info.dtype).itemsize


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _exact(x: np.ndarray) -> ErrorStats:
    return engine.error_stats(x, x)


def _min_max(x: np.ndarray) -> tuple[float | None, float | None]:
    if x.size == 0 or str(x.dtype) not in FLOAT_DTYPES:
        return None, None
    return float(np.min(x)), float(np.max(x))


def _refuse_artifact(reader: WeightReader) -> None:
    if reader.format == "safetensors" and is_artifact(reader.metadata()):
        raise UsageError(
            f"{reader.path}: is already a qcompress artifact; dequantize it first "
            "(qcompress dequantize ARTIFACT -o model.safetensors)"
        )


def quantize_file(
    input_path: str | Path,
    options: QuantizeOptions | None = None,
    *,
    output: str | Path | None = None,
    report: str | Path | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> QuantizeResult:
    """Quantize a weight file into an artifact plus a JSON report, and return the report."""
    started = time.perf_counter()
    options = options or QuantizeOptions()
    input_path = Path(input_path)
    artifact_path, report_path = default_outputs(
        input_path, Path(output) if output else None, Path(report) if report else None
    )
    with open_weights(input_path) as reader:
        _refuse_artifact(reader)
        plans = [plan_tensor(info, reader.layout, options) for info in reader.tensor_infos()]
        check_outputs([artifact_path, report_path], [input_path], force)
        source = {"format": reader.format, "layout": reader.layout, "metadata": reader.metadata()}
        recipe, stored = build_recipe(plans, source)
        with atomic_outputs([artifact_path, report_path]) as (tmp_artifact, tmp_report):
            with ArtifactWriter(tmp_artifact, recipe, stored) as writer:
                outcomes = [
                    _quantize_one(reader, plan, entry, writer, progress)
                    for plan, entry in zip(plans, recipe["tensors"], strict=True)
                ]
                writer.finish(np.array([_stats_row(s) for _, s in outcomes], dtype=np.float64))
            entries = _confirm(tmp_artifact, artifact_path, outcomes)
            result = build_report(
                input_info={
                    "path": str(input_path),
                    "format": reader.format,
                    "sha256": sha256_file(input_path),
                    "bytes": input_path.stat().st_size,
                },
                artifact_info={
                    "path": str(artifact_path),
                    "sha256": sha256_file(tmp_artifact),
                    "bytes": tmp_artifact.stat().st_size,
                },
                options=options.defaults(),
                entries=entries,
                overall=engine.combine_error_stats(s for _, s in outcomes),
                elapsed=time.perf_counter() - started,
            )
            tmp_report.write_text(dumps(result))
    return QuantizeResult(artifact_path, report_path, result)


def _stats_row(stats: ErrorStats) -> list[float]:
    return [getattr(stats, column) for column in STATS_COLUMNS]


def _quantize_one(
    reader: WeightReader,
    plan: TensorPlan,
    entry: dict[str, Any],
    writer: ArtifactWriter,
    progress: ProgressCallback | None,
) -> tuple[dict[str, Any], ErrorStats]:
    """Quantize (or copy) one tensor into the artifact; return its report entry and error."""
    name = plan.info.name
    x = reader.read(name)
    x_min, x_max = _min_max(x)
    q = None
    if plan.action == QUANTIZED:
        assert plan.spec is not None
        try:
            q = engine.quantize(x, plan.spec)
        except NonFiniteError as e:
            raise InputError(
                f"{reader.path}: tensor {name!r}: {e}; fix the model or keep the tensor in float "
                f"with --keep '{name}'"
            ) from None
        stats = engine.error_stats(x, engine.dequantize(q))
        codes = q.codes if entry["packing"] == "none" else engine.pack_codes(q.codes, q.spec.bits)
        writer.write(entry["codes"], codes)
        writer.write(entry["scale"], q.scale)
        if entry["zero_point"]:
            writer.write(entry["zero_point"], q.zero_point)
    else:
        stats = (
            _exact(x) if plan.info.dtype in FLOAT_DTYPES else ErrorStats(0.0, 0.0, np.inf, 0.0, 0)
        )
        writer.write(entry["stored"], x)
    if progress:
        progress(name, nbytes(plan.info))
    report_entry = tensor_entry(entry, x_min, x_max, q, stats, nbytes(plan.info), 0)
    return report_entry, stats


def _confirm(
    tmp_artifact: Path, artifact_path: Path, outcomes: list[tuple[dict[str, Any], ErrorStats]]
) -> list[dict[str, Any]]:
    """Reopen the written artifact, check every checksum, and fill in the bytes it really stores."""
    with Artifact(tmp_artifact) as art:
        bad = art.verify()
        if bad:
            raise InputError(
                f"{artifact_path}: written artifact failed its own checksum ({bad[0]})"
            )
        entries = []
        for (entry, _), recipe_entry in zip(outcomes, art.entries, strict=True):
            entries.append({**entry, "stored_bytes": art.stored_bytes(recipe_entry)})
    return entries


def _output_dtype(dtype: str, requested: str, fmt: str) -> tuple[str, str | None]:
    """The dtype a tensor is written with, and a note when it differs from what was asked."""
    if dtype not in FLOAT_DTYPES:
        return dtype, None
    if requested != "original":
        return requested, None
    if dtype == "bfloat16" and fmt != "safetensors":
        return "float32", f"bfloat16 tensors written as float32 ({fmt} has no bfloat16)"
    return dtype, None


def dequantize_file(
    artifact_path: str | Path,
    output: str | Path,
    *,
    dtype: str = "original",
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> DequantizeResult:
    """Rebuild a float weight file (npz, h5 or safetensors, by ``output``'s suffix)."""
    if dtype not in OUTPUT_DTYPES:
        raise UsageError(f"--dtype {dtype}: must be one of {', '.join(OUTPUT_DTYPES)}")
    artifact_path, output = Path(artifact_path), Path(output)
    fmt = format_for_output(output)
    with _open_artifact(artifact_path) as art:
        check_outputs([output], [artifact_path], force)
        infos, notes = [], set()
        for e in art.entries:
            out_dtype, note = _output_dtype(e["dtype"], dtype, fmt)
            infos.append(TensorInfo(e["name"], tuple(e["shape"]), out_dtype))
            if note:
                notes.add(note)

        def arrays() -> Iterator[np.ndarray]:
            for e, info in zip(art.entries, infos, strict=True):
                if e["action"] == QUANTIZED:
                    x = engine.dequantize(art.quantized(e))
                else:
                    x = art.stored_tensor(e)
                if str(x.dtype) != info.dtype:
                    x = x.astype(_dtype(info.dtype))
                yield x
                if progress:
                    progress(e["name"], nbytes(info))

        with atomic_outputs([output]) as (tmp,):
            write_weights(tmp, fmt, infos, arrays(), art.recipe["source"]["metadata"])
    return DequantizeResult(output, fmt, len(infos), output.stat().st_size, tuple(sorted(notes)))


def _open_artifact(path: Path) -> Artifact:
    """Open ``path`` as an artifact, with the input checks every reader gets."""
    with open_weights(path) as reader:  # missing, directory, not safetensors: one clear message
        if reader.format != "safetensors" or not is_artifact(reader.metadata()):
            raise InputError(
                f"{path}: not a qcompress artifact (make one with: qcompress quantize MODEL)"
            )
    return Artifact(path)


def inspect(path: str | Path) -> dict[str, Any]:
    """List a weight file's or an artifact's tensors; for artifacts, with bits and error."""
    path = Path(path)
    with open_weights(path) as reader:
        if not (reader.format == "safetensors" and is_artifact(reader.metadata())):
            return _inspect_weights(path, reader)
    return _inspect_artifact(path)


def _inspect_weights(path: Path, reader: WeightReader) -> dict[str, Any]:
    tensors = [
        {
            "name": i.name,
            "shape": list(i.shape),
            "dtype": i.dtype,
            "parameters": i.size,
            "bytes": nbytes(i),
        }
        for i in reader.tensor_infos()
    ]
    return {
        "path": str(path),
        "kind": "weights",
        "format": reader.format,
        "layout": reader.layout,
        "file_bytes": path.stat().st_size,
        "parameters": sum(t["parameters"] for t in tensors),
        "tensors": tensors,
    }


def _inspect_artifact(path: Path) -> dict[str, Any]:
    with Artifact(path) as art:
        stats = art.stats()
        tensors = []
        for e, row in zip(art.entries, stats, strict=True):
            info = TensorInfo(e["name"], tuple(e["shape"]), e["dtype"])
            tensors.append(
                {
                    "name": e["name"],
                    "shape": e["shape"],
                    "dtype": e["dtype"],
                    "parameters": info.size,
                    "bytes": nbytes(info),
                    "action": e["action"],
                    "bits": e.get("bits"),
                    "scheme": e.get("scheme"),
                    "granularity": e.get("granularity"),
                    "axis": e.get("axis"),
                    "group_size": e.get("group_size"),
                    "stored_bytes": art.stored_bytes(e),
                    "mse": float(row[0]),
                    "max_abs_error": float(row[1]),
                    "sqnr_db": finite_or_none(float(row[2])),
                }
            )
        quantized = [t for t in tensors if t["action"] == QUANTIZED]
        q_params = sum(t["parameters"] for t in quantized)
        return {
            "path": str(path),
            "kind": "artifact",
            "format": "safetensors",
            "source_format": art.recipe["source"]["format"],
            "file_bytes": path.stat().st_size,
            "parameters": sum(t["parameters"] for t in tensors),
            "bits_per_weight": (
                8 * sum(t["stored_bytes"] for t in quantized) / q_params if q_params else None
            ),
            "tensors": tensors,
        }
