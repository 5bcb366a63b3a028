"""A sharded artifact (an index and its shard artifacts) read as one artifact."""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompress.artifact.reader import Artifact
from qcompress.artifact.recipe import METADATA_KEY, TensorRecipe
from qcompress.engine.spec import QuantizedTensor
from qcompress.errors import FormatError, InputError
from qcompress.formats.sharded import ShardIndex, check_shard_name


class ShardedArtifact:
    """The shards of a sharded artifact as one: its entries in shard order, each read from its own
    shard. Every shard is checked as :class:`Artifact` checks a single file, and the index must
    name exactly the tensors the shards hold."""

    def __init__(self, index: ShardIndex) -> None:
        self.path = index.path
        meta = index.metadata.get(METADATA_KEY)
        try:
            shard_names = list(meta["shards"])
            placement = dict(meta["tensors"])
        except (TypeError, KeyError, ValueError):
            raise FormatError(f"{self.path}: not a qcompress artifact index") from None
        for name in shard_names:  # the same rule as the index's weight_map
            check_shard_name(self.path, name, f"{METADATA_KEY}.shards lists")
        self.shards: list[Artifact] = []
        try:
            for name in shard_names:
                shard_path = index.shard_path(name)
                if not shard_path.is_file():
                    raise InputError(
                        f"{self.path}: shard {name} is missing from {shard_path.parent}"
                    )
                self.shards.append(Artifact(shard_path))
            self._check(index, shard_names, placement)
        except BaseException:
            self.close()
            raise
        self.entries = [e for shard in self.shards for e in shard.entries]
        self._owner = {e.name: shard for shard in self.shards for e in shard.entries}
        self.source: dict[str, Any] = self.shards[0].source if self.shards else {"metadata": {}}
        self.source_index: dict[str, Any] = meta.get("source_index") or {}

    def _check(self, index: ShardIndex, names: list[str], placement: dict[str, str]) -> None:
        for name, shard in zip(names, self.shards, strict=True):
            held = {e.name for e in shard.entries}
            mapped = {t for t, s in placement.items() if s == name}
            if held != mapped:
                raise FormatError(
                    f"{self.path}: lists other tensors for {name} than the shard holds; "
                    "the index or a shard was replaced"
                )
            stored = {n for e in shard.entries for n in e.stored_names}
            mapped_stored = {t for t, s in index.weight_map.items() if s == name}
            if stored != mapped_stored:
                raise FormatError(f"{self.path}: weight_map does not match shard {name}")

    def stats(self) -> np.ndarray:
        return np.vstack([s.stats() for s in self.shards])

    def verify(self) -> list[str]:
        return [n for s in self.shards for n in s.verify()]

    def check_values(self, skip: set[str] | frozenset[str] = frozenset()) -> None:
        for shard in self.shards:
            shard.check_values(skip)

    def stored_bytes(self, entry: TensorRecipe) -> int:
        return self._owner[entry.name].stored_bytes(entry)

    def raw_bytes(self, entry: TensorRecipe) -> int:
        return self._owner[entry.name].raw_bytes(entry)

    def coders(self, entry: TensorRecipe) -> dict[str, str]:
        return self._owner[entry.name].coders(entry)

    def quantized(self, entry: TensorRecipe) -> QuantizedTensor:
        return self._owner[entry.name].quantized(entry)

    def stored_tensor(self, entry: TensorRecipe) -> np.ndarray:
        return self._owner[entry.name].stored_tensor(entry)

    def tensor(self, entry: TensorRecipe) -> np.ndarray:
        return self._owner[entry.name].tensor(entry)

    def release(self, entry: TensorRecipe) -> None:
        self._owner[entry.name].release(entry)

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def __enter__(self) -> ShardedArtifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
