"""An artifact opened for reading: every stored tensor checked against its checksum, every recipe
field against the engine's table, and quantized tensors handed back ready to dequantize."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompress import __version__, engine
from qcompress.artifact import coding
from qcompress.artifact.layout import build_recipe
from qcompress.artifact.recipe import (
    FORMAT_VERSION,
    METADATA_KEY,
    READABLE_VERSIONS,
    RECIPE_ROW,
    STATS_TENSOR,
    Digest,
    Recipe,
    RecipeError,
    Stored,
    TensorRecipe,
    check_stored_values,
    digest_for,
)
from qcompress.artifact.writer import _as_bytes
from qcompress.engine import decode_level2, unpack_codes
from qcompress.engine.spec import Level2, QuantizedTensor, QuantSpec
from qcompress.engine.uniform import UniformSpec, UniformTensor, uniform_dequantize
from qcompress.errors import FormatError, InputError
from qcompress.formats.base import TensorInfo
from qcompress.formats.safetensors import SafetensorsReader


@dataclass(frozen=True)
class _Placed:
    """One recipe entry as :func:`build_recipe` takes it, to rebuild the expected layout."""

    info: TensorInfo
    action: str
    reason: str
    spec: QuantSpec | UniformSpec | None


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
        self._raw_recipe: dict[str, Any] = recipe
        self._raw_entries: Any = entries
        self.recipe_text: str = text
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
        """Every recipe field is one the engine supports (:func:`.recipe.check_recipe`),
        and every stored tensor the recipe names exists with the dtype and shape it implies."""
        raw = self._raw_recipe
        try:
            self.recipe: Recipe = Recipe.from_json(raw)
            self.entries: list[TensorRecipe] = list(self.recipe.tensors)
            plans = [
                _Placed(
                    TensorInfo(e.name, e.shape, e.dtype),
                    e.action,
                    e.reason,
                    e.uniform.spec
                    if e.uniform is not None
                    else None
                    if e.quantized is None
                    else e.quantized.spec,
                )
                for e in self.entries
            ]
            expected_recipe, expected = build_recipe(plans, self.recipe.source)
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
        if [t.to_json() for t in expected_recipe.tensors] != self._raw_entries:
            raise FormatError(f"{self.path}: recipe entries are inconsistent; the file was altered")
        n_stored = len(expected)
        digest = self._digest
        self._raw_infos = {i.name: i for i in expected}
        self._coded: dict[str, str] = self.recipe.coded
        for name, coder in self._coded.items():
            raw_info = self._raw_infos.get(name)
            why = "is not a stored tensor" if raw_info is None or name == STATS_TENSOR else None
            why = why or coding.check_coded(coder, raw_info)  # type: ignore[arg-type]
            if why:
                raise FormatError(f"{self.path}: corrupt qcompress recipe (coded {name!r}: {why})")
        expected.append(TensorInfo(digest.tensor, (n_stored + 1, digest.size), "uint8"))
        for info in expected:
            actual = self._infos.get(info.name)
            if actual is None:
                raise FormatError(f"{self.path}: stored tensor {info.name!r} is missing")
            if info.name in self._coded:
                if actual.dtype != "uint8" or len(actual.shape) != 1:
                    raise FormatError(
                        f"{self.path}: stored tensor {info.name!r} is {actual.dtype} "
                        f"{list(actual.shape)}, the recipe needs a coded uint8 stream"
                    )
                continue
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
        """A stored tensor, checksum verified, decoded from its coded stream if it has one."""
        array = self._reader.read(name)
        if self._digest_of(array) != self._digests[self._row[name]]:
            raise FormatError(
                f"{self.path}: checksum mismatch in stored tensor {name!r}; the artifact is corrupt"
            )
        return self._decoded(name, array)

    def _decoded(self, name: str, array: np.ndarray) -> np.ndarray:
        coder = self._coded.get(name)
        if coder is None:
            return array
        try:
            return coding.decode(array, self._raw_infos[name], coder)
        except coding.CodingError as err:
            raise FormatError(
                f"{self.path}: stored tensor {name!r} does not decode ({err}); "
                "the artifact is corrupt"
            ) from None

    def coders(self, entry: TensorRecipe) -> dict[str, str]:
        """The coder of each of ``entry``'s stored tensors that is entropy-coded."""
        return {n: self._coded[n] for n in entry.stored_names if n in self._coded}

    def raw_bytes(self, entry: TensorRecipe) -> int:
        """Bytes ``entry``'s stored tensors hold before the entropy stage."""
        return sum(self._raw_infos[n].nbytes for n in entry.stored_names)

    @property
    def source(self) -> dict[str, Any]:
        """The source file's format, layout and metadata, to rebuild it."""
        return self.recipe.source

    def stored_bytes(self, entry: TensorRecipe) -> int:
        """Bytes the artifact spends on one original tensor."""
        return sum(self._infos[n].nbytes for n in entry.stored_names)

    def release(self, entry: TensorRecipe) -> None:
        """Done with one original tensor: drop its stored tensors' pages from this process."""
        for name in entry.stored_names:
            self._reader.release(name)

    def stats(self) -> np.ndarray:
        """(n_tensors, 3) MSE, max abs error and SQNR dB of every original tensor."""
        return np.asarray(self._checked(STATS_TENSOR), dtype=np.float64)

    def check_values(self, skip: set[str] | frozenset[str] = frozenset()) -> None:
        """Raise FormatError when a stored value cannot be decoded (a base-3 byte above 242, a
        NaN scale), for every stored tensor not in ``skip`` (those whose checksum failed: they
        are reported as such). Reads only codes and scales whose values matter; ``verify``
        calls this so that it proves what ``dequantize`` will do."""
        checked: set[str] = set()
        for entry in self.entries:
            s = entry.quantized
            if s is None:
                continue
            roles = {"codes": s.codes, "scale": s.scale, "zero_point": s.zero_point}
            roles["super"] = s.super
            roles["levels"] = s.levels
            for role, name in roles.items():
                if name and name not in skip and _value_checked(s, role):
                    self._check_values(entry, role, self._decoded(name, self._reader.read(name)))
                    self._reader.release(name)
                    checked.add(name)
        for name in self._coded:  # every coded stream must decode, whatever its values
            if name not in skip and name not in checked:
                self._decoded(name, self._reader.read(name))
                self._reader.release(name)

    def _check_values(self, entry: TensorRecipe, role: str, array: np.ndarray) -> None:
        assert entry.quantized is not None
        try:
            check_stored_values(entry.quantized, role, array)
        except RecipeError as err:
            raise FormatError(f"{self.path}: tensor {entry.name!r}: {err}") from None

    def quantized(self, entry: TensorRecipe) -> QuantizedTensor:
        """A quantized tensor's codes and parameters, checksums verified, codes unpacked."""
        self._require_intact_recipe()
        s = entry.quantized
        assert s is not None, f"{entry.name} is not quantized"
        spec = s.spec
        rows, cols = s.rows, s.cols
        codes = self._checked(s.codes)
        self._check_values(entry, "codes", codes)
        if s.packing != "none":
            signed = spec.scheme == "symmetric"
            codes = unpack_codes(codes, spec.bits, rows * cols, signed, s.packing)
        codes = codes.reshape(rows, cols)
        second = None
        if spec.scale_bits is None:
            scale = self._checked(s.scale)
            zero = self._checked(s.zero_point) if s.zero_point else None
            self._check_values(entry, "scale", scale)
            if zero is not None:
                self._check_values(entry, "zero_point", zero)
        elif spec.codebook is not None:
            return self._codebook(entry, codes)
        else:
            second = self._level2(entry, spec.scale_bits)
            scale, zero = decode_level2(second, (rows, s.n_groups))
        unknown = np.full(scale.shape, np.nan, np.float32)  # clip range is a report-only field
        return QuantizedTensor(codes, scale, zero, unknown, unknown, spec, entry.shape, second)

    def _codebook(self, entry: TensorRecipe, codes: np.ndarray) -> QuantizedTensor:
        """A codebook tensor: signed level-2 scales and its table (stored, or the engine's)."""
        from qcompress.engine import codebook

        s = entry.quantized
        assert s is not None and s.scale_bits is not None
        second = self._level2(entry, s.scale_bits)
        scale = codebook.decode_scales(second.scale_codes, second.super_scale, s.scale_bits)
        if s.levels is None:
            levels = codebook.table_for(s.spec)
        else:
            levels = self._checked(s.levels)
            self._check_values(entry, "levels", levels)
        unknown = np.full(scale.shape, np.nan, np.float32)
        return QuantizedTensor(
            codes, scale, None, unknown, unknown, s.spec, entry.shape, second, levels
        )

    def _level2(self, entry: TensorRecipe, sb: int) -> Level2:
        """The stored second level of a quantized tensor, checksums verified, codes unpacked."""
        s = entry.quantized
        assert s is not None and s.super is not None
        shape = (s.rows, s.n_groups)
        count = shape[0] * shape[1]

        def codes(name: str) -> np.ndarray:
            return unpack_codes(self._checked(name), sb, count, False).reshape(shape)

        supers = self._checked(s.super)
        self._check_values(entry, "super", supers)
        mins = None if s.zero_point is None else codes(s.zero_point)
        super_min = None if mins is None else supers[:, 1]
        return Level2(codes(s.scale), mins, supers[:, 0], super_min)

    def uniform(self, entry: TensorRecipe) -> UniformTensor:
        """A tensor's variable-rate codes and steps, checksums verified."""
        self._require_intact_recipe()
        s = entry.uniform
        assert s is not None, f"{entry.name} has no variable-rate codes"
        step = self._checked(s.step)
        if not (np.isfinite(step).all() and (step > 0).all()):
            raise FormatError(
                f"{self.path}: tensor {entry.name!r}: {s.step!r} holds a step that is not a "
                "positive finite number, so no value decodes"
            )
        return UniformTensor(self._checked(s.codes), step, s.spec, entry.shape)

    def stored_tensor(self, entry: TensorRecipe) -> np.ndarray:
        """A kept or passed-through tensor exactly as it was, checksum verified."""
        self._require_intact_recipe()
        assert entry.stored is not None, f"{entry.name} is quantized"
        return self._checked(entry.stored)

    def tensor(self, entry: TensorRecipe) -> np.ndarray:
        """The original tensor as the artifact holds it: dequantized when quantized, else
        exactly as stored. Every reader of float values (dequantize, verify, compare) uses it."""
        if entry.uniform is not None:
            return uniform_dequantize(self.uniform(entry))
        if entry.quantized is not None:
            return engine.dequantize(self.quantized(entry))
        return self.stored_tensor(entry)

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


def _value_checked(stored: Stored, role: str) -> bool:
    """Whether :func:`check_stored_values` looks at this stored tensor's values: base-3 codes,
    and float scales (level-2 code streams are any bytes)."""
    if role == "codes":
        return stored.packing == "base3"
    return role in ("super", "levels") or stored.scale_bits is None


def is_artifact(reader_metadata: dict[str, Any]) -> bool:
    """Whether a safetensors reader's metadata marks the file as a qcompress artifact."""
    return METADATA_KEY in (reader_metadata.get("__metadata__") or {})
