"""The functions the CLI calls, and Python users too: quantize_file, dequantize_file, inspect.

Each opens its inputs, streams tensors one at a time through the engine, writes its outputs
atomically, and returns plain data (the report, a summary) for the caller to render. Errors a user
can cause are raised as :class:`qcompress.errors.QCompressError` naming the file and tensor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompress import engine
from qcompress.artifact import (
    STATS_COLUMNS,
    STATS_TENSOR,
    Artifact,
    ArtifactWriter,
    build_recipe,
    is_artifact,
)
from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.errors import InputError, UsageError
from qcompress.formats import DTYPE_CODES, format_for_output, open_weights, write_weights
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.gates import Gate, failed_gates
from qcompress.pipeline import Progress, default_jobs, stream_quantize
from qcompress.policy import FLOAT_DTYPES, QUANTIZED, QuantizeOptions, plan_tensor
from qcompress.report import (
    build_report,
    dumps,
    error_fields,
    finite_or_none,
    sha256_file,
)

__all__ = [
    "DequantizeResult",
    "QuantizeOptions",
    "QuantizeResult",
    "compare",
    "dequantize_file",
    "inspect",
    "quantize_file",
    "verify",
]

OUTPUT_DTYPES = ("original", "float32", "float16")


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


def _refuse_artifact(reader: WeightReader) -> None:
    if reader.format == "safetensors" and is_artifact(reader.metadata()):
        raise UsageError(
            f"{reader.path}: is already a qcompress artifact; dequantize it first "
            "(qcompress dequantize ARTIFACT -o model.safetensors)"
        )


def _check_storable(path: Path, infos: list[TensorInfo]) -> None:
    """Every tensor must fit in a safetensors artifact (strings and objects do not)."""
    for info in infos:
        if info.dtype not in DTYPE_CODES:
            raise InputError(
                f"{path}: tensor {info.name!r} has dtype {info.dtype}, which a safetensors "
                "artifact cannot hold; remove it from the model first"
            )


def quantize_file(
    input_path: str | Path,
    options: QuantizeOptions | None = None,
    *,
    output: str | Path | None = None,
    report: str | Path | None = None,
    force: bool = False,
    jobs: int | None = None,
    progress: Progress | None = None,
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
        infos = reader.tensor_infos()
        _check_storable(reader.path, infos)
        plans = [plan_tensor(info, reader.layout, options) for info in infos]
        check_outputs([artifact_path, report_path], [input_path], force)
        source = {"format": reader.format, "layout": reader.layout, "metadata": reader.metadata()}
        recipe, stored = build_recipe(plans, source)
        if progress:
            progress.start(len(plans), sum(p.info.nbytes for p in plans))
        with atomic_outputs([artifact_path, report_path]) as (tmp_artifact, tmp_report):
            with ArtifactWriter(tmp_artifact, recipe, stored) as writer:
                results = stream_quantize(
                    reader,
                    plans,
                    recipe["tensors"],
                    writer,
                    jobs=jobs or default_jobs(),
                    progress=progress,
                )
            entries = _confirm(tmp_artifact, artifact_path, [r.report for r in results])
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
                overall=engine.combine_error_stats(r.stats for r in results),
                elapsed=time.perf_counter() - started,
            )
            tmp_report.write_text(dumps(result))
    return QuantizeResult(artifact_path, report_path, result)


def _confirm(
    tmp_artifact: Path, artifact_path: Path, reports: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Reopen the written artifact, check every checksum, and fill in the bytes it really stores."""
    with Artifact(tmp_artifact) as art:
        bad = art.verify()
        if bad:
            raise InputError(
                f"{artifact_path}: written artifact failed its own checksum ({bad[0]})"
            )
        entries = []
        for entry, recipe_entry in zip(reports, art.entries, strict=True):
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
    progress: Progress | None = None,
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
                    x = x.astype(info.dtype)
                yield x
                if progress:
                    progress.advance(e["name"], info.nbytes)

        if progress:
            progress.start(len(infos), sum(i.nbytes for i in infos))
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
            "bytes": i.nbytes,
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
                    "bytes": info.nbytes,
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


class _FloatTensors:
    """Any weight file or artifact as named tensors; artifacts are dequantized on read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader = open_weights(path)
        self._artifact: Artifact | None = None
        self._entries: dict[str, dict[str, Any]] = {}
        if self._reader.format == "safetensors" and is_artifact(self._reader.metadata()):
            self._reader.close()
            self._artifact = Artifact(path)
            self._entries = {e["name"]: e for e in self._artifact.entries}

    def infos(self) -> list[TensorInfo]:
        if self._artifact is None:
            return self._reader.tensor_infos()
        return [TensorInfo(n, tuple(e["shape"]), e["dtype"]) for n, e in self._entries.items()]

    def read(self, name: str) -> np.ndarray:
        if self._artifact is None:
            return self._reader.read(name)
        entry = self._entries[name]
        if entry["action"] == QUANTIZED:
            return engine.dequantize(self._artifact.quantized(entry))
        return self._artifact.stored_tensor(entry)

    def close(self) -> None:
        (self._artifact or self._reader).close()

    def __enter__(self) -> _FloatTensors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _errors(reference: np.ndarray, other: np.ndarray) -> dict[str, float | None]:
    if str(reference.dtype) not in FLOAT_DTYPES or str(other.dtype) not in FLOAT_DTYPES:
        reference, other = reference.astype(np.float64), other.astype(np.float64)
    return error_fields(engine.error_stats(reference, other))


def verify(
    artifact_path: str | Path, *, against: str | Path | None = None, gates: list[Gate] | None = None
) -> dict[str, Any]:
    """Check an artifact's structure and checksums and, against gates, each tensor's error.

    Without ``against`` the errors are those recorded at quantization; with it they are recomputed
    from the original file. ``result["passed"]`` is False when a checksum or a gate failed.
    """
    artifact_path = Path(artifact_path)
    gates = gates or []
    with _open_artifact(artifact_path) as art:
        bad = set(art.verify())
        stats = None if STATS_TENSOR in bad else art.stats()
        original = _FloatTensors(Path(against)) if against is not None else None
        try:
            if original is not None:
                _check_same_tensors(original, artifact_path, [(e["name"], e) for e in art.entries])
            tensors = []
            for i, e in enumerate(art.entries):
                corrupt = sorted(bad & set(_stored_names(e)))
                if corrupt:
                    errors: dict[str, float | None] = dict.fromkeys(STATS_COLUMNS)
                elif original is not None:
                    rebuilt = (
                        engine.dequantize(art.quantized(e))
                        if e["action"] == QUANTIZED
                        else art.stored_tensor(e)
                    )
                    errors = _errors(original.read(e["name"]), rebuilt)
                elif stats is not None:
                    errors = dict(zip(STATS_COLUMNS, map(float, stats[i]), strict=True))
                    errors["sqnr_db"] = finite_or_none(errors["sqnr_db"] or 0.0)
                else:
                    errors = dict.fromkeys(STATS_COLUMNS)
                failed = [f"checksum of {n}" for n in corrupt]
                if errors["mse"] is not None:
                    failed += failed_gates(e["name"], errors, gates)
                tensors.append(
                    {
                        "name": e["name"],
                        "action": e["action"],
                        "bits": e.get("bits"),
                        **errors,
                        "failed": failed,
                    }
                )
        finally:
            if original is not None:
                original.close()
    failures = [t["name"] for t in tensors if t["failed"]]
    other_bad = sorted(bad - {n for e in art.entries for n in _stored_names(e)})
    return {
        "artifact": str(artifact_path),
        "against": None if against is None else str(against),
        "passed": not failures and not other_bad,
        "checksums": {"checked": len(art.entries), "failed": sorted(bad)},
        "gates": [g.describe() for g in gates],
        "failures": failures + [f"checksum of {n}" for n in other_bad],
        "tensors": tensors,
    }


def _stored_names(entry: dict[str, Any]) -> list[str]:
    keys = ("codes", "scale", "zero_point", "stored")
    return [entry[k] for k in keys if entry.get(k)]


def _check_same_tensors(
    reference: _FloatTensors, other_path: Path, others: list[tuple[str, Any]]
) -> dict[str, TensorInfo]:
    """The reference's infos by name, after checking both sides hold the same names and shapes."""
    ref = {i.name: i for i in reference.infos()}
    names = [n for n, _ in others]
    missing = [n for n in ref if n not in set(names)]
    extra = [n for n in names if n not in ref]
    if missing:
        raise InputError(
            f"{other_path}: lacks {len(missing)} tensor(s) that {reference.path} has: "
            + ", ".join(repr(n) for n in missing[:3])
        )
    if extra:
        raise InputError(
            f"{other_path}: has {len(extra)} tensor(s) that {reference.path} lacks: "
            + ", ".join(repr(n) for n in extra[:3])
        )
    for name, other in others:
        shape = tuple(other["shape"]) if isinstance(other, dict) else other.shape
        if tuple(shape) != ref[name].shape:
            raise InputError(
                f"{other_path}: tensor {name!r} has shape {list(shape)} but "
                f"{reference.path} has {list(ref[name].shape)}"
            )
    return ref


def compare(a: str | Path, b: str | Path, *, gates: list[Gate] | None = None) -> dict[str, Any]:
    """Per-tensor error of B against A (any formats, artifacts dequantized), checked by gates."""
    a, b = Path(a), Path(b)
    gates = gates or []
    with _FloatTensors(a) as ref, _FloatTensors(b) as other:
        _check_same_tensors(ref, b, [(i.name, i) for i in other.infos()])
        tensors = []
        for info in ref.infos():
            errors = _errors(ref.read(info.name), other.read(info.name))
            failed = failed_gates(info.name, errors, gates)
            tensors.append(
                {"name": info.name, "shape": list(info.shape), **errors, "failed": failed}
            )
    failures = [t["name"] for t in tensors if t["failed"]]
    return {
        "a": str(a),
        "b": str(b),
        "passed": not failures,
        "gates": [g.describe() for g in gates],
        "failures": failures,
        "tensors": tensors,
    }
