"""HDF5 weight files as Keras writes them, in four modules of one job each.

- ``reader``: ``H5Reader``, the index (every dataset at any depth, every group and attribute) and
  one dataset per ``read``; layout Keras-style ``[..., in, out]``.
- ``probe``: crash isolation; the index is built first in a short-lived child process, so a
  file that crashes or hangs the HDF5 C library becomes a FormatError instead.
- ``attrs``: the tagged JSON encoding of HDF5 attributes that keeps their exact HDF5 types.
- ``writer``: ``write_h5``, groups and attributes rebuilt so Keras loads the file.

h5py and the HDF5 library cost a tenth of a second or more to import, so this package imports
them only when one of those names is first used (a module ``__getattr__``): detecting formats
and reading npz or safetensors files never loads them.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcompress.formats.base import Format, WeightReader

if TYPE_CHECKING:
    from qcompress.formats.h5.attrs import decode_attr, encode_attr
    from qcompress.formats.h5.probe import PROBE_TIMEOUT_ENV, probe_h5, probe_timeout
    from qcompress.formats.h5.reader import H5Reader
    from qcompress.formats.h5.writer import write_h5

__all__ = [
    "FORMAT",
    "PROBE_TIMEOUT_ENV",
    "H5Reader",
    "decode_attr",
    "encode_attr",
    "probe_h5",
    "probe_timeout",
    "write_h5",
]

_LAZY = {
    "H5Reader": "reader",
    "PROBE_TIMEOUT_ENV": "probe",
    "probe_h5": "probe",
    "probe_timeout": "probe",
    "encode_attr": "attrs",
    "decode_attr": "attrs",
    "write_h5": "writer",
}

MAGIC = b"\x89HDF\r\n\x1a\n"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


def _open(path: Path) -> WeightReader:
    from qcompress.formats.h5.reader import H5Reader

    return H5Reader(path)


def _write(path: Path, infos: Any, arrays: Any, metadata: dict[str, Any] | None) -> None:
    from qcompress.formats.h5.writer import write_h5

    if metadata is not None and metadata.get("format") == "keras":
        metadata = metadata.get("weights")  # a .keras archive's weights: a Keras 3 .weights.h5
    write_h5(path, infos, arrays, metadata)


def _user_block_magic(fh: Any, size: int) -> bool:
    """HDF5 may start after a user block of 512, 1024, 2048, ... bytes."""
    offset = 512
    while offset + len(MAGIC) <= size:
        fh.seek(offset)
        if fh.read(len(MAGIC)) == MAGIC:
            return True
        offset *= 2
    return False


# ".keras" is absent: Keras 3 ".keras" files are zip archives (formats.keras_archive).
FORMAT = Format(
    name="h5",
    label="HDF5",
    open=_open,
    layout="keras",
    magics=(MAGIC,),
    deep_sniff=_user_block_magic,
    short_kind="HDF5",
    suffixes=(".h5", ".hdf5"),
    write=_write,
    metadata_from=("keras",),
)
