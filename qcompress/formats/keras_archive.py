"""Keras 3 ``.keras`` archives: a zip (or a folder) of ``config.json``, ``metadata.json``, the
weights as ``model.weights.h5`` (or ``model.weights.npz``) and optional ``assets/``.

Recognised by content (a zip whose entries are those, or a folder holding them), not by the
name. The weights are read by the HDF5 (or npz) reader from a private temporary copy, with the
layer classes of ``config.json`` for the axes; every other entry is carried in the metadata
byte for byte (with its name, order, date and compression), so ``dequantize -o model.keras``
writes an archive whose only changed entry is the weights, which ``keras.saving.load_model``
loads. ``dequantize -o x.weights.h5`` writes the weights alone, for ``model.load_weights``.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompress.errors import FormatError, InputError, UsageError
from qcompress.formats._common import one_line, require_regular_file
from qcompress.formats.base import AxisHint, Format, TensorInfo, WeightReader

CONFIG, METADATA = "config.json", "metadata.json"
WEIGHTS = ("model.weights.h5", "model.weights.npz")
_ZIP_MAGIC = b"PK\x03\x04"
# zipfile turns damage into many exception types (BadZipFile, NotImplementedError for a garbled
# version field, zlib.error, EOFError, ...): in a file being parsed, all mean "corrupt".
_ZIP_ERRORS = (Exception,)


def is_archive_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding what a ``.keras`` zip holds."""
    return (
        path.is_dir()
        and (path / CONFIG).is_file()
        and (path / METADATA).is_file()
        and any((path / w).is_file() for w in WEIGHTS)
    )


def _may_name_keras_entries(path: Path) -> bool:
    """False only when the zip's central directory (found through its end record) holds none of
    Keras' entry names: an npz of 100k tensors is turned away without parsing 100k entries
    twice. Anything unusual (zip64, a damaged end record) answers True, for the full check."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - (22 + 0xFFFF)))
        tail = fh.read()
        end = tail.rfind(b"PK\x05\x06")
        if end < 0 or len(tail) < end + 22:
            return True
        cd_size, cd_offset = struct.unpack("<II", tail[end + 12 : end + 20])
        if 0xFFFFFFFF in (cd_size, cd_offset) or cd_offset + cd_size > size:
            return True
        fh.seek(cd_offset)
        directory = fh.read(cd_size)
    keys = (*WEIGHTS, CONFIG, METADATA)
    return any(k.encode() in directory for k in keys)


def _claims(path: Path) -> bool:
    """A folder of the archive's files, or a regular file that is a zip listing Keras' entries,
    whatever its name (a damaged zip named ``.keras`` too, for a clear message)."""
    if is_archive_folder(path):
        return True
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            if fh.read(4) != _ZIP_MAGIC:
                return False
        if not _may_name_keras_entries(path):
            return False
    except OSError:
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except _ZIP_ERRORS:
        return path.suffix.lower() == ".keras"  # a damaged archive: say so as one
    # the weights entry alone, or the two JSON entries, say "Keras archive": the reader then
    # names whatever else is missing
    return any(w in names for w in WEIGHTS) or {CONFIG, METADATA} <= names


class KerasArchiveReader(WeightReader):
    """A ``.keras`` archive (zip or folder); tensors are those of its weights file."""

    format = "keras"
    layout = "keras"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._tmp: Path | None = None
        self._inner: WeightReader | None = None
        try:
            if self.path.is_dir():
                self._container = "folder"
                self._entries, self._weights_entry, weights = self._read_folder()
            else:
                self._container = "zip"
                self._entries, self._weights_entry, weights = self._read_zip()
            config = self._config()
            self._inner = self._open_weights(weights, config)
        except BaseException:
            self.close()
            raise

    def _open_weights(self, weights: Path, config: Any) -> WeightReader:
        """The weights entry's reader; its errors name the archive and the entry."""
        try:
            if self._weights_entry.endswith(".h5"):
                from qcompress.formats.h5.reader import H5Reader

                return H5Reader(weights, config=config)
            from qcompress.formats.npz import NpzReader

            return NpzReader(weights)
        except (FormatError, InputError) as exc:
            text = str(exc).removeprefix(str(weights)).lstrip(": ")
            raise type(exc)(f"{self.path}: entry {self._weights_entry!r}: {text}") from None

    def _read_zip(self) -> tuple[list[dict[str, Any]], str, Path]:
        require_regular_file(self.path)
        try:
            zf = zipfile.ZipFile(self.path)
        except _ZIP_ERRORS as exc:
            raise FormatError(
                f"{self.path}: not a readable .keras archive (truncated or corrupt zip?): "
                f"{one_line(exc)}"
            ) from None
        with zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            weights_entry = self._check_entries(names)
            self._tmp = Path(tempfile.mkdtemp(prefix="qcompress-keras-"))
            entries: list[dict[str, Any]] = []
            weights = self._tmp / Path(weights_entry).name
            for info in infos:
                entry = {
                    "name": info.filename,
                    "date_time": list(info.date_time),
                    "compress_type": info.compress_type,
                    "external_attr": info.external_attr,
                }
                try:
                    if info.filename == weights_entry:
                        with zf.open(info) as src, open(weights, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
                    elif not info.is_dir():
                        entry.update(_encode(zf.read(info)))
                except _ZIP_ERRORS as exc:
                    raise FormatError(
                        f"{self.path}: entry {info.filename!r} cannot be read (truncated or "
                        f"corrupt archive?): {one_line(exc)}"
                    ) from None
                entries.append(entry)
        return entries, weights_entry, weights

    def _read_folder(self) -> tuple[list[dict[str, Any]], str, Path]:
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        names = [p.relative_to(self.path).as_posix() for p in files]
        weights_entry = self._check_entries(names)
        entries = []
        for p, name in zip(files, names, strict=True):
            if name != weights_entry:
                entries.append({"name": name, **_encode(p.read_bytes())})
            else:
                entries.append({"name": name})
        return entries, weights_entry, self.path / weights_entry

    def _check_entries(self, names: Sequence[str]) -> str:
        """The weights entry's name, after checking the archive has what Keras saves."""
        missing = [n for n in (CONFIG, METADATA) if n not in names]
        weights = [w for w in WEIGHTS if w in names]
        if not weights:
            missing.append(" or ".join(WEIGHTS))
        if missing:
            raise FormatError(
                f"{self.path}: .keras archive has no {', '.join(missing)} "
                "(not saved by keras model.save?)"
            )
        return weights[0]

    def _config(self) -> Any:
        raw = next(e for e in self._entries if e["name"] == CONFIG)
        try:
            config = json.loads(_decode(raw) if "data" in raw or "text" in raw else b"")
        except ValueError as exc:
            raise FormatError(f"{self.path}: config.json is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise FormatError(f"{self.path}: config.json is not a JSON object")
        return config

    def digest_file(self) -> Path:
        return self.path / self._weights_entry if self._container == "folder" else self.path

    def tensor_infos(self) -> list[TensorInfo]:
        assert self._inner is not None
        return self._inner.tensor_infos()

    def read(self, name: str) -> np.ndarray:
        assert self._inner is not None
        return self._inner.read(name)

    def release(self, name: str) -> None:
        if self._inner is not None:
            self._inner.release(name)

    def axis_hints(self) -> Mapping[str, AxisHint]:
        if self._inner is not None and self._inner.format == "npz":
            from qcompress.formats.keras3 import keras3_facts

            return keras3_facts(self._inner.tensor_infos(), [], self._config()).axis_hints
        return self._inner.axis_hints() if self._inner is not None else {}

    def as_stored(self) -> Mapping[str, str]:
        return self._inner.as_stored() if self._inner is not None else {}

    def optimizer_state(self) -> frozenset[str]:
        if self._inner is None:
            return frozenset()
        if self._inner.format == "npz":
            return frozenset(
                i.name for i in self._inner.tensor_infos() if i.name.startswith("optimizer/")
            )
        return self._inner.optimizer_state()

    def metadata(self) -> dict[str, Any]:
        """``{"format": "keras", "container", "entries": [...], "weights_entry", "weights": the
        weights reader's metadata}``; each entry's bytes as ``text`` (UTF-8) or ``data``
        (base64), except the weights entry's."""
        assert self._inner is not None
        return {
            "format": "keras",
            "container": self._container,
            "entries": self._entries,
            "weights_entry": self._weights_entry,
            "weights": self._inner.metadata(),
        }

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _encode(data: bytes) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data": base64.b64encode(data).decode("ascii")}


def _decode(entry: Mapping[str, Any]) -> bytes:
    if "text" in entry:
        return str(entry["text"]).encode("utf-8")
    return base64.b64decode(entry.get("data", ""))


def write_keras(
    path: Path,
    infos: Sequence[TensorInfo],
    arrays: Iterable[np.ndarray],
    metadata: dict[str, Any] | None,
) -> None:
    """Write a ``.keras`` zip: the source archive's entries in their order, byte for byte, with
    the weights entry rebuilt from ``infos``/``arrays``. Needs the metadata of a
    ``KerasArchiveReader``: the model's config cannot be made up."""
    if not metadata or metadata.get("format") != "keras":
        raise UsageError(
            f"{path}: a .keras archive needs the model's config.json, which only an artifact "
            "made from a .keras archive carries; write .weights.h5, .h5 or .npz instead"
        )
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="qcompress-keras-") as tmp:
        weights_entry = metadata["weights_entry"]
        weights = Path(tmp) / Path(weights_entry).name
        if weights_entry.endswith(".h5"):
            from qcompress.formats.h5.writer import write_h5

            write_h5(weights, infos, arrays, metadata.get("weights"))
        else:
            from qcompress.formats.npz import write_npz

            write_npz(weights, infos, arrays)
        with zipfile.ZipFile(path, "w") as zf:
            for entry in metadata["entries"]:
                info = zipfile.ZipInfo(entry["name"], tuple(entry.get("date_time", _EPOCH)))
                info.compress_type = int(entry.get("compress_type", zipfile.ZIP_STORED))
                info.external_attr = int(entry.get("external_attr", 0o600 << 16))
                if entry["name"] == weights_entry:
                    with open(weights, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                elif not entry["name"].endswith("/"):
                    zf.writestr(info, _decode(entry))
                else:
                    zf.writestr(info, b"")


_EPOCH = (1980, 1, 1, 0, 0, 0)


def _open(path: Path) -> WeightReader:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    return KerasArchiveReader(path)


FORMAT = Format(
    name="keras",
    label="Keras 3 .keras archive",
    open=_open,
    layout="keras",
    claims=_claims,
    suffixes=(".keras",),
    write=write_keras,
    needs_source=True,
)
