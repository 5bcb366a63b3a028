"""The one small interface every weight-file format implements.

Readers are lazy: listing tensors reads only the file's index, and ``read`` materialises one tensor,
so peak memory follows the largest tensor rather than the model. Readers know nothing about
quantization; they hand out numpy arrays (bfloat16 as ``ml_dtypes.bfloat16``).

``ml_dtypes`` (which registers bfloat16 and float8 with numpy) costs about half a second to
import, so it is imported by :func:`numpy_dtype` only when a name numpy does not know is met:
a float32-only file never loads it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

Layout = Literal["pytorch", "keras"]


def numpy_dtype(name: str) -> np.dtype:
    """``np.dtype(name)``, registering the ml_dtypes types (bfloat16, float8_*) first if numpy
    does not know ``name`` yet; names neither knows raise numpy's TypeError as before."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # noqa: F401 - registers bfloat16 / float8 so np.dtype("bfloat16") works

        return np.dtype(name)


@dataclass(frozen=True)
class TensorInfo:
    """What the file's index says about one tensor, before any of its bytes are read."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name; "bfloat16" for bf16

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * numpy_dtype(self.dtype).itemsize


class WeightReader(ABC):
    """A weight file opened for reading. Use as a context manager."""

    format: ClassVar[str]
    # Where output channels are by convention: "pytorch" [out, in, ...], "keras" [..., in, out].
    layout: ClassVar[Layout]

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @abstractmethod
    def tensor_infos(self) -> list[TensorInfo]:
        """Every tensor in file order."""

    @abstractmethod
    def read(self, name: str) -> np.ndarray:
        """One tensor's values (a fresh array or a read-only view)."""

    def metadata(self) -> dict[str, Any]:
        """Format-specific, JSON-serialisable data needed to rewrite the file faithfully."""
        return {}

    def release(self, name: str) -> None:  # noqa: B027 - optional hook
        """The caller is done with tensor ``name``: a memory-mapped reader drops its pages from
        this process, so resident memory follows the tensors in use, not the file."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> WeightReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
