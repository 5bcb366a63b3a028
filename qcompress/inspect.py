"""``inspect``: a weight file's or an artifact's tensors, and for artifacts their bits and error,
read from the header and the stats tensor alone (no tensor is decoded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qcompress.artifact.inputs import open_input
from qcompress.artifact.reader import Artifact
from qcompress.artifact.recipe import QUANTIZED
from qcompress.artifact.sharded import ShardedArtifact
from qcompress.formats.base import WeightReader
from qcompress.formats.gguf import GgufReader
from qcompress.report import sqnr_or_none


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
        info, q, u = e.info, e.quantized, e.uniform
        tensors.append(
            {
                "name": e.name,
                "shape": list(e.shape),
                "dtype": e.dtype,
                "parameters": info.size,
                "bytes": info.nbytes,
                "action": e.action,
                "bits": None if q is None else q.bits,
                "scheme": None if q is None else q.scheme,
                "granularity": u.granularity if u else None if q is None else q.granularity,
                "axis": u.axis if u else None if q is None else q.axis,
                "group_size": None if q is None else q.group_size,
                "mode": "variable-rate" if u else None if q is None else "fixed-rate",
                "stored_bytes": art.stored_bytes(e),
                "raw_stored_bytes": art.raw_bytes(e),  # before the entropy stage
                "entropy_coder": "+".join(dict.fromkeys(art.coders(e).values())) or None,
                "mse": float(row[0]),
                "max_abs_error": float(row[1]),
                "sqnr_db": sqnr_or_none(float(row[2])),
            }
        )
    quantized = [t for t in tensors if t["action"] == QUANTIZED]
    q_params = sum(t["parameters"] for t in quantized)
    floats = [t for t in tensors if t["action"] != "passthrough"]
    f_params = sum(t["parameters"] for t in floats)
    file_bytes = _total_bytes(art)
    return {
        "path": str(path),
        "kind": "artifact",
        "format": "safetensors",
        "source_format": art.source["format"],
        "file_bytes": file_bytes,
        "parameters": sum(t["parameters"] for t in tensors),
        "bits_per_weight": (
            8 * sum(t["stored_bytes"] for t in quantized) / q_params if q_params else None
        ),
        "bits_per_weight_before_entropy": (
            8 * sum(t["raw_stored_bytes"] for t in quantized) / q_params if q_params else None
        ),
        # What --target-bpw counts (every stored float tensor), and the whole file per weight.
        "float_bits_per_weight": (
            8 * sum(t["stored_bytes"] for t in floats) / f_params if f_params else None
        ),
        "file_bits_per_weight": 8 * file_bytes / f_params if f_params else None,
        "by_width": _by_width([t for t in quantized if t["bits"] is not None]),
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
