"""Streams an artifact to disk: the header first, then each stored tensor as it is ready.

The writer takes the recipe and the stored tensors' infos up front (their sizes follow from
:mod:`qcompress.artifact.layout`), so without the entropy stage the header, and with it every
offset, is final before the first byte of payload. With it (``coded=True``), a stored tensor may
arrive as a coded stream whose size is known only then: the writer reserves a header of spaces
big enough for any outcome (a coded stream is never larger than its raw tensor, so no offset or
shape grows by more than the digits the bound allows), streams the payload behind it, and at
``finish`` writes the real header, padded with JSON whitespace to the reserved length. The file's
SHA-256 is then taken by reading the finished file back (the page cache holds it): the header,
which comes first, is known only at the end.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from qcompress.artifact import coding
from qcompress.artifact import recipe as recipe_table
from qcompress.artifact.recipe import (
    CODED_VERSION,
    METADATA_KEY,
    STATS_COLUMNS,
    STATS_TENSOR,
    Recipe,
    recipe_json,
)
from qcompress.formats._common import dtype_name
from qcompress.formats.base import TensorInfo
from qcompress.formats.safetensors import encode_header

if TYPE_CHECKING:  # imported when a writer is made: reading an artifact needs neither
    from concurrent.futures import Future

FILE_HASH_BATCH = 4 << 20  # small tensors reach the file's SHA-256 thread in batches this big
FILE_HASH_BACKLOG = 64 << 20  # bytes written but not yet hashed before write() waits
SYNC_EVERY = 32 << 20  # bytes written between background syncs (so finish's fsync has little left)


class Sink(Protocol):
    """Where the artifact's bytes go: a binary file opened for writing is one."""

    def write(self, data: bytes | memoryview, /) -> int: ...
    def seek(self, offset: int, /) -> int: ...
    def flush(self) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


def _as_bytes(array: np.ndarray) -> np.ndarray:
    """A little-endian, C-ordered byte view of ``array`` (a copy only when it must be)."""
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.reshape(-1).view(np.uint8)


class ArtifactWriter:
    """Streams an artifact: header first, then each stored tensor as soon as it is ready.

    Each stored tensor's XXH3-128 is computed as it is written (memory speed); the whole file's
    SHA-256 for the report runs in a background thread in write order (hashlib releases the GIL),
    overlapping the quantization of the next tensors. Small tensors reach that thread in batches,
    so a model of 100k tiny tensors costs no thread hand-off per tensor, and at most
    ``FILE_HASH_BACKLOG`` bytes wait to be hashed, so memory does not grow with the model.
    """

    def __init__(
        self,
        path: Path,
        recipe: Recipe,
        stored: list[TensorInfo],
        sink: Sink | None = None,
        *,
        coded: bool = False,
    ) -> None:
        """``sink``: where to write instead of a new file at ``path`` (the writer owns it).
        ``coded``: stored tensors may come entropy-coded (``write(..., coder=...)``)."""
        import hashlib
        from concurrent.futures import ThreadPoolExecutor

        self._path = Path(path)
        self._recipe = recipe
        self._recipe_text = recipe_json(recipe.to_json())
        self._stored = stored
        self._coded_mode = coded
        self._coders: dict[str, str] = {}
        self._written: list[TensorInfo] = []
        self._digest = recipe_table.current_digest()
        checksum = TensorInfo(self._digest.tensor, (len(stored) + 1, self._digest.size), "uint8")
        self._checksum_info = checksum
        if coded:
            header = self._reserved_header()
        else:
            header = encode_header([*stored, checksum], {METADATA_KEY: self._recipe_text})
        self._file: Sink = sink if sink is not None else open(path, "wb")  # noqa: SIM115 - closed in finish()/close()
        self._file.write(header)
        self._file_hash = hashlib.sha256(header)
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qcompress-hash")
        self._batch: list[memoryview] = []
        self._batch_bytes = 0
        self._backlog: deque[tuple[Future[None], int]] = deque()
        self._backlog_bytes = 0
        self._digests: list[bytes] = []
        self._next = 0
        # Written bytes are synced to disk in the background as the file grows: the final fsync
        # (the artifact must be on disk before it is renamed into place) then has only the tail
        # left, instead of the whole file after the last tensor (a quarter of a second per
        # 256 MB here).
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qcompress-sync")
        self._sync: Future[None] | None = None
        self._unsynced = 0
        self.sha256 = ""  # of the whole file, once finished

    def _reserved_header(self) -> bytes:
        """Spaces for the largest header any coding outcome can need: the recipe with every
        stored tensor coded by the longest coder name, every tensor at its raw size, and room
        for a coded tensor's ``"U8",[nbytes]`` printing longer than its raw dtype and shape."""
        longest = max(coding.STAGES, key=len)
        bound = replace(
            self._recipe,
            format_version=CODED_VERSION,
            coded={i.name: longest for i in self._stored if i.name != STATS_TENSOR},
        )
        text = recipe_json(bound.to_json())
        head = encode_header([*self._stored, self._checksum_info], {METADATA_KEY: text})
        size = len(head) - 8 + sum(len(str(i.nbytes)) + 8 for i in self._stored)
        size += -size % 8
        self._reserved = size
        return struct.pack("<Q", size) + b" " * size

    def _final_header(self) -> bytes:
        """The real header of a coded-mode artifact, padded to the reserved length."""
        meta = {METADATA_KEY: self._recipe_text}
        head = encode_header([*self._written, self._checksum_info], meta)
        body = head[8:].rstrip(b" ")
        if len(body) > self._reserved:
            raise AssertionError("artifact header outgrew its reserved space")
        return struct.pack("<Q", self._reserved) + body + b" " * (self._reserved - len(body))

    def _hash_file(self, chunks: list[memoryview]) -> None:
        for chunk in chunks:
            self._file_hash.update(chunk)

    def _queue_file_hash(self, data: memoryview | None) -> None:
        """Hand written bytes to the file's SHA-256 thread (``None``: flush the batch)."""
        if data is not None:
            self._batch.append(data)
            self._batch_bytes += data.nbytes
        if self._batch and (data is None or self._batch_bytes >= FILE_HASH_BATCH):
            future = self._hasher.submit(self._hash_file, self._batch)
            self._backlog.append((future, self._batch_bytes))
            self._backlog_bytes += self._batch_bytes
            self._batch, self._batch_bytes = [], 0
        while self._backlog and (self._backlog_bytes > FILE_HASH_BACKLOG or data is None):
            future, nbytes = self._backlog.popleft()
            future.result()
            self._backlog_bytes -= nbytes

    def write(self, name: str, array: np.ndarray, coder: str | None = None) -> None:
        """Append the next stored tensor; it must be the one the recipe expects next, raw, or
        (``coder``, in coded mode) the uint8 stream that coder made of it."""
        info = self._stored[self._next]
        if coder is None:
            actual = info
            raw = array.shape == info.shape and dtype_name(array.dtype) == info.dtype
        else:
            actual = coding.coded_info(info.name, array)
            fits = coding.check_coded(coder, info) is None and array.dtype == np.uint8
            raw = self._coded_mode and fits and array.ndim == 1 and array.nbytes <= info.nbytes
        if name != info.name or not raw:
            raise AssertionError(
                f"artifact writer expected {info}, got {name} {array.shape} {array.dtype} {coder}"
            )
        if coder is not None:
            self._coders[name] = coder
        self._written.append(actual)
        data = memoryview(_as_bytes(array))
        self._file.write(data)
        self._digests.append(self._digest.fn(data))
        if not self._coded_mode:
            self._queue_file_hash(data)
        self._next += 1
        self._unsynced += data.nbytes
        if self._unsynced >= SYNC_EVERY and (self._sync is None or self._sync.done()):
            self._file.flush()
            self._sync = self._syncer.submit(os.fdatasync, self._file.fileno())
            self._unsynced = 0

    def finish(self, stats: np.ndarray) -> None:
        """Write the stats and checksums, then flush to disk."""
        # reshape: a model whose tensors are all kept gives no rows, and np.array([]) is (0,)
        self.write(
            STATS_TENSOR, np.asarray(stats, dtype=np.float64).reshape(-1, len(STATS_COLUMNS))
        )
        if self._next != len(self._stored):
            raise AssertionError("artifact writer finished before every tensor was written")
        if self._coded_mode and self._coders:
            final = replace(self._recipe, format_version=CODED_VERSION, coded=dict(self._coders))
            self._recipe_text = recipe_json(final.to_json())
        tail = b"".join([*self._digests, self._digest.fn(memoryview(self._recipe_text.encode()))])
        self._file.write(tail)
        if self._coded_mode:
            self._file.flush()
            self._file.seek(0)
            self._file.write(self._final_header())
            self._final_sync()
            self.close()
            with open(self._path, "rb") as fh:
                import hashlib

                self.sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
            return
        self._queue_file_hash(memoryview(tail))
        self._queue_file_hash(None)
        self.sha256 = self._file_hash.hexdigest()
        self._final_sync()
        self.close()

    def _final_sync(self) -> None:
        """The artifact on disk before it is renamed into place: the background sync still in
        flight first (an I/O error there is this file's), then one fsync for the rest."""
        self._file.flush()
        if self._sync is not None:
            self._sync.result()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=True)
        self._syncer.shutdown(wait=True, cancel_futures=True)
        self._file.close()

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
