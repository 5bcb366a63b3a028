"""Sharded checkpoints in and out: one artifact shard per input shard, an index, a merged report.

Shards are independent units of work. ``quantize INDEX`` does them all, then merges; several
machines can each run ``quantize INDEX --shard K/N`` on their share, and a last
``quantize INDEX --merge`` (once every shard's artifact and report sit in the output folder)
writes the artifact index and the checkpoint's report. Names mirror the input:
``model-00001-of-00002.safetensors`` gives ``model-00001-of-00002.qc.safetensors`` and
``model-00001-of-00002.qc.json``; ``model.safetensors.index.json`` gives
``model.qc.safetensors.index.json`` and ``model.qc.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompress import __version__, engine
from qcompress.artifact.recipe import ARTIFACT_SUFFIX, FORMAT_VERSION, METADATA_KEY
from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.config import QuantizeOptions
from qcompress.engine.spec import ErrorStats
from qcompress.errors import InputError, UsageError
from qcompress.formats.safetensors import SafetensorsReader
from qcompress.formats.sharded import INDEX_SUFFIX, ShardIndex, check_shard, write_index
from qcompress.quantize.pipeline import Progress, already_an_artifact, quantize_single
from qcompress.report import build_report, dumps, sha256_file


@dataclass(frozen=True)
class ShardedOutputs:
    """Where every output of a sharded run goes."""

    folder: Path
    index: Path
    report: Path
    shards: dict[str, tuple[Path, Path]]  # input shard file name -> (artifact, report)


def sharded_outputs(index: ShardIndex, folder: Path | None, report: Path | None) -> ShardedOutputs:
    """Every output's path, distinct from each other and from every input file.

    A shard's outputs are named after it, which can collide: a Hugging Face checkpoint with one
    ``model.safetensors`` and its ``model.safetensors.index.json`` would give ``model.qc.json``
    for both the shard and the checkpoint; ``a.safetensors`` and ``a`` give the same artifact;
    a shard called ``x.qc.safetensors`` is the artifact name of ``x.safetensors``. The checkpoint's
    names (and ``--report``) stay as documented; a shard's report that collides becomes
    ``STEM.qc.shard.json``, and a shard's artifact that collides ``STEM.shardI.qc.safetensors``
    (I its 1-based position). The names depend only on the index, so ``--shard`` runs on other
    machines and the later ``--merge`` agree on them."""
    folder = folder or index.path.parent
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: for a sharded checkpoint -o names a folder")
    name = index.path.name
    prefix = name[: -len(INDEX_SUFFIX)] if name.endswith(INDEX_SUFFIX) else index.path.stem
    index_out = folder / f"{prefix}{ARTIFACT_SUFFIX}.index.json"
    report_out = report or folder / f"{prefix}.qc.json"
    inputs_here = folder.resolve() == index.path.parent.resolve()
    taken = {index_out.name, index.path.name} if inputs_here else {index_out.name}
    if inputs_here:
        taken |= set(index.shards)
    if report_out.parent.resolve() == folder.resolve():
        taken.add(report_out.name)
    shards = {}
    for position, shard in enumerate(index.shards, start=1):
        stem = shard[: -len(".safetensors")] if shard.endswith(".safetensors") else shard
        artifact = f"{stem}{ARTIFACT_SUFFIX}"
        if artifact in taken:
            stem = f"{stem}.shard{position}"
            while f"{stem}{ARTIFACT_SUFFIX}" in taken:  # only a hostile index gets here
                stem += "_"
            artifact = f"{stem}{ARTIFACT_SUFFIX}"
        taken.add(artifact)
        shard_report = f"{stem}.qc.json"
        if shard_report in taken:
            shard_report = f"{stem}.qc.shard.json"
            while shard_report in taken:
                shard_report = shard_report[: -len(".json")] + "_.json"
        taken.add(shard_report)
        shards[shard] = (folder / artifact, folder / shard_report)
    return ShardedOutputs(folder, index_out, report_out, shards)


SCHEDULER_VARIABLES = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")


def select_shards(
    shards: list[str], spec: str | None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The shards a ``--shard`` run owns: the K-th, (K+N)-th, ... (1-based)."""
    if spec is None:
        return list(shards)
    k, n = parse_share(spec, os.environ if environ is None else environ)
    return [s for i, s in enumerate(shards) if i % n == k - 1]


def parse_share(spec: str, environ: Mapping[str, str]) -> tuple[int, int]:
    """(K, N) from ``K/N``, or from the scheduler that runs this process for ``auto`` (index and
    count) or ``auto/N`` (index only):

    - a Slurm job array (``sbatch --array=0-3``): K from ``SLURM_ARRAY_TASK_ID`` counted from
      ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``, N from
      ``SLURM_ARRAY_TASK_COUNT``;
    - a Kubernetes indexed Job: K from ``JOB_COMPLETION_INDEX`` (0-based); Kubernetes does not
      tell a pod the Job's completions, so ``auto/N`` must give N.

    A CI matrix passes its own index, ``--shard ${{ matrix.k }}/N``. Every failure is a
    UsageError naming the variable and what to pass instead."""
    head, sep, tail = spec.partition("/")
    if head.strip() != "auto":
        try:
            k, n = int(head), int(tail)
        except ValueError:
            raise UsageError(f"--shard {spec!r}: expected K/N (e.g. 1/4), auto or auto/N") from None
        return _check_share(spec, k, n)
    n_given = None
    if sep:
        n_given = _int(tail, f"--shard {spec!r}: expected auto/N with N a whole number")
        if n_given < 1:
            raise UsageError(f"--shard {spec!r}: N must be at least 1")
    found = [v for v in SCHEDULER_VARIABLES if environ.get(v, "").strip()]
    if not found:
        raise UsageError(
            f"--shard {spec}: no scheduler index found (none of "
            f"{', '.join(SCHEDULER_VARIABLES)} is set); pass --shard K/N"
        )
    if len(found) > 1:
        raise UsageError(
            f"--shard {spec}: both {' and '.join(found)} are set; pass --shard K/N to choose"
        )
    if found[0] == "SLURM_ARRAY_TASK_ID":
        k, n = _slurm_share(spec, environ)
        if n_given is not None and n_given != n:
            raise UsageError(
                f"--shard {spec}: the Slurm array has {n} tasks (SLURM_ARRAY_TASK_COUNT) "
                f"but N is {n_given}; use --shard auto"
            )
        return _check_share(spec, k, n)
    if n_given is None:
        raise UsageError(
            f"--shard {spec}: JOB_COMPLETION_INDEX gives the index but not the count; "
            "pass --shard auto/N with N the Job's completions"
        )
    return _check_share(spec, _env_int(spec, environ, "JOB_COMPLETION_INDEX") + 1, n_given)


def _slurm_share(spec: str, environ: Mapping[str, str]) -> tuple[int, int]:
    task = _env_int(spec, environ, "SLURM_ARRAY_TASK_ID")
    if not environ.get("SLURM_ARRAY_TASK_COUNT", "").strip():
        raise UsageError(
            f"--shard {spec}: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not "
            "(not a job array?); pass --shard K/N"
        )
    count = _env_int(spec, environ, "SLURM_ARRAY_TASK_COUNT")
    low = (
        _env_int(spec, environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
    )
    step = (
        _env_int(spec, environ, "SLURM_ARRAY_TASK_STEP")
        if "SLURM_ARRAY_TASK_STEP" in environ
        else 1
    )
    if step < 1 or (task - low) % step:
        raise UsageError(
            f"--shard {spec}: SLURM_ARRAY_TASK_ID={task} is not MIN={low} plus a multiple of "
            f"STEP={step}; use an array like --array=0-{count - 1} or pass --shard K/N"
        )
    return (task - low) // step + 1, count


def _int(text: str, problem: str) -> int:
    """``text`` as an integer, or a UsageError saying ``problem``."""
    try:
        return int(text)
    except ValueError:
        raise UsageError(problem) from None


def _env_int(spec: str, environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name, "")
    number = _int(value, f"--shard {spec}: {name}={value!r} is not a whole number")
    if number < 0:
        raise UsageError(f"--shard {spec}: {name}={value!r} is negative")
    return number


def _check_share(spec: str, k: int, n: int) -> tuple[int, int]:
    if not 1 <= k <= n:
        raise UsageError(f"--shard {spec!r}: K must be from 1 to N (got {k}/{n})")
    return k, n


@dataclass(frozen=True)
class ShardedResult:
    artifact: Path  # the artifact index, or the output folder when only some shards were done
    report_path: Path | None  # the merged report; None when only some shards were done
    report: dict[str, Any]  # the merged report, or {"shards": [each shard's report]}


def quantize_sharded(
    index: ShardIndex,
    options: QuantizeOptions,
    *,
    output: Path | None,
    report: Path | None,
    force: bool,
    jobs: int,
    shard: str | None,
    merge: bool,
    progress: Progress | None,
) -> ShardedResult:
    started = time.perf_counter()
    if METADATA_KEY in index.metadata:
        raise already_an_artifact(index.path, "model.safetensors.index.json")
    outs = sharded_outputs(index, output, report)
    if merge and shard:
        raise UsageError("--merge and --shard do not go together: merge after all shards are done")
    todo = [] if merge else select_shards(index.shards, shard)
    finals = [] if shard else [outs.index, outs.report]
    planned = [p for s in todo for p in outs.shards[s]] + finals
    created = _make_folder(outs.folder)
    try:
        check_outputs(planned, [index.path, *(index.shard_path(s) for s in index.shards)], force)
        for name in todo:  # every shard is there and matches the index before any work starts
            _open_shard(index, name).close()
        return _quantize_shards(index, outs, todo, options, force, jobs, shard, progress, started)
    except BaseException:
        if created:  # no partial output: a folder this run made goes again (if still empty)
            with contextlib.suppress(OSError):
                outs.folder.rmdir()
        raise


def _make_folder(folder: Path) -> bool:
    """Create the output folder ``-o`` names (its parent must exist); True if this call made it.
    Several ``--shard`` runs may race to create it: whoever loses uses it."""
    if folder.is_dir():
        return False
    if not folder.parent.is_dir():
        raise UsageError(f"{folder}: folder {folder.parent} does not exist; create it first")
    try:
        folder.mkdir()
    except FileExistsError:
        return False
    except OSError as exc:
        raise UsageError(f"{folder}: cannot create the folder: {exc.strerror or exc}") from None
    return True


def _quantize_shards(
    index: ShardIndex,
    outs: ShardedOutputs,
    todo: list[str],
    options: QuantizeOptions,
    force: bool,
    jobs: int,
    shard: str | None,
    progress: Progress | None,
    started: float,
) -> ShardedResult:
    reports = []
    for name in todo:
        artifact_path, report_path = outs.shards[name]
        with _open_shard(index, name) as reader:
            reports.append(
                quantize_single(
                    reader,
                    artifact_path,
                    report_path,
                    options,
                    force=force,
                    jobs=jobs,
                    progress=progress,
                )
            )
    if shard:
        return ShardedResult(outs.folder, None, {"shards": reports})
    merged = merge_shards(index, outs, time.perf_counter() - started)
    return ShardedResult(outs.index, outs.report, merged)


def _open_shard(index: ShardIndex, name: str) -> SafetensorsReader:
    path = index.shard_path(name)
    if not path.is_file():
        raise InputError(f"{index.path}: shard {name} is missing from {path.parent}")
    reader = SafetensorsReader(path)
    try:
        check_shard(index, name, [i.name for i in reader.tensor_infos()])
    except BaseException:
        reader.close()
        raise
    return reader


def _load_shard_report(index: ShardIndex, shard: str, report_path: Path) -> dict[str, Any]:
    if not report_path.is_file():
        raise UsageError(
            f"{report_path}: missing; quantize shard {shard} first "
            f"(qcompress quantize {index.path} --shard K/N)"
        )
    try:
        report = json.loads(report_path.read_text())
    except (ValueError, RecursionError, OSError):
        raise InputError(f"{report_path}: not a qcompress report (not readable JSON)") from None
    problem = _report_problem(report)
    if problem:
        raise InputError(
            f"{report_path}: not a qcompress report, or edited: {problem}; "
            f"quantize shard {shard} again"
        )
    artifact = Path(report["artifact"]["path"])
    recorded = report["artifact"]["sha256"]
    artifact = report_path.parent / artifact.name
    if not artifact.is_file() or sha256_file(artifact) != recorded:
        raise InputError(
            f"{artifact}: missing or not the artifact {report_path.name} describes; "
            "quantize that shard again"
        )
    return report


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _report_problem(report: Any) -> str | None:
    """What is wrong with a shard report, as far as ``merge_shards`` reads it; None if nothing.
    Reports are files a user can edit, so every field merging uses is checked for its type."""
    if not isinstance(report, dict):
        return "the JSON is not an object"
    for key in ("input", "artifact", "options", "totals"):
        if not isinstance(report.get(key), dict):
            return f"{key!r} is missing or not an object"
    for key in ("input", "artifact"):
        if not _is_int(report[key].get("bytes")):
            return f"{key}.bytes is missing or not a count"
    for key in ("path", "sha256"):
        if not isinstance(report["artifact"].get(key), str):
            return f"artifact.{key} is missing or not a string"
    t = report["totals"]
    for key in ("overall_mse", "overall_max_abs_error"):
        if not _is_number(t.get(key)):
            return f"totals.{key} is missing or not a number"
    sqnr = t.get("overall_sqnr_db")
    if sqnr is not None and not (_is_number(sqnr) and sqnr < 1000):
        return "totals.overall_sqnr_db is not a number of dB (or null)"
    if not _is_int(t.get("quantized_parameters")):
        return "totals.quantized_parameters is missing or not a count"
    tensors = report.get("tensors")
    if not isinstance(tensors, list):
        return "'tensors' is missing or not a list"
    for i, entry in enumerate(tensors):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return f"tensors[{i}] is not an object with a name"
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            return f"tensor {entry['name']!r}: shape is not a list of counts"
        if not isinstance(entry.get("action"), str):
            return f"tensor {entry['name']!r}: action is missing"
        for key in ("original_bytes", "stored_bytes"):
            if not _is_int(entry.get(key)):
                return f"tensor {entry['name']!r}: {key} is missing or not a count"
    return None


def merge_shards(index: ShardIndex, outs: ShardedOutputs, elapsed: float) -> dict[str, Any]:
    """Write the artifact index and the checkpoint's report from every shard's report."""
    reports = [_load_shard_report(index, s, outs.shards[s][1]) for s in index.shards]
    options = reports[0]["options"]
    for shard, r in zip(index.shards, reports, strict=True):
        if r["options"] != options:
            raise UsageError(
                f"{outs.shards[shard][1]}: made with other options than "
                f"{outs.shards[index.shards[0]][1].name}; quantize every shard the same way"
            )
    weight_map: dict[str, str] = {}
    tensor_shards: dict[str, str] = {}
    for shard, r in zip(index.shards, reports, strict=True):
        artifact_name = outs.shards[shard][0].name
        with SafetensorsReader(outs.shards[shard][0]) as reader:
            for info in reader.tensor_infos():
                if not info.name.startswith("__qcompress__/"):
                    weight_map[info.name] = artifact_name
        for t in r["tensors"]:
            tensor_shards[t["name"]] = artifact_name
    metadata = {
        METADATA_KEY: {
            "format_version": FORMAT_VERSION,
            "tool": f"qcompress {__version__}",
            "shards": [outs.shards[s][0].name for s in index.shards],
            "tensors": tensor_shards,
            "source_index": {"name": index.path.name, "metadata": index.metadata},
        }
    }
    tensors = [t for r in reports for t in r["tensors"]]
    with atomic_outputs([outs.index, outs.report]) as (tmp_index, tmp_report):
        write_index(tmp_index, metadata, weight_map)
        artifact_bytes = sum(r["artifact"]["bytes"] for r in reports)
        report = build_report(
            input_info={
                "path": str(index.path),
                "format": "safetensors",
                "sha256": sha256_file(index.path),
                "bytes": sum(r["input"]["bytes"] for r in reports),
            },
            artifact_info={
                "path": str(outs.index),
                "sha256": sha256_file(tmp_index),
                "bytes": artifact_bytes,
            },
            options=options,
            entries=tensors,
            overall=engine.combine_error_stats(_overall(r) for r in reports),
            elapsed=elapsed,
        )
        report["shards"] = [
            {"input": r["input"], "artifact": r["artifact"], "report": str(outs.shards[s][1])}
            for s, r in zip(index.shards, reports, strict=True)
        ]
        # a --keep glob or plan rule that decides nothing in any shard (each shard's report
        # warns about what it alone lacks)
        shard_warnings = [r.get("warnings", []) for r in reports]
        if shard_warnings and (
            common := [w for w in shard_warnings[0] if all(w in o for o in shard_warnings)]
        ):
            report["warnings"] = common
        tmp_report.write_text(dumps(report))
    return report


def _overall(report: dict[str, Any]) -> ErrorStats:
    """A shard's overall error, rebuilt from its report's totals to combine across shards.

    An exact shard (SQNR null) adds no error; its signal power is not in the report, so it is
    left out of the total signal, which can only make the combined SQNR smaller, never larger.
    """
    t = report["totals"]
    mse, sqnr = t["overall_mse"], t["overall_sqnr_db"]
    power = mse * 10 ** (sqnr / 10) if sqnr is not None else 0.0
    return ErrorStats(mse, t["overall_max_abs_error"], 0.0, power, t["quantized_parameters"])
