"""The formats qcompress knows, in one tuple: adding a format is its module (reader, writer,
``FORMAT`` record) plus one line here.

Order matters only among folder formats (``claims``, tried first, in this order); the content
tests of the file formats never match the same bytes.
"""

from __future__ import annotations

from qcompress.formats import (
    compressed_tensors,
    gguf,
    h5,
    keras_archive,
    keras_sharded,
    npz,
    onnx,
    safetensors,
    sharded,
)
from qcompress.formats.base import Format

REGISTRY: tuple[Format, ...] = (
    npz.FORMAT,
    h5.FORMAT,
    safetensors.FORMAT,
    gguf.FORMAT,
    compressed_tensors.FORMAT,
    keras_archive.FORMAT,  # before sharded: a Keras folder has no index for it to find
    keras_sharded.FORMAT,  # before sharded: its index has a weight_map too
    sharded.FORMAT,
    onnx.FORMAT,
)

BY_NAME: dict[str, Format] = {fmt.name: fmt for fmt in REGISTRY}
