"""``inspect``: a weight file's or an artifact's tensors, and for artifacts their bits and error,
read from the header and the stats tensor alone (no tensor is decoded). The result is typed;
``as_dict`` gives the JSON document ``qcompress inspect --json`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from qcompress.artifact.inputs import open_input
from qcompress.artifact.reader import Artifact
from qcompress.artifact.recipe import QUANTIZED
from qcompress.artifact.sharded import ShardedArtifact
from qcompress.documents import OMIT_NONE, as_document
from qcompress.errors import UsageError
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.formats.gguf import GgufReader
from qcompress.report import quant_fields, sqnr_or_none


@dataclass(frozen=True)
class FileTensor(TensorInfo):
    """One tensor of a weight file, as its index describes it (name, shape, dtype first)."""

    parameters: int
    bytes: int
    gguf_type: str | None = field(default=None, metadata=OMIT_NONE)  # GGUF files only


@dataclass(frozen=True)
class ArtifactTensor(TensorInfo):
    """One tensor of an artifact (name, shape, dtype first): what its recipe says and the error
    quantizing it measured (recipe fields None for tensors kept in float or passed through)."""

    parameters: int
    bytes: int
    action: str
    bits: int | None
    scheme: str | None
    granularity: str | None
    axis: int | None
    group_size: int | None
    mode: str | None  # fixed-rate or variable-rate; None in float
    stored_bytes: int
    raw_stored_bytes: int  # before the entropy stage
    entropy_coder: str | None
    mse: float
    max_abs_error: float
    sqnr_db: float | None


@dataclass(frozen=True)
class WidthShare:
    """The tensors and weights stored at one code width, and their bits per weight."""

    bits: int
    tensors: int
    parameters: int
    stored_bytes: int
    bits_per_weight: float | None


class _Inspection:
    """What both kinds of result do: their JSON document, and one tensor alone."""

    path: Path
    tensors: tuple[FileTensor, ...] | tuple[ArtifactTensor, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of ``qcompress inspect --json``."""
        return as_document(self)

    def only(self, name: str) -> Any:
        """The same result with tensor ``name`` alone (``inspect --tensor``)."""
        tensors = tuple(t for t in self.tensors if t.name == name)
        if not tensors:
            raise UsageError(f"{self.path}: has no tensor named {name!r}")
        return replace(self, tensors=tensors)  # type: ignore[type-var]


@dataclass(frozen=True)
class WeightsInspection(_Inspection):
    """A weight file's tensors."""

    path: Path
    kind: Literal["weights"]
    format: str
    layout: str
    file_bytes: int
    parameters: int
    tensors: tuple[FileTensor, ...]


@dataclass(frozen=True)
class ArtifactInspection(_Inspection):
    """An artifact's tensors with their bits and error, and where its bits went by code width."""

    path: Path
    kind: Literal["artifact"]
    format: Literal["safetensors"]
    source_format: str
    file_bytes: int
    parameters: int
    bits_per_weight: float | None
    bits_per_weight_before_entropy: float | None
    float_bits_per_weight: float | None
    file_bits_per_weight: float | None
    by_width: tuple[WidthShare, ...]
    tensors: tuple[ArtifactTensor, ...]


Inspection = WeightsInspection | ArtifactInspection
_RECIPE_COLUMNS = ("bits", "scheme", "granularity", "axis", "group_size")


def inspect(path: str | Path) -> Inspection:
    """List a weight file's or an artifact's tensors; for artifacts, with bits and error."""
    path = Path(path)
    with open_input(path) as opened:
        if isinstance(opened, WeightReader):
            return _inspect_weights(path, opened)
        return _inspect_artifact(path, opened)


def _inspect_weights(path: Path, reader: WeightReader) -> WeightsInspection:
    gguf = reader if isinstance(reader, GgufReader) else None
    tensors = tuple(
        FileTensor(
            i.name,
            i.shape,
            i.dtype,
            i.size,
            i.nbytes,
            None if gguf is None else gguf.gguf_type(i.name),
        )
        for i in reader.tensor_infos()
    )
    return WeightsInspection(
        path=path,
        kind="weights",
        format=reader.format,
        layout=reader.layout,
        file_bytes=path.stat().st_size,
        parameters=sum(t.parameters for t in tensors),
        tensors=tensors,
    )


def _inspect_artifact(path: Path, art: Artifact | ShardedArtifact) -> ArtifactInspection:
    stats = art.stats()
    tensors = []
    for e, row in zip(art.entries, stats, strict=True):
        info, u = e.info, e.uniform
        fields = quant_fields(e.quantized, _RECIPE_COLUMNS)
        if u is not None:
            fields.update(granularity=u.granularity, axis=u.axis)
        tensors.append(
            ArtifactTensor(
                name=e.name,
                shape=tuple(e.shape),
                dtype=e.dtype,
                parameters=info.size,
                bytes=info.nbytes,
                action=e.action,
                **fields,
                mode="variable-rate" if u else None if e.quantized is None else "fixed-rate",
                stored_bytes=art.stored_bytes(e),
                raw_stored_bytes=art.raw_bytes(e),
                entropy_coder="+".join(dict.fromkeys(art.coders(e).values())) or None,
                mse=float(row[0]),
                max_abs_error=float(row[1]),
                sqnr_db=sqnr_or_none(float(row[2])),
            )
        )
    quantized = [t for t in tensors if t.action == QUANTIZED]
    q_params = sum(t.parameters for t in quantized)
    floats = [t for t in tensors if t.action != "passthrough"]
    f_params = sum(t.parameters for t in floats)
    file_bytes = _total_bytes(art)
    return ArtifactInspection(
        path=path,
        kind="artifact",
        format="safetensors",
        source_format=art.source["format"],
        file_bytes=file_bytes,
        parameters=sum(t.parameters for t in tensors),
        bits_per_weight=(
            8 * sum(t.stored_bytes for t in quantized) / q_params if q_params else None
        ),
        bits_per_weight_before_entropy=(
            8 * sum(t.raw_stored_bytes for t in quantized) / q_params if q_params else None
        ),
        # What --target-bpw counts (every stored float tensor), and the whole file per weight.
        float_bits_per_weight=(
            8 * sum(t.stored_bytes for t in floats) / f_params if f_params else None
        ),
        file_bits_per_weight=8 * file_bytes / f_params if f_params else None,
        by_width=_by_width([t for t in quantized if t.bits is not None]),
        tensors=tuple(tensors),
    )


def _by_width(quantized: list[ArtifactTensor]) -> tuple[WidthShare, ...]:
    """Per code width: how many tensors and weights use it, and their bits per weight (scales
    included), so a mixed-precision artifact shows where its bits went."""
    out = []
    for bits in sorted({t.bits for t in quantized if t.bits is not None}):
        group = [t for t in quantized if t.bits == bits]
        params = sum(t.parameters for t in group)
        stored = sum(t.stored_bytes for t in group)
        out.append(
            WidthShare(bits, len(group), params, stored, 8 * stored / params if params else None)
        )
    return tuple(out)


def _total_bytes(art: Artifact | ShardedArtifact) -> int:
    shards = art.shards if isinstance(art, ShardedArtifact) else [art]
    return sum(shard.path.stat().st_size for shard in shards)
