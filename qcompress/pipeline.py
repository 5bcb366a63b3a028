"""The streaming loop behind ``quantize``: read a tensor, quantize it, append it to the artifact.

``quantize_single`` turns one weight file into an artifact and its report.

The main thread reads tensors in file order and writes results in the same order; worker threads
do the numeric work (numpy and the compiled kernels release the GIL), at most ``jobs`` tensors in
flight, or, with fewer tensors than ``jobs``, one tensor at a time with its rows split over the
threads. Every tensor's result depends only on that tensor (and the engine's row chunks only on
its shape), so the artifact is byte-identical for any ``jobs``; memory grows with ``jobs`` times
the largest tensor, never with the model.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qcompress import engine
from qcompress.artifact import (
    STATS_COLUMNS,
    Artifact,
    ArtifactWriter,
    build_recipe,
    is_artifact,
    quantized_arrays,
)
from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.engine.spec import ErrorStats, NonFiniteError
from qcompress.errors import InputError, UsageError
from qcompress.formats import DTYPE_CODES
from qcompress.formats._common import dtype_name
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.mixed import decide_plans
from qcompress.policy import FLOAT_DTYPES, QUANTIZED, QuantizeOptions, TensorPlan, plan_tensor
from qcompress.report import build_report, dumps, sha256_file, tensor_entry

EXACT = ErrorStats(0.0, 0.0, float("inf"), 0.0, 0)  # kept or passed through: no error


class Progress(Protocol):
    """What a caller may pass to follow a long command: told the total, then each tensor done."""

    def start(self, tensors: int, total_bytes: int) -> None: ...

    def advance(self, name: str, nbytes: int) -> None: ...


def default_jobs() -> int:
    """All the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TensorResult:
    """One tensor, done: the stored tensors to append (in order), its report entry, its error."""

    stored: list[tuple[str, np.ndarray]]
    report: dict[str, Any]
    stats: ErrorStats


def min_max(x: np.ndarray) -> tuple[float | None, float | None]:
    """The finite extremes of a float tensor (a kept tensor may hold NaN or Inf)."""
    if x.size == 0 or dtype_name(x.dtype) not in FLOAT_DTYPES:
        return None, None
    x = x.astype(np.float32, copy=False)
    finite_mask = np.isfinite(x)
    finite = x if finite_mask.all() else x[finite_mask]
    if finite.size == 0:
        return None, None
    return float(finite.min()), float(finite.max())


def quantize_one(
    path: object, plan: TensorPlan, entry: dict[str, Any], x: np.ndarray, *, threads: int = 1
) -> TensorResult:
    """Quantize (or keep) one tensor: the arrays the artifact stores for it, and its error.

    ``threads`` > 1 splits a large tensor's rows over threads; the bytes do not depend on it."""
    name = plan.info.name
    if plan.action != QUANTIZED:
        x_min, x_max = min_max(x)
        report = tensor_entry(entry, x_min, x_max, None, EXACT, plan.info.nbytes, 0)
        return TensorResult([(entry["stored"], x)], report, EXACT)
    assert plan.spec is not None
    try:
        # Fused: the error is measured tile by tile while the codes are in cache, rather than
        # by a second pass over a dequantized copy of the tensor.
        q, stats = engine.quantize_with_error(x, plan.spec, threads=threads)
    except NonFiniteError as e:
        raise InputError(
            f"{path}: tensor {name!r}: {e}; fix the model or keep the tensor in float "
            f"with --keep '{name}'"
        ) from None
    # Quantized means finite (checked by the engine), so no NaN mask: plain min and max.
    x_min, x_max = (float(x.min()), float(x.max())) if x.size else (None, None)
    stored = quantized_arrays(entry, q)
    report = tensor_entry(entry, x_min, x_max, q, stats, plan.info.nbytes, 0)
    return TensorResult(stored, report, stats)


def stream_quantize(
    reader: WeightReader,
    plans: list[TensorPlan],
    entries: list[dict[str, Any]],
    writer: ArtifactWriter,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
) -> list[TensorResult]:
    """Quantize every planned tensor into ``writer`` in order; finish the artifact."""
    results: list[TensorResult] = []

    def finish(plan: TensorPlan, result: TensorResult) -> None:
        for stored_name, array in result.stored:
            writer.write(stored_name, array)
        reader.release(plan.info.name)
        results.append(TensorResult([], result.report, result.stats))  # the arrays can go
        if progress:
            progress.advance(plan.info.name, plan.info.nbytes)

    work = zip(plans, entries, strict=True)
    quantized = sum(p.action == QUANTIZED for p in plans)
    if jobs <= 1 or quantized < jobs:
        # Too few tensors to keep every core busy: one tensor at a time, its rows split over
        # the threads instead (the engine's chunks depend only on the shape, not on ``jobs``).
        for plan, entry in work:
            x = reader.read(plan.info.name)
            finish(plan, quantize_one(reader.path, plan, entry, x, threads=jobs))
    else:
        _in_threads(reader, work, jobs, finish)
    writer.finish(np.array([stats_row(r.stats) for r in results], dtype=np.float64))
    return results


def _in_threads(
    reader: WeightReader,
    work: Any,
    jobs: int,
    finish: Callable[[TensorPlan, TensorResult], None],
) -> None:
    """Read in order, compute in ``jobs`` threads, finish in order."""
    pending: deque[tuple[TensorPlan, Future[TensorResult]]] = deque()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="qcompress") as pool:
        try:
            for plan, entry in work:
                x = reader.read(plan.info.name)
                pending.append((plan, pool.submit(quantize_one, reader.path, plan, entry, x)))
                while len(pending) >= jobs:
                    done_plan, future = pending.popleft()
                    finish(done_plan, future.result())
            while pending:
                done_plan, future = pending.popleft()
                finish(done_plan, future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def stats_row(stats: ErrorStats) -> list[float]:
    return [getattr(stats, column) for column in STATS_COLUMNS]


def refuse_artifact(reader: WeightReader) -> None:
    if reader.format == "safetensors" and is_artifact(reader.metadata()):
        raise UsageError(
            f"{reader.path}: is already a qcompress artifact; dequantize it first "
            "(qcompress dequantize ARTIFACT -o model.safetensors)"
        )


def check_storable(path: Path, infos: list[TensorInfo]) -> None:
    """Every tensor must fit in a safetensors artifact (strings and objects do not, nor a name
    safetensors reserves), and there must be a tensor: an artifact of nothing helps nobody."""
    if not infos:
        raise InputError(f"{path}: holds no tensors; there is nothing to quantize")
    for info in infos:
        if info.name == "__metadata__":
            raise InputError(
                f"{path}: tensor '__metadata__' has the name safetensors reserves for its "
                "metadata, so no artifact can hold it; rename it in the model first"
            )
        if info.dtype not in DTYPE_CODES:
            raise InputError(
                f"{path}: tensor {info.name!r} has dtype {info.dtype}, which a safetensors "
                "artifact cannot hold; remove it from the model first"
            )


def quantize_single(
    reader: WeightReader,
    artifact_path: Path,
    report_path: Path,
    options: QuantizeOptions,
    *,
    force: bool,
    jobs: int,
    progress: Progress | None,
) -> dict[str, Any]:
    """Quantize one weight file into an artifact and its report, both atomically; the report."""
    started = time.perf_counter()
    refuse_artifact(reader)
    infos = reader.tensor_infos()
    check_storable(reader.path, infos)
    plans = [plan_tensor(info, reader.layout, options) for info in infos]
    check_outputs([artifact_path, report_path], [reader.path], force)
    decided = decide_plans(reader, plans, options, jobs=jobs)  # a budget's measuring pass
    plans = decided.plans
    source = {"format": reader.format, "layout": reader.layout, "metadata": reader.metadata()}
    recipe, stored = build_recipe(plans, source, path=reader.path)
    if progress:
        progress.start(len(plans), sum(p.info.nbytes for p in plans))
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="qcompress-hash") as background,
        atomic_outputs([artifact_path, report_path], force) as (tmp_artifact, tmp_report),
    ):
        input_sha256 = background.submit(sha256_file, reader.path)  # overlaps the quantization
        with ArtifactWriter(tmp_artifact, recipe, stored) as writer:
            results = stream_quantize(
                reader, plans, recipe["tensors"], writer, jobs=jobs, progress=progress
            )
        entries = decided.annotate(_confirm(tmp_artifact, [r.report for r in results]))
        report = build_report(
            input_info={
                "path": str(reader.path),
                "format": reader.format,
                "sha256": input_sha256.result(),
                "bytes": reader.path.stat().st_size,
            },
            artifact_info={
                "path": str(artifact_path),
                "sha256": writer.sha256,
                "bytes": tmp_artifact.stat().st_size,
            },
            options=options.defaults(),
            entries=entries,
            overall=engine.combine_error_stats(r.stats for r in results),
            elapsed=time.perf_counter() - started,
        )
        if decided.warnings:
            report["warnings"] = decided.warnings
        tmp_report.write_text(dumps(report))
    return report


def _confirm(tmp_artifact: Path, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reopen the written artifact as a reader would (header, recipe, every stored tensor's dtype
    and shape) and fill in the bytes it really stores. The checksums were computed from the very
    bytes written; ``verify`` re-reads them from disk."""
    with Artifact(tmp_artifact) as art:
        return [
            {**entry, "stored_bytes": art.stored_bytes(recipe_entry)}
            for entry, recipe_entry in zip(reports, art.entries, strict=True)
        ]
