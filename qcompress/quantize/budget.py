"""Mixed precision: turn the policy's per-tensor plans into final ones, choosing bits by budget.

Under ``--target-bpw`` or ``--min-sqnr`` the policy leaves some tensors undecided, each with
candidate specs. This module measures them and lets
``engine.bit_allocation`` choose. Memory stays bounded by one tensor: a first pass reads
each undecided tensor once and quantizes it at every candidate (``jobs`` candidates at a time,
in threads), keeping only the error and the stored size (a few numbers); the caller's usual
streaming pass then re-reads and re-quantizes each tensor with the chosen spec and writes the
artifact. Quantization is deterministic, so the second pass reproduces exactly the error
measured in the first. Keeping the chosen codes instead would save that second quantization but
hold the whole quantized model in memory. Candidates: every width with its default grouping, and
per-channel below 8 bits (``policy.candidate_specs``).

Sizes come from the artifact's own layout (:func:`qcompress.artifact.layout.stored_nbytes`), so the
budget is checked against exactly the bytes the artifact will store, scales included.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from qcompress import engine
from qcompress.artifact.layout import quantized_arrays, quantized_layout, stored_nbytes
from qcompress.artifact.recipe import KEPT, QUANTIZED, TensorRecipe
from qcompress.config import QuantizeOptions
from qcompress.engine.bit_allocation import (
    Allocation,
    BudgetError,
    ErrorCurve,
    allocate_bits,
    allocate_min_sqnr,
    rel_error_to_sqnr,
)
from qcompress.engine.spec import NonFiniteError, QuantSpec
from qcompress.engine.uniform import UniformSpec
from qcompress.errors import UsageError
from qcompress.formats.base import WeightReader
from qcompress.quantize.policy import TensorDecision, keep_warnings, non_finite_error
from qcompress.quantize.varrate import (
    measure_uniform,
    priced_nbytes,
    resolve_code_dtypes,
    step_ladder,
)
from qcompress.report import finite_or_none


@dataclass(frozen=True)
class Measured:
    """One candidate of one tensor: its spec, relative error and the bytes it would store."""

    spec: QuantSpec | UniformSpec
    rel_error: float
    stored_bytes: int


@dataclass
class Decisions:
    """Final plans, what the report says about each choice, and warnings for the user."""

    plans: list[TensorDecision]
    measured: dict[str, list[Measured]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def candidates_for(self, plan: TensorDecision) -> list[dict[str, Any]] | None:
        """The report's ``candidates`` of a budget-chosen tensor (None for any other): every
        spec measured, its error and size, and which was chosen."""
        measured = self.measured.get(plan.info.name)
        if measured is None:
            return None
        weights = max(plan.info.size, 1)
        rows = [
            {
                "bits": m.spec.bits if isinstance(m.spec, QuantSpec) else None,
                "granularity": m.spec.granularity,
                "group_size": m.spec.group_size
                if isinstance(m.spec, QuantSpec) and m.spec.granularity == "group"
                else None,
                "rel_error": m.rel_error,
                "sqnr_db": finite_or_none(rel_error_to_sqnr(m.rel_error)),
                "stored_bytes": m.stored_bytes,
                "bits_per_weight": 8 * m.stored_bytes / weights,
                "chosen": plan.action == QUANTIZED and m.spec == plan.spec,
                "mode": "fixed-rate" if isinstance(m.spec, QuantSpec) else "variable-rate",
                "step": None if isinstance(m.spec, QuantSpec) else m.spec.value,
            }
            for m in measured
        ]
        for row, m in zip(rows, measured, strict=True):
            if (
                getattr(m.spec, "codebook", None) is not None
            ):  # absent otherwise: reports stay as they were
                row["codebook"] = m.spec.codebook
        return rows


def decide_budget(
    reader: WeightReader, plans: list[TensorDecision], options: QuantizeOptions, *, jobs: int = 1
) -> Decisions:
    """Every tensor's final plan: the policy's ``plans``, with bits chosen by the budget if
    there is one; and the plan file's warnings (rules that decide no tensor). ``jobs`` threads
    measure one tensor's candidates at once (numpy releases the GIL)."""
    decisions = Decisions(list(plans))
    decisions.warnings = keep_warnings(options, (p.info.name for p in plans))
    if options.plan is not None:
        decisions.warnings += options.plan.warnings(p.info.name for p in plans)
    decisions.plans = plans = resolve_code_dtypes(reader, list(plans), jobs=jobs)
    if not options.budget:
        return decisions
    with ThreadPoolExecutor(max_workers=max(jobs, 1), thread_name_prefix="qc-measure") as pool:
        for plan in plans:
            if plan.candidates:
                variable = options.target_bpw is not None and not options.fixed_rate
                entropy = options.entropy != "none"
                decisions.measured[plan.info.name] = _measure(reader, plan, pool, variable, entropy)
    decisions.plans = _choose(reader, plans, decisions.measured, options)
    return decisions


def _measure(
    reader: WeightReader,
    plan: TensorDecision,
    pool: ThreadPoolExecutor,
    variable: bool,
    entropy: bool,
) -> list[Measured]:
    """Read the tensor once; quantize it with every candidate (and, when ``variable``, at every
    step of :func:`varrate.step_ladder`); keep only error and the bytes the artifact would
    store, after the entropy stage when ``entropy`` (exact: the writer's own coder)."""
    name = plan.info.name
    x = reader.read(name)

    def one(spec: QuantSpec) -> Measured:
        try:
            q = engine.quantize(x, spec)
            stats = engine.error_stats(x, engine.dequantize(q))
        except NonFiniteError as e:
            raise non_finite_error(reader.path, name, e) from None
        rel = stats.mse / stats.signal_power if stats.signal_power > 0 else 0.0
        if not entropy:
            return Measured(spec, rel, stored_nbytes(plan.info, spec))
        layout, _ = quantized_layout(plan.info, spec)
        entry = TensorRecipe(name, plan.info.dtype, plan.info.shape, QUANTIZED, "", None, layout)
        arrays = [a for _, a in quantized_arrays(entry, q)]
        return Measured(spec, rel, priced_nbytes(arrays, entropy))

    try:
        fixed = list(pool.map(one, plan.candidates))
        if not variable:
            return fixed
        try:
            first = plan.candidates[0]
            channel = all(c.granularity == "channel" for c in plan.candidates)
            ladder = step_ladder(x, first.axis, "channel" if channel else "tensor")
        except NonFiniteError as e:
            raise non_finite_error(reader.path, name, e) from None
        flags = [entropy] * len(ladder)
        found = pool.map(measure_uniform, [x] * len(ladder), ladder, flags)
        return fixed + [Measured(*m) for m in found if m]
    finally:
        reader.release(name)


def _choose(
    reader: WeightReader,
    plans: list[TensorDecision],
    measured: dict[str, list[Measured]],
    options: QuantizeOptions,
) -> list[TensorDecision]:
    """Allocate, and rewrite the undecided plans with the chosen spec (or keep them float)."""
    quantized = [p for p in plans if p.action == QUANTIZED]
    if options.target_bpw is not None:
        # Tensors a rule pinned count towards the budget with their one setting.
        curves = []
        for p in quantized:
            ms = measured.get(p.info.name)
            if ms is None:
                assert p.spec is not None
                size = 8 * stored_nbytes(p.info, p.spec)
                curves.append(ErrorCurve.of(p.info.size, [size], [0]))
            else:
                curves.append(
                    ErrorCurve.of(
                        p.info.size, [8 * m.stored_bytes for m in ms], [m.rel_error for m in ms]
                    )
                )
        # Kept float tensors are stored too: they count, at their size and no error.
        curves += [
            ErrorCurve.of(p.info.size, [8 * stored_nbytes(p.info, None)], [0])
            for p in plans
            if p.action == KEPT
        ]
        try:
            allocation = allocate_bits(curves, options.target_bpw)
        except BudgetError as e:
            raise UsageError(f"{reader.path}: --target-bpw {options.target_bpw:g}: {e}") from None
        picks = _picks(allocation)[: len(quantized)]
        chosen = dict(zip((p.info.name for p in quantized), picks, strict=True))
    else:
        assert options.min_sqnr is not None
        undecided = [p for p in quantized if p.info.name in measured]
        curves = [
            ErrorCurve.of(
                p.info.size,
                [8 * m.stored_bytes for m in measured[p.info.name]],
                [m.rel_error for m in measured[p.info.name]],
            )
            for p in undecided
        ]
        allocation = allocate_min_sqnr(curves, options.min_sqnr)
        chosen = dict(zip((p.info.name for p in undecided), _picks(allocation), strict=True))
    out = []
    for p in plans:
        ms = measured.get(p.info.name)
        if ms is None:
            out.append(p)
            continue
        k, note = chosen[p.info.name]
        if k is None:
            out.append(dataclasses.replace(p, action=KEPT, reason=note, spec=None))
        else:
            m = ms[k]
            table = (
                f" {m.spec.codebook} codebook"
                if isinstance(m.spec, QuantSpec) and m.spec.codebook
                else ""
            )
            what = (
                f"{m.spec.bits} bits{table} {m.spec.granularity}"
                if isinstance(m.spec, QuantSpec)
                else f"variable-rate step {m.spec.value:.4g}"
            )
            why = f"{note}: {what}, SQNR {rel_error_to_sqnr(m.rel_error):.1f} dB"
            out.append(dataclasses.replace(p, reason=why, spec=m.spec))
    return out


def _picks(allocation: Allocation) -> list[tuple[int | None, str]]:
    return list(zip(allocation.choice, allocation.notes, strict=True))
