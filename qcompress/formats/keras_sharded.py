"""Keras 3 sharded weights: ``model.save_weights("x.weights.h5", max_shard_size=...)`` writes
``x.weights.json`` (``{"metadata": ..., "weight_map": {"/layers/dense/vars": ["x_00000.weights.h5",
...]}}``) beside the shards ``x_00000.weights.h5``, ... in Keras 3's ``.weights.h5`` layout.

Read as one Keras 3 weights file: tensor names are the same paths an unsharded save has, so a
plan written for one fits the other, and ``dequantize -o x.weights.h5`` writes one unsharded file
(groups and attributes of every shard) that ``model.load_weights`` loads. Recognised by content:
a JSON object whose ``weight_map`` maps ``/``-paths to lists of shard files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qcompress.errors import FormatError, InputError
from qcompress.formats._common import read_json, require_regular_file
from qcompress.formats.base import AxisHint, Format, TensorInfo, WeightReader

MAX_INDEX_BYTES = 64 << 20


def is_keras_index(doc: Any) -> bool:
    """Whether a parsed JSON document is a Keras 3 sharded-weights index."""
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    return (
        isinstance(wm, dict)
        and bool(wm)
        and all(isinstance(k, str) and k.startswith("/") for k in wm)
        and all(isinstance(v, list) for v in wm.values())
    )


def _claims(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > MAX_INDEX_BYTES:
            return False
        with open(path, "rb") as fh:
            if fh.read(64).lstrip()[:1] != b"{":
                return False
        return is_keras_index(json.loads(path.read_bytes()))
    except (OSError, ValueError, RecursionError):
        return False


class KerasShardedReader(WeightReader):
    """The shards of a Keras 3 sharded save, as one ``.weights.h5``."""

    format = "h5"
    layout = "keras"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        from qcompress.formats.h5.reader import H5Reader

        require_regular_file(self.path, "index file")
        doc = read_json(self.path, "a valid Keras weights index")
        if not is_keras_index(doc):
            raise FormatError(f"{self.path}: not a Keras sharded-weights index")
        shards = list(dict.fromkeys(s for files in doc["weight_map"].values() for s in files))
        self._readers: list[Any] = []
        self._of: dict[str, Any] = {}
        try:
            for shard in shards:
                if not isinstance(shard, str) or Path(shard).name != shard or not shard:
                    raise FormatError(
                        f"{self.path}: shard {shard!r} must be a plain file name in its folder"
                    )
                shard_path = self.path.parent / shard
                if not shard_path.is_file():
                    raise InputError(
                        f"{self.path}: shard {shard} is missing from {shard_path.parent}"
                    )
                reader = H5Reader(shard_path)
                self._readers.append(reader)
                for info in reader.tensor_infos():
                    if info.name in self._of:
                        raise FormatError(f"{shard_path}: tensor {info.name!r} is in two shards")
                    self._of[info.name] = reader
        except BaseException:
            self.close()
            raise
        self._infos = [i for r in self._readers for i in r.tensor_infos()]
        self._groups = self._merged_groups()
        from qcompress.formats.keras3 import keras3_facts

        self._facts = keras3_facts(self._infos, self._groups)

    def _merged_groups(self) -> list[dict[str, Any]]:
        groups: dict[str, dict[str, Any]] = {}
        for r in self._readers:
            for g in r.metadata()["groups"]:
                groups.setdefault(g["name"], g)
        return list(groups.values())

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str) -> np.ndarray:
        reader = self._of.get(name)
        if reader is None:
            raise InputError(f"{self.path}: no tensor named {name!r}")
        return reader.read(name)

    def axis_hints(self) -> Mapping[str, AxisHint]:
        return self._facts.axis_hints

    def as_stored(self) -> Mapping[str, str]:
        return self._facts.as_stored

    def optimizer_state(self) -> frozenset[str]:
        return self._facts.optimizer

    def metadata(self) -> dict[str, Any]:
        """An unsharded ``.weights.h5``'s metadata: every shard's groups and dataset attributes."""
        datasets: dict[str, Any] = {}
        for r in self._readers:
            datasets.update(r.metadata()["datasets"])
        first = self._readers[0].metadata() if self._readers else {"attrs": {}}
        return {
            "format": "h5",
            "attrs": first["attrs"],
            "groups": self._groups,
            "datasets": datasets,
        }

    def close(self) -> None:
        for r in self._readers:
            r.close()
        self._readers = []


FORMAT = Format(
    name="keras-sharded",
    label="Keras sharded weights",
    open=KerasShardedReader,
    layout="keras",
    claims=_claims,
)
