"""The artifact: a plain safetensors file of codes, scales and the recipe to rebuild each tensor.

Layout (format version 2; version 1 differs only in its checksums, see below):
- ``NAME.qcodes``: the integer codes of a quantized tensor ``NAME`` in its row view (channel axis
  first, other axes flattened). 8-bit codes are int8 (symmetric) or uint8 (affine) of shape
  (rows, cols); narrower codes are a dense little-endian bit stream in a 1-D uint8 tensor.
- ``NAME.qscale`` / ``NAME.qzero``: per row and group, (rows, n_groups), float32 or float16.
  With a second level (recipe ``scale_bits``), they hold instead the groups' scale and min codes
  as a dense ``scale_bits``-bit stream (1-D uint8, same bit order as the codes), and
  ``NAME.qsuper`` the float32 (n_blocks, 2) super-scale and super-min of each block of
  ``super_block`` consecutive groups ((n_blocks, 1), super-scales only, when symmetric); see
  ``qcompress.engine.level2`` for the decoding.
- ``NAME``: a tensor kept in float or passed through, unchanged, in its own dtype.
- ``__qcompress__/stats``: float64 (n_tensors, 3), each original tensor's MSE, max abs error and
  SQNR dB, so ``inspect`` can show the error without the original.
- ``__qcompress__/xxh3_128``: uint8 (n_stored + 1, 16), the XXH3-128 digest (big-endian, as
  ``xxhash.xxh3_128_digest`` gives it) of every stored tensor's bytes in payload order (``stats``
  included), then of the recipe JSON. It is written last, so the header can be computed before
  any tensor is quantized and the payload streamed behind it. The recipe's ``integrity`` names
  the algorithm and the tensor. The checksums guard against corruption (a flipped bit, a
  truncated copy), not against an attacker, who could recompute them: XXH3-128 does that at
  memory speed, where SHA-256 cost more than the quantization. Version 1 artifacts carry
  ``__qcompress__/sha256`` (n_stored + 1, 32) SHA-256 digests instead; they still open and verify.
- ``__metadata__["qcompress"]``: the recipe, canonical JSON (sorted keys, no spaces).

The artifact contains no timestamps or host names: the same input and options give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompress import __version__
from qcompress.engine import decode_level2, n_groups, pack_codes, packed_nbytes, unpack_codes
from qcompress.engine.level2 import n_blocks as level2_blocks
from qcompress.engine.packing import packing_for
from qcompress.engine.spec import SUPER_BLOCK, Level2, QuantizedTensor, QuantSpec
from qcompress.errors import FormatError, InputError
from qcompress.formats import open_weights
from qcompress.formats._common import dtype_name
from qcompress.formats.base import TensorInfo, WeightReader
from qcompress.formats.compressed_tensors import is_compressed_tensors_dir
from qcompress.formats.safetensors import SafetensorsReader, encode_header
from qcompress.formats.sharded import (
    ShardedReader,
    ShardIndex,
    check_shard_name,
    find_index,
    read_index,
)
from qcompress.policy import QUANTIZED, TensorPlan
from qcompress.recipe import RecipeError, check_recipe, check_stored_values

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: SHA-256 checksums; 2: the algorithm the recipe names
METADATA_KEY = "qcompress"
STATS_TENSOR = "__qcompress__/stats"
RECIPE_ROW = "__recipe__"
STATS_COLUMNS = ("mse", "max_abs_error", "sqnr_db")
RESERVED_PREFIX = "__qcompress__/"


def _sha256(data: memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _xxh3_128(data: memoryview) -> bytes:
    import xxhash  # imported on first use: only artifacts need it

    return xxhash.xxh3_128_digest(data)


@dataclass(frozen=True)
class Digest:
    """A per-stored-tensor checksum: the tensor holding the digests, their size, the function."""

    tensor: str
    size: int
    fn: Callable[[memoryview], bytes]


DIGESTS: dict[str, Digest] = {
    "sha256": Digest("__qcompress__/sha256", 32, _sha256),
    "xxh3-128": Digest("__qcompress__/xxh3_128", 16, _xxh3_128),
}
DIGEST = "xxh3-128"  # what new artifacts carry
CHECKSUM_TENSOR = DIGESTS[DIGEST].tensor
FILE_HASH_BATCH = 4 << 20  # small tensors reach the file's SHA-256 thread in batches this big
FILE_HASH_BACKLOG = 64 << 20  # bytes written but not yet hashed before write() waits


def digest_for(recipe: dict[str, Any]) -> Digest:
    """The checksum a recipe declares; ValueError (a corrupt recipe) for any other.
    Version 1 knew only SHA-256, so a version 1 recipe naming anything else is corrupt."""
    integrity = recipe["integrity"]
    algorithm = integrity.get("algorithm") if isinstance(integrity, dict) else None
    allowed = ("sha256",) if recipe.get("format_version") == 1 else tuple(DIGESTS)
    if algorithm not in allowed:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    digest = DIGESTS[algorithm]
    if integrity.get("tensor") != digest.tensor:
        raise ValueError(f"checksum tensor {integrity.get('tensor')!r} is not {digest.tensor!r}")
    return digest


def row_shape(shape: tuple[int, ...], spec: QuantSpec) -> tuple[int, int]:
    """(rows, cols) of a tensor's row view: the engine's and the stored codes' layout."""
    size = int(np.prod(shape, dtype=np.int64))
    if spec.granularity == "tensor" or not shape:
        return 1, size
    rows = shape[spec.axis]
    cols = int(np.prod([d for i, d in enumerate(shape) if i != spec.axis], dtype=np.int64))
    return rows, cols


def _quantized_entry(plan: TensorPlan) -> tuple[dict[str, Any], list[TensorInfo]]:
    spec = plan.spec
    assert spec is not None
    name = plan.info.name
    rows, cols = row_shape(plan.info.shape, spec)
    groups = n_groups(cols, spec)
    signed = spec.scheme == "symmetric"
    if spec.bits == 8:
        codes = TensorInfo(f"{name}.qcodes", (rows, cols), "int8" if signed else "uint8")
        packing = "none"
    else:
        packing = packing_for(spec.bits, spec.scheme)
        nbytes = packed_nbytes(rows * cols, spec.bits, packing)
        codes = TensorInfo(f"{name}.qcodes", (nbytes,), "uint8")
    sb = spec.scale_bits
    if sb is None:
        params = [TensorInfo(f"{name}.qscale", (rows, groups), spec.scale_dtype)]
        if not signed:
            params.append(TensorInfo(f"{name}.qzero", (rows, groups), spec.scale_dtype))
    else:
        packed = (packed_nbytes(rows * groups, sb),)
        params = [TensorInfo(f"{name}.qscale", packed, "uint8")]
        if not signed:
            params.append(TensorInfo(f"{name}.qzero", packed, "uint8"))
        supers = (level2_blocks((rows, groups)), 1 if signed else 2)
        params.append(TensorInfo(f"{name}.qsuper", supers, "float32"))
    stored = [codes, *params]
    entry = {
        **_base_entry(plan),
        "bits": spec.bits,
        "scheme": spec.scheme,
        "granularity": spec.granularity,
        "axis": None if spec.granularity == "tensor" else spec.axis,
        "group_size": spec.group_size if spec.granularity == "group" else None,
        "range": spec.range_method,
        "scale_dtype": spec.scale_dtype,
        "rows": rows,
        "cols": cols,
        "n_groups": groups,
        "packing": packing,
        "codes": codes.name,
        "scale": stored[1].name,
        "zero_point": stored[2].name if not signed else None,
    }
    if sb is not None:  # only then: entries of float-scale artifacts stay as they were
        entry.update(scale_bits=sb, super_block=SUPER_BLOCK, super=stored[-1].name)
    return entry, stored


def quantized_arrays(entry: dict[str, Any], q: QuantizedTensor) -> list[tuple[str, np.ndarray]]:
    """The stored tensors (name, array), in payload order, that hold one quantized tensor."""
    packing = entry["packing"]
    codes = q.codes if packing == "none" else pack_codes(q.codes, q.spec.bits, packing)
    second = q.level2
    if second is None:
        stored = [(entry["codes"], codes), (entry["scale"], q.scale)]
        if entry["zero_point"]:
            stored.append((entry["zero_point"], q.zero_point))
        return stored
    sb = entry["scale_bits"]
    stored = [(entry["codes"], codes), (entry["scale"], pack_codes(second.scale_codes, sb))]
    supers = [second.super_scale]
    if entry["zero_point"]:
        assert second.min_codes is not None and second.super_min is not None
        stored.append((entry["zero_point"], pack_codes(second.min_codes, sb)))
        supers.append(second.super_min)
    stored.append((entry["super"], np.stack(supers, axis=1).astype(np.float32)))
    return stored


def _base_entry(plan: TensorPlan) -> dict[str, Any]:
    info = plan.info
    return {
        "name": info.name,
        "dtype": info.dtype,
        "shape": list(info.shape),
        "action": plan.action,
        "reason": plan.reason,
    }


def build_recipe(
    plans: list[TensorPlan], source: dict[str, Any], *, path: Path | None = None
) -> tuple[dict[str, Any], list[TensorInfo]]:
    """The recipe and the stored tensors (payload order) for a plan, before any value is read.
    ``path`` is the input file, named in the error when a tensor name cannot be stored."""
    where = f"{path}: " if path is not None else ""
    entries: list[dict[str, Any]] = []
    stored: list[TensorInfo] = []
    for plan in plans:
        if plan.info.name.startswith(RESERVED_PREFIX):
            raise InputError(
                f"{where}tensor {plan.info.name!r}: names under {RESERVED_PREFIX} are reserved "
                "for qcompress; rename it"
            )
        if plan.action == QUANTIZED:
            entry, infos = _quantized_entry(plan)
        else:
            entry, infos = {**_base_entry(plan), "stored": plan.info.name}, [plan.info]
        entries.append(entry)
        stored.extend(infos)
    names = [i.name for i in stored]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(
            f"{where}tensor {dup!r} clashes with a name the artifact needs for another tensor; "
            "rename it, or keep the other tensor in float with --keep"
        )
    stored.append(TensorInfo(STATS_TENSOR, (len(plans), len(STATS_COLUMNS)), "float64"))
    recipe = {
        "format_version": FORMAT_VERSION,
        "tool": f"qcompress {__version__}",
        "source": source,
        "tensors": entries,
        "stats": {"tensor": STATS_TENSOR, "columns": list(STATS_COLUMNS)},
        "integrity": {
            "algorithm": DIGEST,
            "tensor": CHECKSUM_TENSOR,
            "covers": [*names, STATS_TENSOR, RECIPE_ROW],
        },
    }
    return recipe, stored


def spec_from_entry(entry: dict[str, Any]) -> QuantSpec:
    """The engine spec a recipe entry was quantized with."""
    return QuantSpec(
        bits=entry["bits"],
        scheme=entry["scheme"],
        granularity=entry["granularity"],
        axis=entry["axis"] or 0,
        group_size=entry["group_size"] or QuantSpec.group_size,
        range_method=entry["range"],
        scale_dtype=entry["scale_dtype"],
        scale_bits=entry.get("scale_bits"),
    )


def recipe_json(recipe: dict[str, Any]) -> str:
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"), allow_nan=False)


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

    def __init__(self, path: Path, recipe: dict[str, Any], stored: list[TensorInfo]) -> None:
        self._recipe_text = recipe_json(recipe)
        self._stored = stored
        self._digest = DIGESTS[DIGEST]
        checksum = TensorInfo(CHECKSUM_TENSOR, (len(stored) + 1, self._digest.size), "uint8")
        header = encode_header([*stored, checksum], {METADATA_KEY: self._recipe_text})
        self._file = open(path, "wb")  # noqa: SIM115 - closed in finish()/close()
        self._file.write(header)
        self._file_hash = hashlib.sha256(header)
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qcompress-hash")
        self._batch: list[memoryview] = []
        self._batch_bytes = 0
        self._backlog: deque[tuple[Future[None], int]] = deque()
        self._backlog_bytes = 0
        self._digests: list[bytes] = []
        self._next = 0
        self.sha256 = ""  # of the whole file, once finished

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

    def write(self, name: str, array: np.ndarray) -> None:
        """Append the next stored tensor; it must be the one the recipe expects next."""
        info = self._stored[self._next]
        if name != info.name or array.shape != info.shape or dtype_name(array.dtype) != info.dtype:
            raise AssertionError(
                f"artifact writer expected {info}, got {name} {array.shape} {array.dtype}"
            )
        data = memoryview(_as_bytes(array))
        self._file.write(data)
        self._digests.append(self._digest.fn(data))
        self._queue_file_hash(data)
        self._next += 1

    def finish(self, stats: np.ndarray) -> None:
        """Write the stats and checksums, then flush to disk."""
        # reshape: a model whose tensors are all kept gives no rows, and np.array([]) is (0,)
        self.write(
            STATS_TENSOR, np.asarray(stats, dtype=np.float64).reshape(-1, len(STATS_COLUMNS))
        )
        if self._next != len(self._stored):
            raise AssertionError("artifact writer finished before every tensor was written")
        tail = b"".join([*self._digests, self._digest.fn(memoryview(self._recipe_text.encode()))])
        self._file.write(tail)
        self._queue_file_hash(memoryview(tail))
        self._queue_file_hash(None)
        self.sha256 = self._file_hash.hexdigest()
        self._file.flush()
        os.fsync(self._file.fileno())
        self.close()

    def close(self) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=True)
        self._file.close()

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Artifact:
    """An artifact opened for reading; every tensor read through it is checked against its
    checksum (XXH3-128, or SHA-256 in version 1 artifacts)."""

    def __init__(self, path: Path, reader: SafetensorsReader | None = None) -> None:
        """``reader``: the file already opened (its header parsed), which the artifact then owns."""
        self.path = Path(path)
        self._reader = reader or SafetensorsReader(self.path)
        try:
            self._open()
        except BaseException:
            self._reader.close()
            raise

    def _open(self) -> None:
        header_meta = self._reader.metadata().get("__metadata__") or {}
        text = header_meta.get(METADATA_KEY)
        if text is None:
            raise InputError(
                f"{self.path}: a safetensors file but not a qcompress artifact "
                "(no 'qcompress' entry in its metadata)"
            )
        try:
            recipe = json.loads(text)
            version = recipe["format_version"]
            covers = recipe["integrity"]["covers"]
            entries = recipe["tensors"]
            version_known = version in READABLE_VERSIONS and not isinstance(version, bool)
            digest = digest_for(recipe) if version_known else None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"{self.path}: corrupt qcompress recipe ({e})") from None
        if digest is None:
            raise FormatError(
                f"{self.path}: artifact format version {version} is not supported by qcompress "
                f"{__version__} (expects {FORMAT_VERSION}); upgrade qcompress"
            )
        self._digest: Digest = digest
        self.recipe: dict[str, Any] = recipe
        self.recipe_text: str = text
        self.entries: list[dict[str, Any]] = entries
        self._row = {name: i for i, name in enumerate(covers)}
        self._infos = {i.name: i for i in self._reader.tensor_infos()}
        self._check_structure()
        digests = self._reader.read(self._digest.tensor)
        self._digests = [bytes(row) for row in digests]
        recipe_digest = self._digest_of(self.recipe_text.encode())
        self._recipe_intact = recipe_digest == self._digests[self._row[RECIPE_ROW]]

    def _digest_of(self, data: bytes | np.ndarray) -> bytes:
        view = memoryview(data if isinstance(data, bytes) else _as_bytes(data))
        return self._digest.fn(view)

    def _require_intact_recipe(self) -> None:
        """Refuse to rebuild a tensor from a recipe edited after it was written: a changed
        reason, axis or range can keep the structure consistent, and only its checksum shows
        the edit. ``verify`` and ``stats`` do not need this: they report it instead."""
        if not self._recipe_intact:
            raise FormatError(
                f"{self.path}: checksum mismatch in the recipe (__metadata__ 'qcompress'); "
                "the artifact was altered"
            )

    def _check_structure(self) -> None:
        """Every recipe field is one the engine supports (:func:`qcompress.recipe.check_recipe`),
        and every stored tensor the recipe names exists with the dtype and shape it implies."""
        plans = []
        try:
            check_recipe(self.recipe)
            for e in self.entries:
                info = TensorInfo(e["name"], tuple(e["shape"]), e["dtype"])
                spec = spec_from_entry(e) if e["action"] == QUANTIZED else None
                plans.append(TensorPlan(info, e["action"], e["reason"], spec))
            expected_recipe, expected = build_recipe(plans, self.recipe["source"])
        except (  # a damaged field can fail any of these ways (an axis past the shape: IndexError)
            KeyError,
            TypeError,
            ValueError,
            IndexError,
            OverflowError,
            ZeroDivisionError,
            AssertionError,
            InputError,
        ) as err:
            raise FormatError(f"{self.path}: corrupt qcompress recipe ({err})") from None
        if expected_recipe["tensors"] != self.entries:
            raise FormatError(f"{self.path}: recipe entries are inconsistent; the file was altered")
        n_stored = len(expected)
        digest = self._digest
        expected.append(TensorInfo(digest.tensor, (n_stored + 1, digest.size), "uint8"))
        for info in expected:
            actual = self._infos.get(info.name)
            if actual is None:
                raise FormatError(f"{self.path}: stored tensor {info.name!r} is missing")
            if actual.shape != info.shape or actual.dtype != info.dtype:
                raise FormatError(
                    f"{self.path}: stored tensor {info.name!r} is {actual.dtype} "
                    f"{list(actual.shape)}, the recipe needs {info.dtype} {list(info.shape)}"
                )
        if len(self._infos) != len(expected):
            raise FormatError(f"{self.path}: holds tensors the recipe does not name")
        if list(self._row) != [i.name for i in expected[:-1]] + [RECIPE_ROW]:
            raise FormatError(f"{self.path}: integrity list does not match the stored tensors")

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _checked(self, name: str) -> np.ndarray:
        array = self._reader.read(name)
        if self._digest_of(array) != self._digests[self._row[name]]:
            raise FormatError(
                f"{self.path}: checksum mismatch in stored tensor {name!r}; the artifact is corrupt"
            )
        return array

    def stored_bytes(self, entry: dict[str, Any]) -> int:
        """Bytes the artifact spends on one original tensor."""
        names = [
            entry.get("codes"),
            entry.get("scale"),
            entry.get("zero_point"),
            entry.get("super"),
            entry.get("stored"),
        ]
        return sum(self._infos[n].nbytes for n in names if n is not None)

    def release(self, entry: dict[str, Any]) -> None:
        """Done with one original tensor: drop its stored tensors' pages from this process."""
        for name in stored_names(entry):
            self._reader.release(name)

    def stats(self) -> np.ndarray:
        """(n_tensors, 3) MSE, max abs error and SQNR dB of every original tensor."""
        return np.asarray(self._checked(STATS_TENSOR), dtype=np.float64)

    def check_values(self, skip: set[str] | frozenset[str] = frozenset()) -> None:
        """Raise FormatError when a stored value cannot be decoded (a base-3 byte above 242, a
        NaN scale), for every stored tensor not in ``skip`` (those whose checksum failed: they
        are reported as such). Reads only codes and scales whose values matter; ``verify``
        calls this so that it proves what ``dequantize`` will do."""
        for entry in self.entries:
            if entry["action"] != QUANTIZED:
                continue
            for role in ("codes", "scale", "zero_point", "super"):
                name = entry.get(role)
                if name and name not in skip and _value_checked(entry, role):
                    self._check_values(entry, role, self._reader.read(name))
                    self._reader.release(name)

    def _check_values(self, entry: dict[str, Any], role: str, array: np.ndarray) -> None:
        try:
            check_stored_values(entry, role, array)
        except RecipeError as err:
            raise FormatError(f"{self.path}: tensor {entry['name']!r}: {err}") from None

    def quantized(self, entry: dict[str, Any]) -> QuantizedTensor:
        """A quantized tensor's codes and parameters, checksums verified, codes unpacked."""
        self._require_intact_recipe()
        spec = spec_from_entry(entry)
        rows, cols = entry["rows"], entry["cols"]
        codes = self._checked(entry["codes"])
        self._check_values(entry, "codes", codes)
        if entry["packing"] != "none":
            signed = spec.scheme == "symmetric"
            codes = unpack_codes(codes, spec.bits, rows * cols, signed, entry["packing"])
        codes = codes.reshape(rows, cols)
        second = None
        if spec.scale_bits is None:
            scale = self._checked(entry["scale"])
            zero = self._checked(entry["zero_point"]) if entry["zero_point"] else None
            self._check_values(entry, "scale", scale)
            if zero is not None:
                self._check_values(entry, "zero_point", zero)
        else:
            second = self._level2(entry, spec.scale_bits)
            scale, zero = decode_level2(second, (rows, entry["n_groups"]))
        unknown = np.full(scale.shape, np.nan, np.float32)  # clip range is a report-only field
        shape = tuple(entry["shape"])
        return QuantizedTensor(codes, scale, zero, unknown, unknown, spec, shape, second)

    def _level2(self, entry: dict[str, Any], sb: int) -> Level2:
        """The stored second level of a quantized tensor, checksums verified, codes unpacked."""
        shape = (entry["rows"], entry["n_groups"])
        count = shape[0] * shape[1]

        def codes(name: str) -> np.ndarray:
            return unpack_codes(self._checked(name), sb, count, False).reshape(shape)

        supers = self._checked(entry["super"])
        self._check_values(entry, "super", supers)
        mins = None if entry["zero_point"] is None else codes(entry["zero_point"])
        super_min = None if mins is None else supers[:, 1]
        return Level2(codes(entry["scale"]), mins, supers[:, 0], super_min)

    def stored_tensor(self, entry: dict[str, Any]) -> np.ndarray:
        """A kept or passed-through tensor exactly as it was, checksum verified."""
        self._require_intact_recipe()
        return self._checked(entry["stored"])

    def verify(self) -> list[str]:
        """Names of every stored tensor (or the recipe) whose checksum does not match."""
        bad = []
        for name, row in self._row.items():
            if name == RECIPE_ROW:
                actual = self._digest_of(self.recipe_text.encode())
            else:
                actual = self._digest_of(self._reader.read(name))
                self._reader.release(name)
            if actual != self._digests[row]:
                bad.append(name)
        return bad


def _value_checked(entry: dict[str, Any], role: str) -> bool:
    """Whether :func:`check_stored_values` looks at this stored tensor's values: base-3 codes,
    and float scales (level-2 code streams are any bytes)."""
    if role == "codes":
        return entry.get("packing") == "base3"
    return role == "super" or entry.get("scale_bits") is None


def is_artifact(reader_metadata: dict[str, Any]) -> bool:
    """Whether a safetensors reader's metadata marks the file as a qcompress artifact."""
    return METADATA_KEY in (reader_metadata.get("__metadata__") or {})


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
        self._owner = {e["name"]: shard for shard in self.shards for e in shard.entries}
        self.recipe = self.shards[0].recipe if self.shards else {"source": {"metadata": {}}}
        self.source_index: dict[str, Any] = meta.get("source_index") or {}

    def _check(self, index: ShardIndex, names: list[str], placement: dict[str, str]) -> None:
        for name, shard in zip(names, self.shards, strict=True):
            held = {e["name"] for e in shard.entries}
            mapped = {t for t, s in placement.items() if s == name}
            if held != mapped:
                raise FormatError(
                    f"{self.path}: lists other tensors for {name} than the shard holds; "
                    "the index or a shard was replaced"
                )
            stored = {n for e in shard.entries for n in stored_names(e)}
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

    def stored_bytes(self, entry: dict[str, Any]) -> int:
        return self._owner[entry["name"]].stored_bytes(entry)

    def quantized(self, entry: dict[str, Any]) -> QuantizedTensor:
        return self._owner[entry["name"]].quantized(entry)

    def stored_tensor(self, entry: dict[str, Any]) -> np.ndarray:
        return self._owner[entry["name"]].stored_tensor(entry)

    def release(self, entry: dict[str, Any]) -> None:
        self._owner[entry["name"]].release(entry)

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def __enter__(self) -> ShardedArtifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stored_names(entry: dict[str, Any]) -> list[str]:
    """The stored tensors that hold one original tensor."""
    keys = ("codes", "scale", "zero_point", "super", "stored")
    return [entry[k] for k in keys if entry.get(k)]


def open_input(path: Path) -> Artifact | ShardedArtifact | WeightReader:
    """``path`` opened once, as an artifact when it is one (a file, or a sharded one by its index
    or folder), else as a weight reader: its header is parsed once, which a file of 100k tensors
    makes worth it. Unreadable paths raise as readers do."""
    if is_compressed_tensors_dir(path):
        return open_weights(path)
    index_path = find_index(path)
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
