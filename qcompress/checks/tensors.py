"""What verify and compare share: any file as float tensors (artifacts dequantized on read),
the check that two files hold the same tensors, and the error of one tensor against another."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcompress import engine
from qcompress.artifact.inputs import open_if_artifact
from qcompress.artifact.recipe import FLOAT_DTYPES, TensorRecipe
from qcompress.errors import InputError
from qcompress.formats import open_weights
from qcompress.formats.base import TensorInfo
from qcompress.formats.gguf import source_names
from qcompress.report import error_fields


class FloatTensors:
    """Any weight file or artifact as named tensors; artifacts are dequantized on read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._artifact = open_if_artifact(path)
        self._entries: dict[str, TensorRecipe] = {}
        if self._artifact is None:
            self._reader = open_weights(path)
        else:
            self._entries = {e.name: e for e in self._artifact.entries}

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
        return [e.info for e in self._entries.values()]

    def read(self, name: str) -> np.ndarray:
        if self._artifact is None:
            return self._reader.read(name)
        return self._artifact.tensor(self._entries[name])

    def close(self) -> None:
        (self._artifact or self._reader).close()

    def __enter__(self) -> FloatTensors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tensor_errors(reference: np.ndarray, other: np.ndarray) -> dict[str, float | None]:
    if str(reference.dtype) not in FLOAT_DTYPES or str(other.dtype) not in FLOAT_DTYPES:
        reference, other = reference.astype(np.float64), other.astype(np.float64)
    return error_fields(engine.error_stats(reference, other))


def check_same_tensors(
    reference: FloatTensors, other_path: Path, others: list[tuple[str, TensorInfo]]
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
        shape = other.shape
        if tuple(shape) != ref[name].shape:
            raise InputError(
                f"{other_path}: tensor {name!r} has shape {list(shape)} but "
                f"{reference.path} has {list(ref[name].shape)}"
            )
    return ref
