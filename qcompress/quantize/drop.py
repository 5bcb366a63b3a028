"""Tensors left out of the artifact (``--drop GLOB``, ``--drop-optimizer``) and the summary of
a file's optimizer state: what the report records about both.

A dropped tensor is not stored, so ``dequantize`` does not rebuild it; the report lists each one
with the glob that dropped it. Optimizer state (Adam's slots and counters) is often most of a
training checkpoint and useless for inference, so the report says how much of the file it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompress.config import OPTIMIZER_GLOBS, QuantizeOptions, name_matches
from qcompress.errors import UsageError
from qcompress.formats.base import TensorInfo


@dataclass(frozen=True)
class Dropped:
    """The tensors that stay and the report's ``dropped`` entries for the others."""

    kept: list[TensorInfo]
    dropped: list[dict[str, Any]]


def split_dropped(path: Path, infos: Sequence[TensorInfo], options: QuantizeOptions) -> Dropped:
    """Split ``infos`` by ``options.drop``; a UsageError if nothing would be left."""
    kept, dropped = [], []
    for info in infos:
        glob = next((g for g in options.drop if name_matches(info.name, g)), None)
        if glob is None:
            kept.append(info)
        else:
            dropped.append(
                {
                    "name": info.name,
                    "shape": list(info.shape),
                    "dtype": info.dtype,
                    "bytes": info.nbytes,
                    "matched": glob,
                }
            )
    if infos and not kept:
        raise UsageError(
            f"{path}: --drop leaves no tensor (all {len(infos)} match); drop fewer tensors"
        )
    return Dropped(kept, dropped)


def drop_warnings(options: QuantizeOptions, names: Iterable[str]) -> list[str]:
    """One message per user ``--drop`` glob that matches no tensor (a likely typo); the
    ``--drop-optimizer`` globs only when neither Keras place matches."""
    names = list(names)

    def matches(glob: str) -> bool:
        return any(name_matches(n, glob) for n in names)

    out = [
        f"--drop {g!r} matches no tensor"
        for g in options.drop
        if g not in OPTIMIZER_GLOBS and not matches(g)
    ]
    if set(OPTIMIZER_GLOBS) <= set(options.drop) and not any(map(matches, OPTIMIZER_GLOBS)):
        out.append("--drop-optimizer: the file holds no optimizer state")
    return out


def optimizer_summary(
    infos: Sequence[TensorInfo], optimizer: frozenset[str], dropped: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """How much of the tensors' bytes is optimizer state, and whether it was dropped; None
    for a file without any."""
    state = [i for i in infos if i.name in optimizer]
    if not state:
        return None
    gone = {d["name"] for d in dropped}
    total = sum(i.nbytes for i in infos)
    nbytes = sum(i.nbytes for i in state)
    return {
        "tensors": len(state),
        "bytes": nbytes,
        "fraction": nbytes / total if total else 0.0,
        "dropped_tensors": sum(i.name in gone for i in state),
    }


def without_dropped(metadata: dict[str, Any], dropped: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The source metadata without what it says about dropped tensors (an HDF5 file's dataset
    attributes, also inside a ``.keras`` archive's), so the recipe describes only stored ones;
    their groups stay, so Keras still finds every layer."""
    gone = {d["name"] for d in dropped}
    if not gone:
        return metadata
    out = dict(metadata)
    if out.get("format") == "h5" and isinstance(out.get("datasets"), dict):
        out["datasets"] = {k: v for k, v in out["datasets"].items() if k not in gone}
    if out.get("format") == "keras" and isinstance(out.get("weights"), dict):
        out["weights"] = without_dropped(out["weights"], dropped)
    return out
