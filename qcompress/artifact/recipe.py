"""The recipe: its constants, its canonical JSON, and its one check against what the engine and
the writers support.

An artifact's checksums prove its bytes are the ones written, not that a program can rebuild
its tensors from them: a recipe edited with consistent checksums (or written by a buggy tool)
could ask for 99-bit codes, an axis past the shape, a shape whose element count overflows int64
or an HDF5 attribute no writer can create. ``Artifact`` calls :func:`check_recipe` on open, so
``verify``, ``dequantize``, ``inspect`` and ``compare`` all refuse such a file the same way, with
one line naming the field, before any tensor is decoded; :func:`check_stored_values` covers the
stored bytes whose values matter for decoding (base-3 bytes, float scales).

Allowed values come from the engine's table (``qcompress.engine.spec.RECIPE_CHOICES`` and its
bounds), the dtypes from the safetensors codec; nothing is listed twice. Derived fields (rows,
cols, groups, packing, stored names) are then checked by ``Artifact`` rebuilding the recipe.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from qcompress.engine.packing import BASE3, packing_for
from qcompress.engine.spec import (
    CODEBOOK_BITS,
    CODEBOOKS,
    GROUP_SIZE_MAX,
    GROUP_SIZE_MIN,
    MAX_ELEMENTS,
    RECIPE_CHOICES,
    SCALE_BITS,
    SUPER_BLOCK,
    QuantSpec,
)
from qcompress.engine.uniform import (
    CODE_DTYPES,
    UNIFORM_GRANULARITIES,
    UNIFORM_TARGETS,
    UniformSpec,
)
from qcompress.formats import SOURCE_FORMATS
from qcompress.formats.base import TensorInfo
from qcompress.formats.safetensors import DTYPE_CODES

QUANTIZED, KEPT, PASSTHROUGH = "quantized", "kept", "passthrough"
"""A recipe entry's ``action``: the three ways an original tensor is stored."""
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
"""Source dtypes that can be quantized; anything else is passed through."""

FORMAT_VERSION = 2
CODED_VERSION = 3
"""The version of an artifact whose recipe has a ``coded`` map (entropy-coded stored tensors):
older readers would misread those tensors, so they must refuse the file. An artifact with no
coded tensor stays version 2, byte for byte what it was."""
READABLE_VERSIONS = (1, 2, 3)  # 1: SHA-256 checksums; 2: the algorithm the recipe names; 3: coded
METADATA_KEY = "qcompress"
STATS_TENSOR = "__qcompress__/stats"
RECIPE_ROW = "__recipe__"
STATS_COLUMNS = ("mse", "max_abs_error", "sqnr_db")
RESERVED_PREFIX = "__qcompress__/"
ARTIFACT_SUFFIX = ".qc.safetensors"  # what quantize names its outputs by default


def _sha256(data: memoryview) -> bytes:
    import hashlib  # on first use, as xxhash below: inspecting a file never hashes

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


def current_digest() -> Digest:
    """The checksum new artifacts carry (looked up at call time, so a test can swap it)."""
    return DIGESTS[DIGEST]


@dataclass(frozen=True)
class Stored:
    """How a quantized tensor is stored: its engine parameters, its row view, and the names of
    the stored tensors that hold it (``zero_point`` None when symmetric; the level-2 fields
    None for float scales, and then absent from the JSON, as in artifacts before them)."""

    bits: int
    scheme: str
    granularity: str
    axis: int | None
    group_size: int | None
    range: str
    scale_dtype: str
    rows: int
    cols: int
    n_groups: int
    packing: str
    codes: str
    scale: str
    zero_point: str | None
    scale_bits: int | None = None
    super_block: int | None = None
    super: str | None = None
    codebook: str | None = None
    levels: str | None = None
    """Codebook codes (``engine.codebook``): the table's name, and the stored float32 table of a
    fitted one (None for a fixed table, whose levels the engine holds). Absent from the JSON
    for integer codes, so their entries are what they always were."""

    @property
    def spec(self) -> QuantSpec:
        """The engine spec the tensor was quantized with."""
        return QuantSpec(
            bits=self.bits,
            scheme=self.scheme,
            granularity=self.granularity,
            axis=self.axis or 0,
            group_size=self.group_size or QuantSpec.group_size,
            range_method=self.range,
            scale_dtype=self.scale_dtype,
            scale_bits=self.scale_bits,
            codebook=self.codebook,
        )


_LEVEL2_FIELDS = ("scale_bits", "super_block", "super")  # in the JSON only with a second level
_CODEBOOK_FIELDS = ("codebook", "levels")  # in the JSON only for codebook codes
_QUANTIZED_FIELDS = tuple(
    f.name for f in fields(Stored) if f.name not in _LEVEL2_FIELDS + _CODEBOOK_FIELDS
)


UNIFORM_MODE = "uniform"
"""A quantized entry's ``mode`` for variable-rate codes; fixed-rate entries have no ``mode``."""


@dataclass(frozen=True)
class UniformStored:
    """How a tensor quantized with variable-rate codes (``engine.uniform``) is stored: integer
    codes (rows, cols) and one float32 step per row ((rows, 1)); x_hat = code * step. ``target``
    and ``target_value`` say what fixed the step (for the report; decoding needs only the step)."""

    target: str
    target_value: float
    granularity: str
    axis: int | None
    rows: int
    cols: int
    code_dtype: str
    codes: str
    step: str

    @property
    def spec(self) -> UniformSpec:
        """The engine spec the tensor was quantized with."""
        return UniformSpec(
            self.target, self.target_value, self.granularity, self.axis or 0, self.code_dtype
        )


_UNIFORM_FIELDS = tuple(f.name for f in fields(UniformStored))


@dataclass(frozen=True)
class TensorRecipe:
    """One original tensor's entry in the recipe: kept or passed through as ``stored``, or
    quantized as ``quantized`` says."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    action: str
    reason: str
    stored: str | None = None
    quantized: Stored | None = None
    uniform: UniformStored | None = None

    @property
    def info(self) -> TensorInfo:
        """The original tensor's name, shape and dtype."""
        return TensorInfo(self.name, self.shape, self.dtype)

    @property
    def stored_names(self) -> list[str]:
        """The stored tensors that hold this tensor, in payload order."""
        q = self.quantized
        if self.uniform is not None:
            return [self.uniform.codes, self.uniform.step]
        if q is None:
            return [self.stored] if self.stored else []
        return [n for n in (q.codes, q.scale, q.zero_point, q.super, q.levels) if n]

    def to_json(self) -> dict[str, Any]:
        """The entry as the recipe JSON holds it (the keys artifacts have always had)."""
        out: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "action": self.action,
            "reason": self.reason,
        }
        q = self.quantized
        if self.uniform is not None:
            out["mode"] = UNIFORM_MODE
            for field in _UNIFORM_FIELDS:
                out[field] = getattr(self.uniform, field)
            return out
        if q is None:
            out["stored"] = self.stored
            return out
        for field in _QUANTIZED_FIELDS:
            out[field] = getattr(q, field)
        if q.scale_bits is not None:
            for field in _LEVEL2_FIELDS:
                out[field] = getattr(q, field)
        if q.codebook is not None:
            for field in _CODEBOOK_FIELDS:
                out[field] = getattr(q, field)
        return out

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> TensorRecipe:
        """An entry already checked by :func:`check_entry` (a missing key is a KeyError)."""
        quantized = uniform = None
        if entry["action"] == QUANTIZED and entry.get("mode") == UNIFORM_MODE:
            uniform = UniformStored(**{f: entry[f] for f in _UNIFORM_FIELDS})
        elif entry["action"] == QUANTIZED:
            level2 = {f: entry[f] for f in _LEVEL2_FIELDS} if "scale_bits" in entry else {}
            if "codebook" in entry:
                level2.update({f: entry[f] for f in _CODEBOOK_FIELDS})
            quantized = Stored(**{f: entry[f] for f in _QUANTIZED_FIELDS}, **level2)
        return cls(
            entry["name"],
            entry["dtype"],
            tuple(entry["shape"]),
            entry["action"],
            entry["reason"],
            entry.get("stored"),
            quantized,
            uniform,
        )


@dataclass(frozen=True)
class Recipe:
    """The whole recipe: the source to rebuild, every tensor's entry, the stats tensor and the
    integrity list. ``to_json`` gives the document whose canonical text the artifact stores."""

    format_version: int
    tool: str
    source: dict[str, Any]  # the source format's own metadata: JSON, checked by check_source
    tensors: tuple[TensorRecipe, ...]
    stats: dict[str, Any]
    integrity: dict[str, Any]
    coded: dict[str, str] = dataclasses.field(default_factory=dict)
    """Stored tensor -> its coder (``qcompress.artifact.coding.STAGES``), for those stored as a
    coded uint8 stream; absent from the JSON when empty."""

    def to_json(self) -> dict[str, Any]:
        out = {
            "format_version": self.format_version,
            "tool": self.tool,
            "source": self.source,
            "tensors": [t.to_json() for t in self.tensors],
            "stats": self.stats,
            "integrity": self.integrity,
        }
        if self.coded:
            out["coded"] = dict(self.coded)
        return out

    @classmethod
    def from_json(cls, recipe: Any) -> Recipe:
        """The recipe of an artifact, every field checked against the engine's table
        (:func:`check_recipe`: RecipeError naming the field) before it is trusted."""
        check_recipe(recipe)
        return cls(
            recipe["format_version"],
            recipe.get("tool", ""),
            recipe["source"],
            tuple(TensorRecipe.from_json(e) for e in recipe["tensors"]),
            recipe.get("stats", {}),
            recipe["integrity"],
            dict(recipe.get("coded", {})),
        )


def recipe_json(recipe: dict[str, Any]) -> str:
    """The recipe as stored: canonical JSON (sorted keys, no spaces), what its checksum covers."""
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"), allow_nan=False)


LAYOUTS = ("pytorch", "keras")
ACTIONS = (QUANTIZED, KEPT, PASSTHROUGH)
H5_STRING_CSETS = ("utf-8", "ascii")
H5_NONFINITE = ("nan", "inf", "-inf")


class RecipeError(ValueError):
    """A recipe field no engine or writer can use; the message names the tensor and field."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_recipe(recipe: Any) -> None:
    """Raise RecipeError unless every field of ``recipe`` is one the engine can decode and the
    writers can write: the source description and every tensor entry."""
    if not isinstance(recipe, dict):
        raise RecipeError("the recipe is not an object")
    entries = recipe.get("tensors")
    if not isinstance(entries, list):
        raise RecipeError("'tensors' is not a list")
    for entry in entries:
        check_entry(entry)
    check_source(recipe.get("source"), [e["name"] for e in entries])
    if "coded" in recipe:
        coded = recipe["coded"]
        if recipe.get("format_version") != CODED_VERSION:
            raise RecipeError(f"'coded' needs format version {CODED_VERSION}")
        if not isinstance(coded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in coded.items()
        ):
            raise RecipeError("'coded' must map stored tensor names to coder names")


def check_entry(entry: Any) -> None:
    """One tensor's entry: name, dtype, shape and action, and for a quantized tensor every
    engine parameter against the engine's table."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise RecipeError("an entry without a name")
    name = entry["name"]

    def bad(field: str, why: str) -> RecipeError:
        return RecipeError(f"tensor {name!r}: {field} {entry.get(field)!r} {why}")

    dtype = entry.get("dtype")
    if dtype not in DTYPE_CODES:
        raise bad("dtype", f"is not one of {', '.join(DTYPE_CODES)}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad("shape", "is not a list of non-negative integers")
    itemsize = max(np.dtype(dtype).itemsize if dtype != "bfloat16" else 2, 1)
    if math.prod(shape) * itemsize > MAX_ELEMENTS:
        raise bad("shape", f"holds more than {MAX_ELEMENTS} bytes")
    action = entry.get("action")
    if action not in ACTIONS:
        raise bad("action", f"is not one of {', '.join(ACTIONS)}")
    if not isinstance(entry.get("reason"), str):
        raise bad("reason", "is not a string")
    if action == PASSTHROUGH and dtype in FLOAT_DTYPES:
        raise bad("dtype", "is a float dtype, which is never passed through")
    if action == KEPT and dtype not in FLOAT_DTYPES:
        raise bad("dtype", "is not a float dtype, so it cannot be kept in float")
    if action == QUANTIZED and "mode" in entry:
        _check_uniform(entry, bad)
    elif action == QUANTIZED:
        _check_quantized(entry, bad)


def _check_uniform(entry: dict[str, Any], bad: Any) -> None:
    """A variable-rate entry: its mode, target, granularity, axis and code dtype against the
    engine's table (``engine.uniform``); rows, cols and stored names are rebuilt by ``Artifact``."""
    if entry["mode"] != UNIFORM_MODE:
        raise bad("mode", f"is not {UNIFORM_MODE!r}")
    if entry["dtype"] not in FLOAT_DTYPES:
        raise bad("dtype", "is not a float dtype, so it cannot have been quantized")
    for field, allowed in (
        ("target", UNIFORM_TARGETS),
        ("granularity", UNIFORM_GRANULARITIES),
        ("code_dtype", CODE_DTYPES),
    ):
        if entry.get(field) not in allowed:
            raise bad(field, f"is not one of {', '.join(allowed)}")
    value = entry.get("target_value")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise bad("target_value", "is not a positive number")
    if not math.isfinite(value):
        raise bad("target_value", "is not finite")
    ndim = len(entry["shape"])
    axis = entry.get("axis")
    if entry["granularity"] == "tensor":
        if axis is not None:
            raise bad("axis", "must be null for one step per tensor")
    elif not _is_int(axis) or not 0 <= axis < ndim:
        raise bad("axis", f"is not an axis of a {ndim}-D tensor (0 to {ndim - 1})")


def _check_quantized(entry: dict[str, Any], bad: Any) -> None:
    if entry["dtype"] not in FLOAT_DTYPES:
        raise bad("dtype", "is not a float dtype, so it cannot have been quantized")
    for field, allowed in RECIPE_CHOICES.items():
        value = entry.get(field)
        if value not in allowed or isinstance(value, bool):
            raise bad(field, f"is not one of {', '.join(map(str, allowed))}")
    ndim = len(entry["shape"])
    if entry["granularity"] == "tensor":
        if entry.get("axis") is not None:
            raise bad("axis", "must be null for one scale per tensor")
    else:
        axis = entry.get("axis")
        if not _is_int(axis) or not 0 <= axis < ndim:
            raise bad("axis", f"is not an axis of a {ndim}-D tensor (0 to {ndim - 1})")
    group_size = entry.get("group_size")
    if entry["granularity"] == "group":
        if not _is_int(group_size) or not GROUP_SIZE_MIN <= group_size <= GROUP_SIZE_MAX:
            raise bad("group_size", f"is not from {GROUP_SIZE_MIN} to {GROUP_SIZE_MAX}")
    elif group_size is not None:
        raise bad("group_size", f"must be null for granularity {entry['granularity']}")
    if "scale_bits" in entry:
        if entry["scale_bits"] not in SCALE_BITS or not _is_int(entry["scale_bits"]):
            raise bad("scale_bits", f"is not one of {', '.join(map(str, SCALE_BITS))}")
        if entry.get("super_block") != SUPER_BLOCK or not _is_int(entry.get("super_block")):
            raise bad("super_block", f"is not {SUPER_BLOCK}")
    if "codebook" in entry or "levels" in entry:
        _check_codebook(entry, bad)
    packing = "none" if entry["bits"] == 8 else packing_for(entry["bits"], entry["scheme"])
    if entry.get("packing") != packing:
        raise bad("packing", f"is not {packing!r}, the packing of {entry['bits']}-bit codes")


def _check_codebook(entry: dict[str, Any], bad: Any) -> None:
    """A codebook entry: a known table at a width it has, signed level-2 scales, and a stored
    table exactly when the levels were fitted (its name is checked by rebuilding the layout)."""
    codebook = entry.get("codebook")
    if codebook not in CODEBOOKS:
        raise bad("codebook", f"is not one of {', '.join(CODEBOOKS)}")
    widths = CODEBOOK_BITS if codebook == "fit" else (4,)
    if entry["bits"] not in widths:
        raise bad("bits", f"is not one of {', '.join(map(str, widths))} for codebook {codebook}")
    if entry["scheme"] != "symmetric" or "scale_bits" not in entry:
        raise bad("scheme", "must be symmetric with second-level scale codes for a codebook")
    levels = entry.get("levels")
    if (codebook == "fit") != isinstance(levels, str):
        raise bad("levels", "must name the stored table exactly when the codebook is fitted")


def check_source(source: Any, tensor_names: list[str]) -> None:
    """What the source format needs to be rebuilt: an object with a known format and layout,
    and metadata the writers accept (safetensors metadata of strings, a well-formed h5 tree)."""
    if not isinstance(source, dict):
        raise RecipeError(f"'source' is {type(source).__name__}, not an object")
    if source.get("format") not in SOURCE_FORMATS:
        raise RecipeError(f"source format {source.get('format')!r} is not one of {SOURCE_FORMATS}")
    if source.get("layout") not in LAYOUTS:
        raise RecipeError(f"source layout {source.get('layout')!r} is not one of {LAYOUTS}")
    meta = source.get("metadata")
    if not isinstance(meta, dict):
        raise RecipeError("source 'metadata' is not an object")
    st_meta = meta.get("__metadata__", {})
    if not isinstance(st_meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in st_meta.items()
    ):
        raise RecipeError("source safetensors '__metadata__' must map strings to strings")
    if meta.get("format") == "h5":
        check_h5_tree(meta, tensor_names)
    if meta.get("format") == "onnx":
        check_onnx_skeleton(meta)


def check_onnx_skeleton(meta: dict[str, Any]) -> None:
    """The ONNX model the writer fills in again: base64 text (whether it parses as a ModelProto
    is for the onnx package to say, when dequantizing)."""
    try:
        base64.b64decode(meta.get("model"), validate=True)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # binascii.Error is a ValueError
        raise RecipeError("source ONNX 'model' is not base64 text") from None


def check_h5_tree(meta: dict[str, Any], tensor_names: list[str]) -> None:
    """The h5 groups and attributes ``write_h5`` rebuilds: group paths that do not collide with
    a dataset, datasets the artifact holds, and every attribute in the tagged encoding of
    ``qcompress.formats.h5`` with values that fit their type and shape."""
    tensors = set(tensor_names)
    _check_attrs(meta.get("attrs", {}), "the root")
    groups = meta.get("groups", [])
    if not isinstance(groups, list):
        raise RecipeError("h5 'groups' is not a list")
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("name"), str):
            raise RecipeError(f"h5 group {group!r} has no name")
        name = group["name"]
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise RecipeError(f"h5 group {name!r} is not a path of named groups")
        prefixes = ("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        clash = next((p for p in prefixes if p in tensors), None)
        if clash is not None:  # a dataset cannot also be a group
            raise RecipeError(f"h5 group {name!r} clashes with dataset {clash!r}")
        _check_attrs(group.get("attrs", {}), f"group {name!r}")
    datasets = meta.get("datasets", {})
    if not isinstance(datasets, dict):
        raise RecipeError("h5 'datasets' is not an object")
    for name, desc in datasets.items():
        if name not in tensors:
            raise RecipeError(f"h5 attributes for dataset {name!r}, which the artifact lacks")
        if not isinstance(desc, dict):
            raise RecipeError(f"h5 dataset {name!r}: description is not an object")
        _check_attrs(desc.get("attrs", {}), f"dataset {name!r}")


def _check_attrs(attrs: Any, owner: str) -> None:
    if not isinstance(attrs, dict):
        raise RecipeError(f"h5 attributes of {owner} are not an object")
    for key, enc in attrs.items():
        try:
            _check_attr(enc)
        except (ValueError, TypeError, OverflowError) as err:  # binascii.Error is a ValueError
            raise RecipeError(f"h5 attribute {key!r} of {owner}: {err}") from None


def _check_attr(enc: Any) -> None:
    """One attribute's tagged encoding (see ``qcompress.formats.h5``): decodable as written."""
    if not isinstance(enc, dict):
        raise RecipeError("not an object")
    kind = enc.get("kind")
    if kind == "empty":
        if np.dtype(str(enc.get("dtype"))).kind not in "biuf":
            raise RecipeError(f"dtype {enc.get('dtype')!r} is not numeric")
        return
    shape = enc.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise RecipeError(f"shape {shape!r} is not a list of non-negative integers")
    if kind in ("str", "bytes"):
        if enc.get("cset") not in H5_STRING_CSETS:
            raise RecipeError(f"cset {enc.get('cset')!r} is not one of {H5_STRING_CSETS}")
        if kind == "bytes":
            dt = np.dtype(str(enc.get("dtype")))
            if dt.kind != "S" or dt.itemsize < 1:
                raise RecipeError(f"dtype {enc.get('dtype')!r} is not a fixed-length string")
        b64 = enc.get("b64", False)
        for leaf in _leaves(enc.get("value"), shape):
            if not isinstance(leaf, str):
                raise RecipeError(f"value {leaf!r} is not a string")
            if b64 is True:
                base64.b64decode(leaf, validate=True)
            elif b64 is not False:
                raise RecipeError(f"b64 {b64!r} is not a boolean")
        return
    if kind == "number":
        dt = np.dtype(str(enc.get("dtype")))
        if dt.kind not in "biuf":
            raise RecipeError(f"dtype {enc.get('dtype')!r} is not numeric")
        leaves = list(_leaves(enc.get("value"), shape))
        for leaf in leaves:
            if isinstance(leaf, str) and leaf not in H5_NONFINITE:
                raise RecipeError(f"value {leaf!r} is not a number")
            if not isinstance(leaf, (int, float, str)):
                raise RecipeError(f"value {leaf!r} is not a number")
        numbers = [float(v) if isinstance(v, str) else v for v in leaves]
        np.array(numbers, dtype=dt)  # raises on a value the dtype cannot hold
        return
    raise RecipeError(f"kind {kind!r} is not one of empty, str, bytes, number")


def _leaves(value: Any, shape: list[int]) -> list[Any]:
    """The elements of a nested-list value, checked to nest exactly as ``shape`` says."""
    if not shape:
        if isinstance(value, list):
            raise RecipeError("a nested list where the shape has no more dimensions")
        return [value]
    if not isinstance(value, list) or len(value) != shape[0]:
        raise RecipeError(f"value does not have shape {shape}")
    return [leaf for item in value for leaf in _leaves(item, shape[1:])]


def check_stored_values(stored: Stored, role: str, array: np.ndarray) -> None:
    """Raise RecipeError when a stored tensor's values cannot be decoded: a base-3 byte above
    242 (3^5 - 1), or a float scale, zero-point or super-scale that is NaN or infinite. ``role``
    is the field of ``stored`` that names the stored tensor (codes, scale, zero_point, super)."""
    if role == "codes" and stored.packing == BASE3:
        if array.size and int(array.max()) > 242:
            raise RecipeError(f"{getattr(stored, role)!r}: a base-3 byte exceeds 242 (3^5 - 1)")
    elif (
        role in ("scale", "zero_point", "super", "levels")
        and array.dtype.kind == "f"
        and not (np.isfinite(array).all())
    ):
        raise RecipeError(f"{getattr(stored, role)!r}: holds NaN or Inf, so no value decodes")
