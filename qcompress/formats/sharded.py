"""Sharded safetensors checkpoints: a ``*.safetensors.index.json`` that maps tensors to shard files.

The index is the Hugging Face layout, ``{"metadata": {...}, "weight_map": {tensor: file}}``, with
shard files named relative to the index's folder. A checkpoint may be named by its index file or
by the folder holding exactly one index. Shards are listed in the order their first tensor appears
in the weight map, which is also the order the tools that write these files use.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompress.errors import FormatError, InputError
from qcompress.formats._common import read_json, require_regular_file
from qcompress.formats.base import Format, TensorInfo, WeightReader
from qcompress.formats.keras_archive import is_archive_folder
from qcompress.formats.safetensors import SafetensorsReader

INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20  # an index of a million tensors is ~50 MB; anything larger is hostile


@dataclass(frozen=True)
class ShardIndex:
    """A parsed index: where it is, its shard files in order, and which shard holds each tensor."""

    path: Path
    metadata: dict[str, Any]
    weight_map: dict[str, str]  # tensor name -> shard file name (relative to the index's folder)

    @property
    def shards(self) -> list[str]:
        return list(dict.fromkeys(self.weight_map.values()))

    def shard_path(self, shard: str) -> Path:
        return self.path.parent / shard

    def names_in(self, shard: str) -> list[str]:
        return [name for name, s in self.weight_map.items() if s == shard]


def find_index(path: Path) -> Path | None:
    """The index file ``path`` names (itself, or the one in a folder), or None for a plain file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*" + INDEX_SUFFIX))
        if not found and is_archive_folder(path):
            return None  # a Keras 3 archive saved as a folder: formats.keras_archive reads it
        if not found:
            raise InputError(
                f"{path}: is a folder without a *{INDEX_SUFFIX} (name a weight file or an index)"
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise InputError(f"{path}: holds several indexes ({names}); name one of them")
        return found[0]
    if not path.is_file():
        return None  # a FIFO or device must not be opened: the format readers refuse it
    try:
        with open(path, "rb") as fh:
            start = fh.read(64).lstrip()
        # A JSON object opens with '{' then '"' or '}'; a safetensors header length never does.
        if not start.startswith(b"{") or start[1:].lstrip()[:1] not in (b'"', b"}"):
            return None
        if path.stat().st_size > MAX_INDEX_BYTES:
            return None
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None  # not an index: the format readers will say what it is, or what is wrong
    return path if isinstance(doc, dict) and "weight_map" in doc else None


def read_index(path: Path) -> ShardIndex:
    """Parse and check an index: JSON of the right shape, shard names that stay in its folder."""
    path = Path(path)
    size = require_regular_file(path, "index file")
    if size > MAX_INDEX_BYTES:
        raise FormatError(f"{path}: index is {size} bytes, over the {MAX_INDEX_BYTES} limit")
    doc = read_json(path, "a valid index JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise FormatError(f"{path}: an index needs a 'weight_map' object of tensor -> shard file")
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise FormatError(f"{path}: the index's 'metadata' must be an object")
    weight_map: dict[str, str] = {}
    for name, shard in doc["weight_map"].items():
        weight_map[name] = check_shard_name(path, shard, f"tensor {name!r} maps to")
    if not weight_map:
        raise FormatError(f"{path}: the index maps no tensors")
    return ShardIndex(path, metadata, weight_map)


def check_shard_name(index_path: Path, shard: Any, what: str) -> str:
    """``shard`` if it names a file in the index's own folder; else a FormatError starting with
    ``what`` ("tensor 'x' maps to"). No "..", no absolute path, no folder part, no NUL: an index
    must not make qcompress open files outside the checkpoint."""
    if (
        not isinstance(shard, str)
        or shard in ("", ".", "..")
        or "\x00" in shard
        or Path(shard).name != shard
    ):
        raise FormatError(
            f"{index_path}: {what} {shard!r}; shard files must be plain file names in the "
            "index's folder"
        )
    return shard


def write_index(path: Path, metadata: dict[str, Any], weight_map: dict[str, str]) -> None:
    """Write an index deterministically (the weight map in the order given)."""
    doc = {"metadata": metadata, "weight_map": weight_map}
    Path(path).write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


class ShardedReader(WeightReader):
    """Every tensor of a sharded safetensors checkpoint, through one reader; shards open lazily."""

    format = "safetensors"
    layout = "pytorch"

    def __init__(self, index: ShardIndex) -> None:
        super().__init__(index.path)
        self.index = index
        self._open: tuple[str, SafetensorsReader] | None = None
        self._infos: list[TensorInfo] = []
        self._shard_of: dict[str, str] = {}
        for shard in index.shards:
            with self._shard_reader(shard) as reader:
                check_shard(index, shard, [i.name for i in reader.tensor_infos()])
                for info in reader.tensor_infos():
                    self._infos.append(info)
                    self._shard_of[info.name] = shard

    def _shard_reader(self, shard: str) -> SafetensorsReader:
        path = self.index.shard_path(shard)
        if not path.is_file():
            raise InputError(f"{self.index.path}: shard {shard} is missing from {path.parent}")
        return SafetensorsReader(path)

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str) -> np.ndarray:
        shard = self._shard_of.get(name)
        if shard is None:
            raise InputError(f"{self.path}: no tensor named {name!r}")
        if self._open is None or self._open[0] != shard:
            self.close()
            self._open = (shard, self._shard_reader(shard))
        return self._open[1].read(name)

    def metadata(self) -> dict[str, Any]:
        return {"format": "safetensors", "__metadata__": {}, "index_metadata": self.index.metadata}

    def release(self, name: str) -> None:
        if self._open is not None and self._shard_of.get(name) == self._open[0]:
            self._open[1].release(name)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


def check_shard(index: ShardIndex, shard: str, names: Iterable[str]) -> None:
    """The shard holds exactly the tensors the index maps to it."""
    expected = set(index.names_in(shard))
    actual = set(names)
    missing, extra = sorted(expected - actual), sorted(actual - expected)
    if missing:
        raise FormatError(
            f"{index.shard_path(shard)}: lacks tensor {missing[0]!r} that {index.path.name} maps "
            "to it"
        )
    if extra:
        raise FormatError(
            f"{index.shard_path(shard)}: holds tensor {extra[0]!r} that {index.path.name} does "
            "not map to it"
        )


def _open(path: Path) -> WeightReader:
    index = find_index(path)
    if index is None:
        raise InputError(f"{path}: not a sharded checkpoint index")
    return ShardedReader(read_index(index))


def _claims(path: Path) -> bool:
    return find_index(path) is not None


# A sharded safetensors checkpoint: its index file, or the folder holding it. Written by the
# quantize workflow (``--shard``), not through ``write_weights``.
FORMAT = Format(
    name="safetensors-sharded",
    label="sharded safetensors",
    open=_open,
    layout="pytorch",
    claims=_claims,
)
