"""The functions the CLI calls, and Python users too: quantize_file, dequantize_file, inspect,
verify, compare, export, load_plan: a thin facade over the workflow modules (``quantize/``,
``dequantize``, ``inspect``, ``checks/``, ``exports/``), each loaded when first called.

Each opens its inputs, streams tensors one at a time through the engine, writes its outputs
atomically, and returns typed results (the report, a summary) for the caller to render. Errors a
user can cause are raised as :class:`qcompress.errors.QCompressError` naming the file and tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcompress.atomic import Terminated as Terminated
from qcompress.atomic import check_outputs as check_outputs
from qcompress.checks.gates import METRICS as METRICS
from qcompress.checks.gates import build_gates as build_gates
from qcompress.checks.gates import shown as shown
from qcompress.config import CODEBOOK_CHOICES as CODEBOOK_CHOICES
from qcompress.config import DEFAULT_BITS as DEFAULT_BITS
from qcompress.config import DEFAULT_MIN_ELEMENTS as DEFAULT_MIN_ELEMENTS
from qcompress.config import OPTIMIZER_GLOBS as OPTIMIZER_GLOBS
from qcompress.config import QuantizeOptions
from qcompress.dequantize import OUTPUT_DTYPES as OUTPUT_DTYPES
from qcompress.dequantize import DequantizeResult as DequantizeResult
from qcompress.dequantize import dequantize_file as dequantize_file
from qcompress.engine.spec import BITS as BITS
from qcompress.engine.spec import GRANULARITIES as GRANULARITIES
from qcompress.engine.spec import RANGE_METHODS as RANGE_METHODS
from qcompress.engine.spec import SCALE_BITS as SCALE_BITS
from qcompress.engine.spec import SCALE_DTYPES as SCALE_DTYPES
from qcompress.engine.spec import SCHEMES as SCHEMES
from qcompress.errors import QCompressError as QCompressError
from qcompress.errors import UsageError as UsageError
from qcompress.exports import TARGETS
from qcompress.formats import open_weights
from qcompress.formats.sharded import find_index, read_index
from qcompress.malloc import keep_freed_memory as keep_freed_memory
from qcompress.malloc import paused_gc

if TYPE_CHECKING:  # the workflow modules load in the functions that run them: start-up stays small
    from qcompress.checks.gates import Gate
    from qcompress.checks.results import CompareResult, VerifyResult
    from qcompress.histogram import Histogram
    from qcompress.html import write_html as write_html
    from qcompress.html import write_html_report as write_html_report
    from qcompress.inspect import Inspection
    from qcompress.quantize.pipeline import Progress
    from qcompress.quantize.plan_file import Plan
    from qcompress.report import dumps as dumps

EXPORT_TARGETS = tuple(TARGETS)  # what ``export(to=...)`` takes: the CLI's --to choices

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


@dataclass(frozen=True)
class QuantizeResult:
    """The artifact (for a share of a sharded checkpoint's shards: the output folder), the
    report's path (None for such a share) and the report itself."""

    artifact: Path
    report_path: Path | None
    report: dict[str, Any]


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


@paused_gc()  # a command makes many long-lived objects and no cycles
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


@paused_gc()
def inspect(path: str | Path) -> Inspection:
    """List a weight file's or an artifact's tensors; for artifacts, with bits and error."""
    from qcompress.inspect import inspect as run

    return run(path)


@paused_gc()
def verify(
    artifact_path: str | Path, *, against: str | Path | None = None, gates: list[Gate] | None = None
) -> VerifyResult:
    """Check an artifact's structure and checksums and, against gates, each tensor's error.

    Without ``against`` the errors are those recorded at quantization; with it they are recomputed
    from the original file. ``result.passed`` is False when a checksum or a gate failed.
    """
    from qcompress.checks.verify import verify as run

    return run(artifact_path, against=against, gates=gates)


@paused_gc()
def compare(a: str | Path, b: str | Path, *, gates: list[Gate] | None = None) -> CompareResult:
    """Per-tensor error of B against A (any formats, artifacts dequantized), checked by gates."""
    from qcompress.checks.compare import compare as run

    return run(a, b, gates=gates)


def load_plan(path: str | Path) -> Plan:
    """PLAN.toml parsed and checked (:mod:`qcompress.quantize.plan_file`)."""
    from qcompress.quantize.plan_file import load_plan as run

    return run(path)


@paused_gc()
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


# ---- what the CLI shows besides the results: so that it imports this module alone ----------


def __getattr__(name: str) -> Any:
    """Re-exports loaded when first used: ``dumps`` (a report or a result's ``as_dict()`` as
    strict JSON text), ``write_html`` (a quantize report's HTML page) and ``write_html_report``
    (REPORT.json, and a verify result, as one)."""
    if name == "dumps":
        from qcompress.report import dumps

        return dumps
    if name in ("write_html", "write_html_report"):
        from qcompress import html

        return getattr(html, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tensor_histogram(path: str | Path, name: str, *, bins: int | None = None) -> Histogram:
    """The histogram of tensor ``name`` of any weight file or artifact (``bins`` None: the
    default, which JSON output always uses so that the document does not depend on the
    terminal)."""
    from qcompress.histogram import DEFAULT_BINS
    from qcompress.histogram import tensor_histogram as run

    return run(path, name, bins=DEFAULT_BINS if bins is None else bins)


def errors_worst_first(path: str | Path) -> list[dict[str, Any]]:
    """An artifact's quantized tensors, lowest SQNR first (``inspect --errors``)."""
    from qcompress.histogram import errors_worst_first as run

    return run(inspect(path))
