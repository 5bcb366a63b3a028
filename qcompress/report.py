"""The JSON report: what was done to every tensor and what it cost, checked by a shipped schema.

Numbers that JSON cannot hold are mapped, never dropped: an exact reconstruction's infinite SQNR
is ``null``, and any other NaN or infinity (a tensor that holds NaN/Inf) is ``null`` with the
object's ``"nonfinite"`` map naming the field and what it held (see :func:`json_safe`).
Long per-channel or per-group parameter lists are summarised, with the name of the artifact
tensor that holds them all.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qcompress import __version__
from qcompress.engine.spec import ErrorStats, QuantizedTensor

if TYPE_CHECKING:
    from qcompress.artifact.recipe import TensorRecipe

LIST_LIMIT = 64  # parameter lists longer than this are summarised in the report


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: an exact reconstruction reports its SQNR as null."""
    return None if not math.isfinite(value) else float(value)


def sqnr_or_none(value: float) -> float | None:
    """An exact reconstruction's SQNR (+inf) as null; NaN (NaN/Inf in a tensor) stays NaN, so a
    gate fails on it and :func:`json_safe` marks it instead of passing it off as exact."""
    return None if value == math.inf else float(value)


NONFINITE_KEY = "nonfinite"
NONFINITE_MARKERS = ("NaN", "Infinity", "-Infinity")


def _marker(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def json_safe(document: Any) -> Any:
    """``document`` with every NaN/Inf float replaced by null, and recorded in the object holding
    it under ``"nonfinite"``: ``{field: "NaN" | "Infinity" | "-Infinity"}``, with ``field/i`` for
    element i of a list field. The one encoding of non-finite numbers in every JSON qcompress
    prints or writes (report, ``inspect``, ``verify``, ``compare``), so no output crashes on them
    and a consumer can tell a NaN from an exact (null) SQNR."""
    if isinstance(document, dict):
        return {k: json_safe(v) for k, v in _marked(document).items()}
    if isinstance(document, list):
        return [json_safe(v) for v in document]
    if isinstance(document, float) and not math.isfinite(document):
        return None  # a bare number outside any object: nowhere to mark it
    return document


def _values(array: np.ndarray, stored_as: str) -> list[float] | dict[str, Any]:
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    if flat.size <= LIST_LIMIT:
        return [float(v) for v in flat]
    return {
        "count": int(flat.size),
        "min": float(flat.min()),
        "max": float(flat.max()),
        "mean": float(flat.mean()),
        "stored_as": stored_as,
    }


def error_fields(stats: ErrorStats) -> dict[str, Any]:
    return {
        "mse": float(stats.mse),
        "max_abs_error": float(stats.max_abs_error),
        "sqnr_db": sqnr_or_none(stats.sqnr_db),
    }


@dataclass(frozen=True)
class Measured:
    """What quantizing one tensor measured, for its report line: the original's finite extremes,
    the clip range and parameters (summarised), and the error."""

    original_min: float | None
    original_max: float | None
    stats: ErrorStats
    clip_min: float | None = None
    clip_max: float | None = None
    scale: list[float] | dict[str, Any] | None = None
    zero_point: list[float] | dict[str, Any] | None = None


def measured(
    recipe_entry: TensorRecipe,
    x_min: float | None,
    x_max: float | None,
    q: QuantizedTensor | None,
    stats: ErrorStats,
) -> Measured:
    """The report's numbers for one tensor (in the worker thread: summaries cost numpy work)."""
    stored = recipe_entry.quantized
    if q is None or stored is None:
        return Measured(x_min, x_max, stats)
    return Measured(
        x_min,
        x_max,
        stats,
        float(np.min(q.clip_min)) if q.clip_min.size else None,
        float(np.max(q.clip_max)) if q.clip_max.size else None,
        _values(q.scale, stored.scale),
        None
        if q.zero_point is None or stored.zero_point is None
        else _values(q.zero_point, stored.zero_point),
    )


@dataclass(frozen=True)
class TensorReport:
    """One tensor's line in the report, built once, after the tensor is written, when how it was
    decided and the bytes it stores are known. Field order is the JSON's key order."""

    name: str
    shape: list[int]
    dtype: str
    action: str
    reason: str
    bits: int | None
    scheme: str | None
    granularity: str | None
    axis: int | None
    group_size: int | None
    range: str | None
    scale_bits: int | None
    original_min: float | None
    original_max: float | None
    clip_min: float | None
    clip_max: float | None
    scale: list[float] | dict[str, Any] | None
    zero_point: list[float] | dict[str, Any] | None
    mse: float
    max_abs_error: float
    sqnr_db: float | None
    original_bytes: int
    stored_bytes: int
    decided_by: str
    candidates: list[dict[str, Any]] | None
    axis_rule: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)  # a dataclass's __dict__ holds its fields in order


def tensor_report(
    recipe_entry: TensorRecipe,
    m: Measured,
    *,
    original_bytes: int,
    stored_bytes: int,
    decided_by: str,
    candidates: list[dict[str, Any]] | None,
    axis_rule: str | None = None,
) -> TensorReport:
    """One tensor's report line from its recipe entry and what quantizing it measured."""
    e, s = recipe_entry, recipe_entry.quantized
    return TensorReport(
        name=e.name,
        shape=list(e.shape),
        dtype=e.dtype,
        action=e.action,
        reason=e.reason,
        bits=None if s is None else s.bits,
        scheme=None if s is None else s.scheme,
        granularity=None if s is None else s.granularity,
        axis=None if s is None else s.axis,
        group_size=None if s is None else s.group_size,
        range=None if s is None else s.range,
        scale_bits=None if s is None else s.scale_bits,
        original_min=m.original_min,
        original_max=m.original_max,
        clip_min=m.clip_min,
        clip_max=m.clip_max,
        scale=m.scale,
        zero_point=m.zero_point,
        mse=float(m.stats.mse),
        max_abs_error=float(m.stats.max_abs_error),
        sqnr_db=sqnr_or_none(m.stats.sqnr_db),
        original_bytes=original_bytes,
        stored_bytes=stored_bytes,
        decided_by=decided_by,
        candidates=candidates,
        axis_rule=None if s is None else axis_rule,
    )


def totals(entries: list[dict[str, Any]], overall: ErrorStats, artifact_bytes: int) -> dict:
    """Model-wide numbers; bits per weight come from the bytes actually stored."""
    params = sum(math.prod(e["shape"]) for e in entries)
    quantized = [e for e in entries if e["action"] == "quantized"]
    q_params = sum(math.prod(e["shape"]) for e in quantized)
    q_bytes = sum(e["stored_bytes"] for e in quantized)
    original = sum(e["original_bytes"] for e in entries)
    return {
        "tensors": len(entries),
        "quantized_tensors": len(quantized),
        "parameters": params,
        "quantized_parameters": q_params,
        "original_bytes": original,
        "artifact_bytes": artifact_bytes,
        "compression_ratio": original / artifact_bytes if artifact_bytes else None,
        "bits_per_weight": 8 * q_bytes / q_params if q_params else None,
        "quantized_original_bytes": sum(e["original_bytes"] for e in quantized),
        "quantized_stored_bytes": q_bytes,
        **{f"overall_{k}": v for k, v in error_fields(overall).items()},
    }


def build_report(
    *,
    input_info: dict[str, Any],
    artifact_info: dict[str, Any],
    options: dict[str, Any],
    entries: list[TensorReport] | list[dict[str, Any]],
    overall: ErrorStats,
    elapsed: float,
) -> dict[str, Any]:
    """The whole report; ``entries`` typed (a fresh run) or already JSON (a sharded merge)."""
    entries = [e.as_dict() if isinstance(e, TensorReport) else e for e in entries]
    return {
        "tool": "qcompress",
        "version": __version__,
        "input": input_info,
        "artifact": artifact_info,
        "options": options,
        "totals": totals(entries, overall, artifact_info["bytes"]),
        "elapsed_seconds": round(elapsed, 3),
        "tensors": entries,
    }


def dumps(document: Any) -> str:
    """Strict JSON text (non-finite numbers mapped by :func:`json_safe`) for a report or any
    result document, indented at the top two levels with
    every element of a list of objects on its own line (``"tensors"``: one tensor per line).

    Not ``json.dumps(indent=2)``: with an indent, Python's json falls back to its pure-Python
    encoder, which took longer than quantizing a model of 100k tiny tensors; each line here is
    one call to the C encoder, so the cost stays linear with a small constant."""
    return _pretty(document, 0) + "\n"


def _pretty(value: Any, level: int) -> str:
    """``json_safe`` and layout in one walk: an object at the top two levels marks its own
    non-finite fields (all :func:`json_safe` ever does to it); anything deeper is one C-encoder
    call, and walked by :func:`json_safe` only when that call finds a NaN or Inf."""
    pad, end = "  " * (level + 1), "  " * level
    if level < 2 and isinstance(value, dict) and value:
        value = _marked(value)
        items = [f"{pad}{json.dumps(str(k))}: {_pretty(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if level < 2 and isinstance(value, list) and value:
        items = [pad + _pretty(v, 2) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # a NaN or Inf somewhere inside
        return json.dumps(json_safe(value), allow_nan=False)


def _marked(document: dict[str, Any]) -> dict[str, Any]:
    """One object as :func:`json_safe` leaves it at its own level: its non-finite fields (and
    list items) null and recorded under ``"nonfinite"``; nested values untouched."""
    marks: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key], marks[key] = None, _marker(value)
        elif isinstance(value, list) and any(
            isinstance(item, float) and not math.isfinite(item) for item in value
        ):
            items = []
            for i, item in enumerate(value):
                if isinstance(item, float) and not math.isfinite(item):
                    items.append(None)
                    marks[f"{key}/{i}"] = _marker(item)
                else:
                    items.append(item)
            out[key] = items
        else:
            out[key] = value
    if marks:
        out[NONFINITE_KEY] = marks
    return out


@cache
def schema() -> dict[str, Any]:
    """The report's JSON Schema, shipped inside the package."""
    text = resources.files("qcompress").joinpath("report.schema.json").read_text()
    return json.loads(text)
