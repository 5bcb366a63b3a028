"""The data behind ``inspect --histogram`` and ``inspect --errors``, callable from Python.

The CLI only draws (:mod:`qcompress.cli.plots`); the numbers come from here so a notebook can plot
the same thing: a tensor's value histogram with the clipping range its grid covers and, for an
artifact, the quantization levels it decodes to; and every quantized tensor's SQNR, worst first.
One tensor is read at a time, so memory follows the tensor, not the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompress import engine
from qcompress.artifact.inputs import open_if_artifact
from qcompress.artifact.recipe import QUANTIZED, TensorRecipe
from qcompress.config import QuantizeOptions
from qcompress.engine.spec import NonFiniteError
from qcompress.errors import UsageError
from qcompress.formats import open_weights
from qcompress.quantize.policy import decide_tensor

DEFAULT_BINS = 60
MAX_LEVELS = 256  # more distinct decoded values than this (per-channel/group grids): no overlay


@dataclass(frozen=True)
class Histogram:
    """A tensor's values as ``counts`` over ``edges`` (len(counts) + 1), and its grid.

    ``clip_min``/``clip_max``: the range the grid covers (over all channels/groups), for an
    artifact the one used, for a weight file the one the default quantization would choose
    (``clip_source`` says which); None when the tensor is not quantized. ``clipped``: values
    of a weight file outside that range (None for an artifact, whose values lie on its grids).
    ``levels``: for a quantized artifact tensor, every level of its one grid (per tensor) or the
    distinct decoded values, when at most ``MAX_LEVELS`` (``distinct_levels`` counts them).
    """

    name: str
    path: str
    kind: str  # "artifact" or "weights"
    dtype: str
    shape: list[int]
    action: str
    bits: int | None
    count: int
    nonfinite: int
    min: float | None
    max: float | None
    counts: list[int]
    edges: list[float]
    clip_min: float | None
    clip_max: float | None
    clip_source: str | None
    clipped: int | None
    levels: list[float] | None
    distinct_levels: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tensor_histogram(path: str | Path, name: str, *, bins: int = DEFAULT_BINS) -> Histogram:
    """The histogram of tensor ``name`` of any weight file or artifact at ``path``."""
    if bins < 1:
        raise UsageError(f"bins: must be at least 1, got {bins}")
    path = Path(path)
    art = open_if_artifact(path)
    if art is not None:
        with art:
            found = next((e for e in art.entries if e.name == name), None)
            if found is None:
                raise UsageError(f"{path}: has no tensor named {name!r}")
            values, clip, levels = _artifact_tensor(art, found)
            described = {
                "name": found.name,
                "dtype": found.dtype,
                "shape": list(found.shape),
                "action": found.action,
                "bits": None if found.quantized is None else found.quantized.bits,
            }
            return _build(path, "artifact", described, values, clip, "artifact", levels, bins)
    with open_weights(path) as reader:
        info = next((i for i in reader.tensor_infos() if i.name == name), None)
        if info is None:
            raise UsageError(f"{path}: has no tensor named {name!r}")
        values = reader.read(name)
        hint = reader.axis_hints().get(name)
        plan = decide_tensor(info, reader.layout, QuantizeOptions(), hint)
        clip = None
        if plan.action == QUANTIZED and plan.spec is not None:
            try:
                q = engine.quantize(values, plan.spec)
                clip = (float(np.min(q.clip_min)), float(np.max(q.clip_max)))
            except NonFiniteError:
                clip = None
        entry = {
            "name": name,
            "dtype": info.dtype,
            "shape": list(info.shape),
            "action": plan.action,
            "bits": plan.spec.bits if plan.action == QUANTIZED and plan.spec else None,
        }
        return _build(path, "weights", entry, values, clip, "default --bits 8", None, bins)


def _artifact_tensor(
    art: Any, entry: TensorRecipe
) -> tuple[np.ndarray, tuple[float, float] | None, np.ndarray | None]:
    """Decoded values, the range the grids cover and the levels of one entry.

    The artifact does not store the clipping range (a report-only field), so it is rebuilt from
    the scales and zero-points: each grid spans (lowest code - zero) x scale to (highest code -
    zero) x scale. A single grid (per tensor) gives every level it has; many grids give the
    distinct values the tensor decodes to."""
    if entry.quantized is None:
        return art.stored_tensor(entry), None, None
    q = art.quantized(entry)
    values = engine.dequantize(q)
    qmin, qmax = engine.code_range(q.spec.bits, q.spec.scheme)
    scale = np.asarray(q.scale, dtype=np.float64)
    zero = 0.0 if q.zero_point is None else np.asarray(q.zero_point, dtype=np.float64)
    lo, hi = (qmin - zero) * scale, (qmax - zero) * scale
    clip = (float(np.min(lo)), float(np.max(hi))) if scale.size else None
    if scale.size == 1:
        levels = (np.arange(qmin, qmax + 1, dtype=np.float64) - np.reshape(zero, -1)[0]) * float(
            scale.reshape(-1)[0]
        )
    else:
        levels = np.unique(np.asarray(values, dtype=np.float64))
    return values, clip, levels


def _build(
    path: Path,
    kind: str,
    entry: dict[str, Any],
    values: np.ndarray,
    clip: tuple[float, float] | None,
    clip_source: str,
    levels: np.ndarray | None,
    bins: int,
) -> Histogram:
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = flat[np.isfinite(flat)]
    lo = float(finite.min()) if finite.size else None
    hi = float(finite.max()) if finite.size else None
    if finite.size:
        a, b = lo, hi
        if clip is not None:
            a, b = min(a, clip[0]), max(b, clip[1])
        if a == b:
            a, b = a - 0.5, b + 0.5
        counts, edges = np.histogram(finite, bins=bins, range=(a, b))
    else:
        counts, edges = np.zeros(0, np.int64), np.zeros(0)
    clipped = None  # an artifact's decoded values lie on its grids: only originals get clipped
    if clip is not None and kind == "weights":
        clipped = int(np.count_nonzero((finite < clip[0]) | (finite > clip[1])))
    return Histogram(
        name=entry["name"],
        path=str(path),
        kind=kind,
        dtype=entry["dtype"],
        shape=list(entry["shape"]),
        action=entry["action"],
        bits=entry.get("bits") if entry["action"] == QUANTIZED else None,
        count=int(flat.size),
        nonfinite=int(flat.size - finite.size),
        min=lo,
        max=hi,
        counts=[int(c) for c in counts],
        edges=[float(e) for e in edges],
        clip_min=None if clip is None else clip[0],
        clip_max=None if clip is None else clip[1],
        clip_source=None if clip is None else clip_source,
        clipped=clipped,
        levels=(
            [float(v) for v in levels] if levels is not None and levels.size <= MAX_LEVELS else None
        ),
        distinct_levels=None if levels is None else int(levels.size),
    )


def errors_worst_first(inspected: dict[str, Any]) -> list[dict[str, Any]]:
    """The quantized tensors of an artifact's ``api.inspect`` result, lowest SQNR first (exact
    ones last): name, bits, SQNR dB (None when exact), MSE and max abs error."""
    if inspected.get("kind") != "artifact":
        raise UsageError(
            f"{inspected.get('path')}: --errors needs an artifact (qcompress quantize makes one)"
        )
    rows = [
        {
            "name": t["name"],
            "bits": t["bits"],
            "sqnr_db": t["sqnr_db"],
            "mse": t["mse"],
            "max_abs_error": t["max_abs_error"],
        }
        for t in inspected["tensors"]
        if t["action"] == QUANTIZED
    ]
    rows.sort(key=lambda r: (r["sqnr_db"] is None, r["sqnr_db"] or 0.0, r["name"]))
    return rows
