"""The functions the CLI calls, and Python users too: quantize_file, dequantize_file, inspect.

Each opens its inputs, streams tensors one at a time through the engine, writes its outputs
atomically, and returns plain data (the report, a summary) for the caller to render. Errors a user
can cause are raised as :class:`qcompress.errors.QCompressError` naming the file and tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompress import engine
from qcompress.allocator import keep_freed_memory as keep_freed_memory
from qcompress.artifact import (
    METADATA_KEY,
    STATS_COLUMNS,
    STATS_TENSOR,
    Artifact,
    ShardedArtifact,
    open_if_artifact,
    open_input,
    stored_names,
)
from qcompress.atomic import Terminated as Terminated
from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.engine.spec import BITS as BITS
from qcompress.engine.spec import GRANULARITIES as GRANULARITIES
from qcompress.engine.spec import RANGE_METHODS as RANGE_METHODS
from qcompress.engine.spec import SCALE_BITS as SCALE_BITS
from qcompress.engine.spec import SCALE_DTYPES as SCALE_DTYPES
from qcompress.engine.spec import SCHEMES as SCHEMES
from qcompress.errors import InputError, UsageError
from qcompress.formats import format_for_output, open_weights, write_weights
from qcompress.formats._common import to_dtype
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.formats.compressed_tensors import is_compressed_tensors_dir
from qcompress.formats.gguf import MAGIC as GGUF_MAGIC
from qcompress.formats.gguf import GgufReader, source_names
from qcompress.formats.sharded import INDEX_SUFFIX, find_index, read_index, write_index
from qcompress.gates import METRICS as METRICS
from qcompress.gates import Gate, check_gates_match, failed_gates
from qcompress.gates import build_gates as build_gates
from qcompress.gates import shown as shown
from qcompress.pipeline import Progress, default_jobs, quantize_single
from qcompress.plan import load_plan
from qcompress.policy import DEFAULT_BITS as DEFAULT_BITS
from qcompress.policy import DEFAULT_MIN_ELEMENTS as DEFAULT_MIN_ELEMENTS
from qcompress.policy import FLOAT_DTYPES, QUANTIZED, QuantizeOptions
from qcompress.report import (
    error_fields,
    sqnr_or_none,
)
from qcompress.sharding import ARTIFACT_SUFFIX, quantize_sharded

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
    options = options or QuantizeOptions()
    input_path = Path(input_path)
    jobs = jobs or default_jobs()
    index_path = find_index(input_path)
    if index_path is not None:
        index = read_index(index_path)
        if METADATA_KEY in index.metadata:
            raise UsageError(
                f"{index_path}: is already a qcompress artifact; dequantize it first "
                "(qcompress dequantize ARTIFACT -o model.safetensors.index.json)"
            )
        done = quantize_sharded(
            index,
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
    """Rebuild a float weight file (npz, h5 or safetensors, by ``output``'s suffix).

    A sharded artifact rebuilds into one file, or, when ``output`` is a
    ``*.safetensors.index.json``, into shards that mirror the original checkpoint.
    """
    if dtype not in OUTPUT_DTYPES:
        raise UsageError(f"--dtype {dtype}: must be one of {', '.join(OUTPUT_DTYPES)}")
    artifact_path, output = Path(artifact_path), Path(output)
    sharded_output = output.name.endswith(INDEX_SUFFIX)
    fmt = "safetensors" if sharded_output else format_for_output(output)
    if not sharded_output and (
        is_compressed_tensors_dir(artifact_path)
        or (find_index(artifact_path) is None and _is_gguf(artifact_path))
    ):
        return _dequantize_weights(artifact_path, output, fmt, dtype, force, progress)
    with _open_artifact(artifact_path) as art:
        if sharded_output:
            if not isinstance(art, ShardedArtifact):
                raise UsageError(f"{output}: a sharded output needs a sharded artifact")
            parts = [
                (shard.entries, output.parent / _float_shard_name(shard.path), shard.recipe)
                for shard in art.shards
            ]
        else:
            parts = [(art.entries, output, art.recipe)]
        outputs = [path for _, path, _ in parts] + ([output] if sharded_output else [])
        check_outputs(outputs, [artifact_path], force)
        if progress:
            progress.start(
                len(art.entries),
                sum(
                    TensorInfo(e["name"], tuple(e["shape"]), e["dtype"]).nbytes for e in art.entries
                ),
            )
        notes: set[str] = set()
        with atomic_outputs(outputs, force) as temps:
            for (entries, _, recipe), tmp in zip(parts, temps, strict=False):
                notes |= _write_float(art, entries, tmp, fmt, dtype, recipe, progress)
            if sharded_output:
                assert isinstance(art, ShardedArtifact)
                weight_map = {e["name"]: path.name for entries, path, _ in parts for e in entries}
                write_index(temps[-1], art.source_index.get("metadata") or {}, weight_map)
    return DequantizeResult(
        output, fmt, len(art.entries), sum(p.stat().st_size for p in outputs), tuple(sorted(notes))
    )


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False  # the artifact opener reports it


def _dequantize_weights(
    path: Path, output: Path, fmt: str, dtype: str, force: bool, progress: Progress | None
) -> DequantizeResult:
    """A float file from weights that decode on read (GGUF, a compressed-tensors checkpoint)."""
    check_outputs([output], [path], force)
    with open_weights(path) as reader:
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
    entries: list[dict[str, Any]],
    path: Path,
    fmt: str,
    dtype: str,
    recipe: dict[str, Any],
    progress: Progress | None,
) -> set[str]:
    """Dequantize ``entries`` into one float file; the notes on dtypes that had to change."""
    infos, notes = [], set()
    for e in entries:
        out_dtype, note = _output_dtype(e["dtype"], dtype, fmt)
        infos.append(TensorInfo(e["name"], tuple(e["shape"]), out_dtype))
        if note:
            notes.add(note)

    def arrays() -> Iterator[np.ndarray]:
        for e, info in zip(entries, infos, strict=True):
            x = (
                engine.dequantize(art.quantized(e))
                if e["action"] == QUANTIZED
                else (art.stored_tensor(e))
            )
            yield x if str(x.dtype) == info.dtype else _narrow(x, info, path, dtype)
            art.release(e)
            if progress:
                progress.advance(e["name"], info.nbytes)

    write_weights(path, fmt, infos, arrays(), recipe["source"]["metadata"])
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


def _open_artifact(path: Path) -> Artifact | ShardedArtifact:
    """Open ``path`` as an artifact, with the input checks every reader gets."""
    art = open_if_artifact(path)
    if art is None:
        raise InputError(
            f"{path}: not a qcompress artifact (make one with: qcompress quantize MODEL)"
        )
    return art


def inspect(path: str | Path) -> dict[str, Any]:
    """List a weight file's or an artifact's tensors; for artifacts, with bits and error."""
    path = Path(path)
    with open_input(path) as opened:
        if isinstance(opened, WeightReader):
            return _inspect_weights(path, opened)
        return _inspect_artifact(path, opened)


def _inspect_weights(path: Path, reader: WeightReader) -> dict[str, Any]:
    tensors = [
        {
            "name": i.name,
            "shape": list(i.shape),
            "dtype": i.dtype,
            "parameters": i.size,
            "bytes": i.nbytes,
            **({"gguf_type": reader.gguf_type(i.name)} if isinstance(reader, GgufReader) else {}),
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


def _inspect_artifact(path: Path, art: Artifact | ShardedArtifact) -> dict[str, Any]:
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
                "sqnr_db": sqnr_or_none(float(row[2])),
            }
        )
    quantized = [t for t in tensors if t["action"] == QUANTIZED]
    q_params = sum(t["parameters"] for t in quantized)
    return {
        "path": str(path),
        "kind": "artifact",
        "format": "safetensors",
        "source_format": art.recipe["source"]["format"],
        "file_bytes": _total_bytes(art),
        "parameters": sum(t["parameters"] for t in tensors),
        "bits_per_weight": (
            8 * sum(t["stored_bytes"] for t in quantized) / q_params if q_params else None
        ),
        "by_width": _by_width(quantized),
        "tensors": tensors,
    }


def _by_width(quantized: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per code width: how many tensors and weights use it, and their bits per weight (scales
    included), so a mixed-precision artifact shows where its bits went."""
    out = []
    for bits in sorted({t["bits"] for t in quantized}):
        group = [t for t in quantized if t["bits"] == bits]
        params = sum(t["parameters"] for t in group)
        stored = sum(t["stored_bytes"] for t in group)
        out.append(
            {
                "bits": bits,
                "tensors": len(group),
                "parameters": params,
                "stored_bytes": stored,
                "bits_per_weight": 8 * stored / params if params else None,
            }
        )
    return out


def _total_bytes(art: Artifact | ShardedArtifact) -> int:
    shards = art.shards if isinstance(art, ShardedArtifact) else [art]
    return sum(shard.path.stat().st_size for shard in shards)


class _FloatTensors:
    """Any weight file or artifact as named tensors; artifacts are dequantized on read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._artifact = open_if_artifact(path)
        self._entries: dict[str, dict[str, Any]] = {}
        if self._artifact is None:
            self._reader = open_weights(path)
        else:
            self._entries = {e["name"]: e for e in self._artifact.entries}

    @property
    def is_gguf(self) -> bool:
        return self._artifact is None and self._reader.format == "gguf"

    def gguf_source_names(self) -> dict[str, list[str]]:
        """For a GGUF file naming a known architecture: its tensor names -> Hugging Face names."""
        if not self.is_gguf:
            return {}
        names = [i.name for i in self._reader.tensor_infos()]
        blocks = [
            int(n.split(".")[1])
            for n in names
            if n.startswith("blk.") and n.count(".") > 1 and n.split(".")[1].isdigit()
        ]
        arch = self._reader.metadata().get("architecture")
        return source_names(arch, names, max(blocks, default=-1) + 1)

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
        check_gates_match(gates, (e["name"] for e in art.entries), artifact_path)
        bad = set(art.verify())
        art.check_values(skip=bad)  # decodable, not only intact: what dequantize will need
        stats = None if STATS_TENSOR in bad else art.stats()
        original = _FloatTensors(Path(against)) if against is not None else None
        try:
            if original is not None:
                _check_same_tensors(original, artifact_path, [(e["name"], e) for e in art.entries])
            tensors = []
            for i, e in enumerate(art.entries):
                corrupt = sorted(bad & set(stored_names(e)))
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
                    errors["sqnr_db"] = sqnr_or_none(float(stats[i][2]))
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
    other_bad = sorted(bad - {n for e in art.entries for n in stored_names(e)})
    return {
        "artifact": str(artifact_path),
        "against": None if against is None else str(against),
        "passed": not failures and not other_bad,
        "checksums": {"checked": len(art.entries), "failed": sorted(bad)},
        "gates": [g.describe() for g in gates],
        "failures": failures + [f"checksum of {n}" for n in other_bad],
        "tensors": tensors,
    }


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
    unpaired = None
    with _FloatTensors(a) as ref, _FloatTensors(b) as other:
        if ref.is_gguf or other.is_gguf:
            pairs, unpaired = _pair_gguf(ref, other)
        else:
            _check_same_tensors(ref, b, [(i.name, i) for i in other.infos()])
            pairs = [(i, i.name) for i in ref.infos()]
        check_gates_match(gates, (i.name for i, _ in pairs), a)
        tensors = []
        for info, other_name in pairs:
            errors = _errors(ref.read(info.name), other.read(other_name))
            failed = failed_gates(info.name, errors, gates)
            entry = {"name": info.name, "shape": list(info.shape), **errors, "failed": failed}
            if other_name != info.name:
                entry["b_name"] = other_name
            tensors.append(entry)
    failures = [t["name"] for t in tensors if t["failed"]]
    result = {
        "a": str(a),
        "b": str(b),
        "passed": not failures,
        "gates": [g.describe() for g in gates],
        "failures": failures,
        "tensors": tensors,
    }
    if unpaired is not None:
        result["unpaired"] = unpaired
    return result


def _pair_gguf(
    ref: _FloatTensors, other: _FloatTensors
) -> tuple[list[tuple[TensorInfo, str]], dict[str, list[dict[str, Any]]]]:
    """Pair tensors when one side is GGUF: by name, else through the gguf package's tensor-name
    tables for the architecture the GGUF file names. Tensors that cannot be paired (or whose
    shapes differ) are listed, not an error: llama.cpp files often add or merge tensors."""
    ref_infos = {i.name: i for i in ref.infos()}
    other_infos = {i.name: i for i in other.infos()}
    to_ref: dict[str, str] = {}  # other name -> ref name, through the tables
    for side, names, target in ((other, other_infos, ref_infos), (ref, ref_infos, other_infos)):
        for gguf_name, sources in side.gguf_source_names().items():
            src = next((n for n in sources if n in target), None)
            if gguf_name in names and src is not None and gguf_name not in target:
                if side is other:
                    to_ref[gguf_name] = src
                else:
                    to_ref[src] = gguf_name
    pairs: list[tuple[TensorInfo, str]] = []
    used: set[str] = set()
    a_only: list[dict[str, Any]] = []
    by_ref = {r: o for o, r in to_ref.items()}
    for name, info in ref_infos.items():
        other_name = name if name in other_infos else by_ref.get(name)
        if other_name is None:
            a_only.append({"name": name, "reason": "no tensor of this name in B"})
            continue
        if other_infos[other_name].shape != info.shape:
            a_only.append(
                {
                    "name": name,
                    "reason": f"B's {other_name!r} has shape {list(other_infos[other_name].shape)}"
                    f", not {list(info.shape)}",
                }
            )
            used.add(other_name)
            continue
        pairs.append((info, other_name))
        used.add(other_name)
    b_only = [
        {"name": n, "reason": "no tensor of this name in A"} for n in other_infos if n not in used
    ]
    return pairs, {"a_only": a_only, "b_only": b_only}


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
