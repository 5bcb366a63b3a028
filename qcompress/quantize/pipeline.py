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

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qcompress import engine
from qcompress.artifact import coding
from qcompress.artifact.layout import build_recipe, quantized_arrays, uniform_arrays
from qcompress.artifact.reader import Artifact, is_artifact
from qcompress.artifact.recipe import (
    FLOAT_DTYPES,
    PASSTHROUGH,
    QUANTIZED,
    STATS_COLUMNS,
    TensorRecipe,
)
from qcompress.artifact.writer import ArtifactWriter
from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.config import QuantizeOptions
from qcompress.engine.spec import ErrorStats, NonFiniteError
from qcompress.engine.uniform import UniformSpec, uniform_quantize_with_error
from qcompress.errors import InputError, UsageError
from qcompress.formats import DTYPE_CODES, SOURCE_FORMATS
from qcompress.formats._common import dtype_name
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.formats.registry import BY_NAME
from qcompress.quantize.budget import Decisions, decide_budget
from qcompress.quantize.drop import (
    drop_warnings,
    optimizer_summary,
    split_dropped,
    without_dropped,
)
from qcompress.quantize.policy import TensorDecision, decide_tensor, non_finite_error
from qcompress.report import (
    Measured,
    TensorReport,
    build_report,
    dumps,
    measured,
    measured_uniform,
    sha256_file,
    tensor_report,
)

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
    """One tensor, done: the stored tensors to append (in order, each with the coder of the
    entropy stage that holds it, or None: stored plainly), their bytes before that stage, and
    what was measured."""

    stored: list[tuple[str, np.ndarray, str | None]]
    measured: Measured
    raw_bytes: int = 0


def min_max(x: np.ndarray) -> tuple[float | None, float | None]:
    """The finite extremes of a float tensor (a kept tensor may hold NaN or Inf)."""
    if x.size == 0 or dtype_name(x.dtype) not in FLOAT_DTYPES:
        return None, None
    x = x.astype(np.float32, copy=False)
    lo, hi = x.min(), x.max()  # a NaN propagates and an Inf is an extreme: finite means all are
    if math.isfinite(lo) and math.isfinite(hi):
        return float(lo), float(hi)
    finite_mask = np.isfinite(x)
    finite = x if finite_mask.all() else x[finite_mask]
    if finite.size == 0:
        return None, None
    return float(finite.min()), float(finite.max())


def quantize_one(
    path: object,
    plan: TensorDecision,
    entry: TensorRecipe,
    x: np.ndarray,
    *,
    threads: int = 1,
    entropy: bool = False,
) -> TensorResult:
    """Quantize (or keep) one tensor: the arrays the artifact stores for it, and its error.

    ``threads`` > 1 splits a large tensor's rows over threads; the bytes do not depend on it.
    ``entropy``: pass every stored tensor but a passed-through one through the entropy stage."""
    name = plan.info.name
    if plan.action != QUANTIZED:
        x_min, x_max = min_max(x)
        assert entry.stored is not None
        m = measured(entry, x_min, x_max, None, EXACT)
        return _coded([(entry.stored, x)], m, entropy and plan.action != PASSTHROUGH, threads)
    if isinstance(plan.spec, UniformSpec):
        return _quantize_uniform(path, plan, entry, x, entropy=entropy, threads=threads)
    assert plan.spec is not None
    try:
        # Fused: the error is measured tile by tile while the codes are in cache, rather than
        # by a second pass over a dequantized copy of the tensor.
        q, stats = engine.quantize_with_error(x, plan.spec, threads=threads)
    except NonFiniteError as e:
        raise non_finite_error(path, name, e) from None
    # Quantized means finite (checked by the engine), so no NaN mask: plain min and max.
    x_min, x_max = (float(x.min()), float(x.max())) if x.size else (None, None)
    stored = quantized_arrays(entry, q)
    return _coded(stored, measured(entry, x_min, x_max, q, stats), entropy, threads)


def _coded(
    stored: list[tuple[str, np.ndarray]], m: Measured, entropy: bool, threads: int
) -> TensorResult:
    """The result, each stored tensor through the entropy stage when ``entropy`` (in the worker
    thread, so coding overlaps the next tensors' quantization)."""
    raw = sum(a.nbytes for _, a in stored)
    if not entropy:
        return TensorResult([(n, a, None) for n, a in stored], m, raw)
    return TensorResult([(n, *coding.code(a, threads)) for n, a in stored], m, raw)


def _quantize_uniform(
    path: object,
    plan: TensorDecision,
    entry: TensorRecipe,
    x: np.ndarray,
    *,
    entropy: bool,
    threads: int,
) -> TensorResult:
    """Variable-rate codes: the same codes the measuring pass found (deterministic), through
    the entropy stage like any stored tensor."""
    assert isinstance(plan.spec, UniformSpec)
    try:
        u, stats = uniform_quantize_with_error(x, plan.spec)
    except NonFiniteError as e:
        raise non_finite_error(path, plan.info.name, e) from None
    x_min, x_max = (float(x.min()), float(x.max())) if x.size else (None, None)
    m = measured_uniform(entry, x_min, x_max, u, stats)
    return _coded(uniform_arrays(entry, u), m, entropy, threads)


def stream_quantize(
    reader: WeightReader,
    decided: Decisions,
    entries: tuple[TensorRecipe, ...],
    writer: ArtifactWriter,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
    entropy: bool = False,
) -> tuple[list[TensorReport], list[ErrorStats]]:
    """Quantize every decided tensor into ``writer`` in order and finish the artifact; each
    tensor's report line (built once, as it is written) and its error."""
    plans = decided.plans
    reports: list[TensorReport] = []
    stats: list[ErrorStats] = []

    def finish(plan: TensorDecision, result: TensorResult) -> None:
        stored_bytes = 0
        coders: list[str] = []
        for stored_name, array, coder in result.stored:
            writer.write(stored_name, array, coder)
            stored_bytes += array.nbytes
            if coder is not None and coder not in coders:
                coders.append(coder)
        reader.release(plan.info.name)
        entry = entries[len(reports)]  # finished in order
        reports.append(
            tensor_report(
                entry,
                result.measured,
                original_bytes=plan.info.nbytes,
                stored_bytes=stored_bytes,
                decided_by=plan.decided_by,
                candidates=decided.candidates_for(plan),
                entropy_coder="+".join(coders) or None,
                raw_stored_bytes=result.raw_bytes,
                axis_rule=plan.axis_rule,
            )
        )
        stats.append(result.measured.stats)
        if progress:
            progress.advance(plan.info.name, plan.info.nbytes)

    work = zip(plans, entries, strict=True)
    quantized = sum(p.action == QUANTIZED for p in plans)
    if jobs <= 1 or quantized < jobs:
        # Too few tensors to keep every core busy: one tensor at a time, its rows split over
        # the threads instead (the engine's chunks depend only on the shape, not on ``jobs``).
        for plan, entry in work:
            x = reader.read(plan.info.name)
            result = quantize_one(reader.path, plan, entry, x, threads=jobs, entropy=entropy)
            finish(plan, result)
    else:
        _in_threads(reader, work, jobs, finish, entropy)
    writer.finish(np.array([stats_row(s) for s in stats], dtype=np.float64))
    return reports, stats


def _in_threads(
    reader: WeightReader,
    work: Any,
    jobs: int,
    finish: Callable[[TensorDecision, TensorResult], None],
    entropy: bool = False,
) -> None:
    """Read in order, compute in ``jobs`` threads, finish in order."""
    pending: deque[tuple[TensorDecision, Future[TensorResult]]] = deque()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="qcompress") as pool:
        try:
            for plan, entry in work:
                x = reader.read(plan.info.name)
                job = pool.submit(quantize_one, reader.path, plan, entry, x, entropy=entropy)
                pending.append((plan, job))
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


def already_an_artifact(path: Path, rebuilt: str) -> UsageError:
    """The one refusal to quantize an artifact (a file, or a sharded one's index): ``rebuilt``
    is the float file the suggested ``dequantize`` would write."""
    return UsageError(
        f"{path}: is already a qcompress artifact; dequantize it first "
        f"(qcompress dequantize ARTIFACT -o {rebuilt})"
    )


def refuse_artifact(reader: WeightReader) -> None:
    """Refuse inputs that are quantized already: an artifact, and the formats qcompress only
    reads (GGUF, compressed-tensors), which an artifact could not name as its source."""
    if reader.format == "safetensors" and is_artifact(reader.metadata()):
        raise already_an_artifact(reader.path, "model.safetensors")
    if reader.format not in SOURCE_FORMATS:
        raise UsageError(
            f"{reader.path}: is a {BY_NAME[reader.format].label} checkpoint, quantized already; "
            f"dequantize it first (qcompress dequantize {reader.path.name} -o "
            "model.safetensors), then quantize that"
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
    all_infos = reader.tensor_infos()
    split = split_dropped(reader.path, all_infos, options)
    infos = split.kept
    check_storable(reader.path, infos)
    hints, as_stored = reader.axis_hints(), reader.as_stored()
    optimizer = reader.optimizer_state()
    plans = [
        decide_tensor(
            info,
            reader.layout,
            options,
            hints.get(info.name),
            as_stored.get(info.name),
            optimizer=info.name in optimizer,
        )
        for info in infos
    ]
    _prefetch_kernels(plans)
    check_outputs([artifact_path, report_path], [reader.path], force)
    decided = decide_budget(reader, plans, options, jobs=jobs)  # a budget's measuring pass
    plans = decided.plans
    metadata = without_dropped(reader.metadata(), split.dropped)
    source = {"format": reader.format, "layout": reader.layout, "metadata": metadata}
    recipe, stored = build_recipe(plans, source, path=reader.path)
    if progress:
        progress.start(len(plans), sum(p.info.nbytes for p in plans))
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="qcompress-hash") as background,
        atomic_outputs([artifact_path, report_path], force) as (tmp_artifact, tmp_report),
    ):
        input_sha256 = background.submit(
            sha256_file, reader.digest_file()
        )  # overlaps the quantization
        entropy = options.entropy == "auto"
        with ArtifactWriter(tmp_artifact, recipe, stored, coded=entropy) as writer:
            entries, stats = stream_quantize(
                reader,
                decided,
                recipe.tensors,
                writer,
                jobs=jobs,
                progress=progress,
                entropy=entropy,
            )
        _confirm(tmp_artifact)
        report = build_report(
            input_info={
                "path": str(reader.path),
                "format": reader.format,
                "sha256": input_sha256.result(),
                "bytes": reader.digest_file().stat().st_size,
            },
            artifact_info={
                "path": str(artifact_path),
                "sha256": writer.sha256,
                "bytes": tmp_artifact.stat().st_size,
            },
            options=options.defaults(),
            entries=entries,
            overall=engine.combine_error_stats(stats),
            elapsed=time.perf_counter() - started,
        )
        warnings = decided.warnings + drop_warnings(options, (i.name for i in all_infos))
        if warnings:
            report["warnings"] = warnings
        if split.dropped:
            report["dropped"] = split.dropped
        summary = optimizer_summary(all_infos, optimizer, split.dropped)
        if summary is not None:
            report["optimizer_state"] = summary
        tmp_report.write_text(dumps(report))
    return report


def _prefetch_kernels(plans: list[TensorDecision]) -> threading.Thread | None:
    """Start loading the compiled kernels in a thread when a tensor will need them.

    Why: importing numba and loading its cache takes about 0.6 s, which otherwise starts when the
    first large tensor is quantized, after it was read; here it overlaps the reading of the
    first tensors and the input's SHA-256. The thread is not a daemon, so an early error still
    lets it finish before the interpreter exits."""
    from qcompress.engine import jit

    if not any(
        p.action == QUANTIZED and p.info.size >= jit.MIN_ELEMENTS and p.info.dtype != "float64"
        for p in plans
    ):
        return None
    thread = threading.Thread(
        target=jit.use_fast, args=(jit.MIN_ELEMENTS,), name="qcompress-kernels"
    )
    thread.start()
    return thread


def _confirm(tmp_artifact: Path) -> None:
    """Reopen the written artifact as a reader would (header, recipe, every stored tensor's dtype
    and shape) before claiming success. The checksums were computed from the very bytes written;
    ``verify`` re-reads them from disk."""
    Artifact(tmp_artifact).close()
