"""Where each original tensor lives in an artifact: pure functions of its info and spec.

Nothing here reads a value: the stored tensors (names, dtypes, shapes, hence sizes) of a quantized
tensor follow from its shape and :class:`QuantSpec` alone, so the header is written before the
first tensor is quantized, the budget prices candidate specs with :func:`stored_nbytes`, and
:class:`qcompress.artifact.reader.Artifact` checks a recipe against the file with the same code
that wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qcompress import __version__
from qcompress.artifact import recipe as recipe_table
from qcompress.artifact.recipe import (
    QUANTIZED,
    RECIPE_ROW,
    RESERVED_PREFIX,
    STATS_COLUMNS,
    STATS_TENSOR,
    Recipe,
    Stored,
    TensorRecipe,
    UniformStored,
)
from qcompress.engine import n_groups, pack_codes, packed_nbytes
from qcompress.engine.level2 import n_blocks as level2_blocks
from qcompress.engine.packing import packing_for
from qcompress.engine.spec import SUPER_BLOCK, QuantizedTensor, QuantSpec
from qcompress.engine.uniform import UniformSpec, UniformTensor
from qcompress.errors import InputError
from qcompress.formats.base import TensorInfo


class Placement(Protocol):
    """What the layout needs of one tensor's decision: its info, action, reason and spec
    (``qcompress.quantize.policy.TensorDecision`` is one; the reader builds its own)."""

    @property
    def info(self) -> TensorInfo: ...
    @property
    def action(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def spec(self) -> QuantSpec | UniformSpec | None: ...


def row_shape(shape: tuple[int, ...], spec: QuantSpec) -> tuple[int, int]:
    """(rows, cols) of a tensor's row view: the engine's and the stored codes' layout."""
    size = int(np.prod(shape, dtype=np.int64))
    if spec.granularity == "tensor" or not shape:
        return 1, size
    rows = shape[spec.axis]
    cols = int(np.prod([d for i, d in enumerate(shape) if i != spec.axis], dtype=np.int64))
    return rows, cols


def quantized_layout(info: TensorInfo, spec: QuantSpec) -> tuple[Stored, list[TensorInfo]]:
    """How ``info`` quantized with ``spec`` is stored, and its stored tensors in payload order."""
    name = info.name
    rows, cols = row_shape(info.shape, spec)
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
    if spec.codebook == "fit":  # a fitted table is stored; fixed tables live in the engine
        params.append(TensorInfo(f"{name}.qlevels", (2**spec.bits,), "float32"))
    stored = [codes, *params]
    layout = Stored(
        bits=spec.bits,
        scheme=spec.scheme,
        granularity=spec.granularity,
        axis=None if spec.granularity == "tensor" else spec.axis,
        group_size=spec.group_size if spec.granularity == "group" else None,
        range=spec.range_method,
        scale_dtype=spec.scale_dtype,
        rows=rows,
        cols=cols,
        n_groups=groups,
        packing=packing,
        codes=codes.name,
        scale=stored[1].name,
        zero_point=stored[2].name if not signed else None,
        scale_bits=sb,
        super_block=None if sb is None else SUPER_BLOCK,
        super=None if sb is None else f"{name}.qsuper",
        codebook=spec.codebook,
        levels=f"{name}.qlevels" if spec.codebook == "fit" else None,
    )
    return layout, stored


def uniform_layout(info: TensorInfo, spec: UniformSpec) -> tuple[UniformStored, list[TensorInfo]]:
    """How ``info`` with variable-rate codes is stored: codes (rows, cols) in the dtype the
    measuring pass found (``spec.code_dtype``), then steps (rows, 1) float32."""
    assert spec.code_dtype is not None, "variable-rate codes need their dtype before the header"
    rows, cols = row_shape(info.shape, spec.rows_spec)
    codes = TensorInfo(f"{info.name}.ucodes", (rows, cols), spec.code_dtype)
    step = TensorInfo(f"{info.name}.ustep", (rows, 1), "float32")
    layout = UniformStored(
        target=spec.target,
        target_value=spec.value,
        granularity=spec.granularity,
        axis=None if spec.granularity == "tensor" else spec.axis,
        rows=rows,
        cols=cols,
        code_dtype=spec.code_dtype,
        codes=codes.name,
        step=step.name,
    )
    return layout, [codes, step]


def uniform_arrays(entry: TensorRecipe, u: UniformTensor) -> list[tuple[str, np.ndarray]]:
    """The stored tensors (name, array) of one tensor with variable-rate codes."""
    s = entry.uniform
    assert s is not None
    return [(s.codes, u.codes), (s.step, u.step)]


def quantized_arrays(entry: TensorRecipe, q: QuantizedTensor) -> list[tuple[str, np.ndarray]]:
    """The stored tensors (name, array), in payload order, that hold one quantized tensor."""
    s = entry.quantized
    assert s is not None
    packing = s.packing
    codes = q.codes if packing == "none" else pack_codes(q.codes, q.spec.bits, packing)
    second = q.level2
    if second is None:
        stored = [(s.codes, codes), (s.scale, q.scale)]
        if s.zero_point:
            stored.append((s.zero_point, q.zero_point))
        return stored
    sb = s.scale_bits
    assert sb is not None and s.super is not None
    stored = [(s.codes, codes), (s.scale, pack_codes(second.scale_codes, sb))]
    supers = [second.super_scale]
    if s.zero_point:
        assert second.min_codes is not None and second.super_min is not None
        stored.append((s.zero_point, pack_codes(second.min_codes, sb)))
        supers.append(second.super_min)
    stored.append((s.super, np.stack(supers, axis=1).astype(np.float32)))
    if s.levels is not None:
        assert q.levels is not None
        stored.append((s.levels, np.asarray(q.levels, np.float32)))
    return stored


def build_recipe(
    plans: list[Placement], source: dict[str, Any], *, path: Path | None = None
) -> tuple[Recipe, list[TensorInfo]]:
    """The recipe and the stored tensors (payload order) for a plan, before any value is read.
    ``path`` is the input file, named in the error when a tensor name cannot be stored."""
    where = f"{path}: " if path is not None else ""
    entries: list[TensorRecipe] = []
    stored: list[TensorInfo] = []
    for plan in plans:
        if plan.info.name.startswith(RESERVED_PREFIX):
            raise InputError(
                f"{where}tensor {plan.info.name!r}: names under {RESERVED_PREFIX} are reserved "
                "for qcompress; rename it"
            )
        info = plan.info
        uniform: UniformStored | None = None
        layout: Stored | None = None
        if plan.action == QUANTIZED and isinstance(plan.spec, UniformSpec):
            uniform, infos = uniform_layout(info, plan.spec)
            stored_as: str | None = None
        elif plan.action == QUANTIZED:
            assert plan.spec is not None
            layout, infos = quantized_layout(info, plan.spec)
            stored_as = None
        else:
            infos, stored_as = [info], info.name
        entries.append(
            TensorRecipe(
                info.name,
                info.dtype,
                info.shape,
                plan.action,
                plan.reason,
                stored_as,
                layout,
                uniform,
            )
        )
        stored.extend(infos)
    names = [i.name for i in stored]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(
            f"{where}tensor {dup!r} clashes with a name the artifact needs for another tensor; "
            "rename it, or keep the other tensor in float with --keep"
        )
    stored.append(TensorInfo(STATS_TENSOR, (len(plans), len(STATS_COLUMNS)), "float64"))
    digest = recipe_table.current_digest()  # read at call time: tests swap it
    recipe = Recipe(
        format_version=recipe_table.FORMAT_VERSION,
        tool=f"qcompress {__version__}",
        source=source,
        tensors=tuple(entries),
        stats={"tensor": STATS_TENSOR, "columns": list(STATS_COLUMNS)},
        integrity={
            "algorithm": recipe_table.DIGEST,
            "tensor": digest.tensor,
            "covers": [*names, STATS_TENSOR, RECIPE_ROW],
        },
    )
    return recipe, stored


def stored_nbytes(info: TensorInfo, spec: QuantSpec | UniformSpec | None) -> int:
    """Bytes the artifact spends on ``info``: its stored tensors quantized with ``spec``, or the
    tensor itself when ``spec`` is None (kept or passed through)."""
    if spec is None:
        return info.nbytes
    if isinstance(spec, UniformSpec):
        return sum(t.nbytes for t in uniform_layout(info, spec)[1])
    return sum(t.nbytes for t in quantized_layout(info, spec)[1])
