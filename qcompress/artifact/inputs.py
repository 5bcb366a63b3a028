"""Open a path as what it is: an artifact (single file or sharded), or a weight file."""

from __future__ import annotations

from pathlib import Path

from qcompress.artifact.reader import Artifact, is_artifact
from qcompress.artifact.recipe import METADATA_KEY
from qcompress.artifact.sharded import ShardedArtifact
from qcompress.errors import InputError
from qcompress.formats import open_weights
from qcompress.formats.base import WeightReader
from qcompress.formats.safetensors import SafetensorsReader
from qcompress.formats.sharded import ShardedReader, find_index, read_index


def open_input(path: Path) -> Artifact | ShardedArtifact | WeightReader:
    """``path`` opened once, as an artifact when it is one (a file, or a sharded one by its index
    or folder), else as a weight reader: its header is parsed once, which a file of 100k tensors
    makes worth it. Unreadable paths raise as readers do."""
    index_path = find_index(path)  # None for a compressed-tensors folder: open_weights reads it
    if index_path is not None:
        index = read_index(index_path)
        return ShardedArtifact(index) if METADATA_KEY in index.metadata else ShardedReader(index)
    reader = open_weights(path)
    if isinstance(reader, SafetensorsReader) and is_artifact(reader.metadata()):
        return Artifact(path, reader)
    return reader


def open_if_artifact(path: Path) -> Artifact | ShardedArtifact | None:
    """``path`` opened as an artifact, or None when it is a weight file that is not one."""
    opened = open_input(path)
    if isinstance(opened, WeightReader):
        opened.close()
        return None
    return opened


def open_artifact(path: Path) -> Artifact | ShardedArtifact:
    """Open ``path`` as an artifact, with the input checks every reader gets; an InputError
    saying how to make one when it is a weight file instead."""
    art = open_if_artifact(path)
    if art is None:
        raise not_an_artifact(path)
    return art


def not_an_artifact(path: Path) -> InputError:
    return InputError(f"{path}: not a qcompress artifact (make one with: qcompress quantize MODEL)")
