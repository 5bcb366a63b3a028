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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal, Protocol, TypeVar

import numpy as np

from qcompress.errors import InputError

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


_T = TypeVar("_T")


class _Closable(Protocol):
    def close(self) -> None: ...


@contextmanager
def closed_on_error(resource: _Closable) -> Iterator[None]:
    """Close ``resource`` (a file or reader just opened) if the block raises, then re-raise: a
    reader that fails while indexing must not leave its file open."""
    try:
        yield
    except BaseException:
        resource.close()
        raise


@dataclass(frozen=True)
class AxisHint:
    """What a file says about one tensor's output-channel axis, and the rule that read it there
    ("Keras 3 DepthwiseConv2D kernel: axis 2"): the policy uses it before the layout's guess,
    an explicit --axis or plan axis still wins, and the report names ``rule``."""

    axis: int
    rule: str


class WeightReader(ABC):
    """A weight file opened for reading. Use as a context manager.

    A reader fills ``_infos`` (every tensor, in file order) when it opens; ``tensor_infos``
    hands out copies of it, and ``_lookup`` gives every reader the same error for a name the
    file does not hold."""

    format: ClassVar[str]
    # Where output channels are by convention: "pytorch" [out, in, ...], "keras" [..., in, out].
    layout: ClassVar[Layout]
    _infos: list[TensorInfo]

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def tensor_infos(self) -> list[TensorInfo]:
        """Every tensor in file order."""
        return list(self._infos)

    def _lookup(self, table: Mapping[str, _T], name: str) -> _T:
        """``table[name]``; a name the file does not hold is an InputError naming the file."""
        try:
            return table[name]
        except KeyError:
            raise InputError(f"{self.path}: no tensor named {name!r}") from None

    @abstractmethod
    def read(self, name: str) -> np.ndarray:
        """One tensor's values (a fresh array or a read-only view)."""

    def metadata(self) -> dict[str, Any]:
        """Format-specific, JSON-serialisable data needed to rewrite the file faithfully."""
        return {}

    def axis_hints(self) -> Mapping[str, AxisHint]:
        """Per tensor name, the output-channel axis the file itself says (a layer class from a
        model config, the op that consumes it); tensors not named fall back to the layout's
        convention. Default: the file says nothing."""
        return {}

    def digest_file(self) -> Path:
        """The file whose SHA-256 and size the report records for this input: the input itself,
        or for a folder input the one file holding its weights."""
        return self.path

    def as_stored(self) -> Mapping[str, str]:
        """Per tensor name, why it must stay exactly as stored (a layer the framework already
        quantized: its float scales belong to its integer codes). Default: none."""
        return {}

    def optimizer_state(self) -> frozenset[str]:
        """The names of optimizer and training state (Adam's slots, iteration counters), which
        inference never reads. Default: none."""
        return frozenset()

    def release(self, name: str) -> None:  # noqa: B027 - optional hook
        """The caller is done with tensor ``name``: a memory-mapped reader drops its pages from
        this process, so resident memory follows the tensors in use, not the file."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> WeightReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pytorch_axis(info: TensorInfo) -> int:
    """PyTorch-style ``[out, in, ...]``: output channels on axis 0."""
    return 0


def keras_axis(info: TensorInfo) -> int:
    """Keras-style ``[..., in, out]``: output channels last, except a depthwise kernel
    ``[kh, kw, channels, multiplier]``, whose outputs are its channels (axis 2)."""
    ndim = len(info.shape)
    leaf = info.name.rsplit("/", 1)[-1]
    if ndim == 4 and leaf.startswith("depthwise_kernel"):
        return 2
    return ndim - 1


LAYOUT_AXES: dict[str, Callable[[TensorInfo], int]] = {
    "pytorch": pytorch_axis,
    "keras": keras_axis,
}
"""The output-channel axis by each framework's convention, for tensors no file says more about."""

Writer = Callable[[Path, Sequence[TensorInfo], Iterable[np.ndarray], "dict[str, Any] | None"], None]
"""Writes tensors streaming; the last argument is ``metadata()`` of a reader of the same format
(None from any other source), which is what it may carry over."""


@dataclass(frozen=True)
class Format:
    """Everything qcompress knows about one format, in one record, so that adding a format is
    one new module (its reader, writer and this record) plus one line in the registry
    (``qcompress.formats.registry.REGISTRY``).

    Content formats are recognised by their first bytes (``magics``: fixed prefixes; ``sniff``:
    any other test of the first 16 bytes; ``deep_sniff``: a test that may seek further, run only
    after every format's quick tests failed). Folder formats (``claims``) are recognised by the
    path itself, before any file is opened. Writable formats name their output ``suffixes``
    and a ``write`` (see ``Writer``)."""

    name: str
    label: str  # how messages name it: "expected .npz, HDF5, safetensors or GGUF content"
    open: Callable[[Path], WeightReader]
    layout: Layout
    magics: tuple[bytes, ...] = ()
    sniff: Callable[[bytes], bool] | None = None
    deep_sniff: Callable[[BinaryIO, int], bool] | None = None
    claims: Callable[[Path], bool] | None = None
    short_kind: str | None = None  # "an HDF5 file": named when a file stops inside the magic
    suffixes: tuple[str, ...] = ()  # output suffixes, the first one the preferred
    write: Writer | None = None
    axis_rule: Callable[[TensorInfo], int] | None = None  # None: the layout's convention
    metadata_from: tuple[str, ...] = ()  # other formats whose metadata ``write`` understands
    # True: ``write`` rebuilds a file only from its own format's metadata (a .keras archive's
    # config), so it is no general output format for any tensors (not in ``FORMATS``).
    needs_source: bool = False
    # Files that writing ``path`` with this metadata makes beside it (ONNX external data): the
    # caller checks them and places them atomically with ``path``, and ``write`` gets their
    # temporaries as ``companions={final: temporary}``.
    companions: Callable[[Path, Mapping[str, Any] | None], tuple[Path, ...]] | None = None

    def default_axis(self, info: TensorInfo) -> int:
        """The output-channel axis of ``info`` when the file says nothing more about it."""
        rule = self.axis_rule or LAYOUT_AXES[self.layout]
        return rule(info)

    def write_file(
        self,
        path: Path,
        infos: Sequence[TensorInfo],
        arrays: Iterable[np.ndarray],
        metadata: Mapping[str, Any],
        companions: Mapping[Path, Path] | None = None,
    ) -> None:
        """Write with ``write``, passing on ``metadata`` only if it came from this format."""
        if self.write is None:
            raise ValueError(f"format {self.name!r} is read only")
        own = dict(metadata) if metadata.get("format") in (self.name, *self.metadata_from) else None
        if self.companions is None:
            self.write(path, infos, arrays, own)
        else:
            self.write(path, infos, arrays, own, companions=companions or {})  # type: ignore[call-arg]

    def companion_paths(self, path: Path, metadata: Mapping[str, Any]) -> tuple[Path, ...]:
        """The side files writing ``path`` from ``metadata`` makes (none for most formats)."""
        if self.companions is None:
            return ()
        return self.companions(
            path, dict(metadata) if metadata.get("format") == self.name else None
        )

    def matches(self, head: bytes) -> bool:
        """Whether the first bytes of a file are this format's (quick tests only)."""
        if any(head.startswith(m) for m in self.magics):
            return True
        return self.sniff is not None and self.sniff(head)

    def could_start(self, head: bytes) -> bool:
        """Whether a file this short could be the start of one of this format's magics."""
        return any(m.startswith(head) for m in self.magics)
