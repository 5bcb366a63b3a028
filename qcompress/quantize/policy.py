"""Which tensors to quantize, and how: DESIGN.md's defaults turned into one decision per tensor.

The policy sees only names, shapes, dtypes and the source layout, never values, so the whole plan
(and the artifact header) is known before the first tensor is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from qcompress.artifact.recipe import FLOAT_DTYPES, KEPT, PASSTHROUGH, QUANTIZED
from qcompress.config import QuantizeOptions, name_matches
from qcompress.engine.spec import BITS, NonFiniteError, QuantSpec
from qcompress.errors import InputError, UsageError
from qcompress.formats import default_axis
from qcompress.formats.base import AxisHint, Layout, TensorInfo
from qcompress.quantize.plan_file import Plan, Rule


@dataclass(frozen=True)
class TensorDecision:
    """The decision for one tensor: an action, why, and (when quantized) the engine spec.

    ``decided_by`` names what fixed it (the options, the plan's default, a plan rule, or a
    budget). With a budget, ``candidates`` lists the specs to measure and choose among; ``spec``
    is then only the first of them until the choice replaces it.
    """

    info: TensorInfo
    action: str
    reason: str
    spec: QuantSpec | None = None
    decided_by: str = "options"
    candidates: tuple[QuantSpec, ...] = ()
    axis_rule: str | None = None  # what chose the spec's axis, for the report


def decide_tensor(
    info: TensorInfo,
    layout: Layout,
    options: QuantizeOptions,
    hint: AxisHint | None = None,
    as_stored: str | None = None,
    *,
    optimizer: bool = False,
) -> TensorDecision:
    """Decide one tensor's fate from its name, shape and dtype.

    Settings combine as command-line options < the plan's [default] < the first matching plan
    rule. Under a budget, tensors whose bits no rule pins get candidates to choose among.
    ``hint`` is the axis the file itself gives (``WeightReader.axis_hints``); an explicit axis
    wins over it, and it wins over the layout's convention. ``as_stored`` is why the file says
    the tensor must stay as it is (``WeightReader.as_stored``): kept, whatever the options.
    ``optimizer`` (optimizer state) tensors stay float under a budget unless a plan rule names
    them, so the budget's bits go to the model's own weights.
    """
    if info.dtype not in FLOAT_DTYPES:
        why = as_stored or f"{info.dtype} is not a float dtype"
        return TensorDecision(info, PASSTHROUGH, f"{why}: stored unchanged")
    if as_stored is not None:
        return TensorDecision(info, KEPT, as_stored)
    plan = options.plan
    rule = plan.rule_for(info.name) if plan is not None else None
    decided_by = _decided_by(plan, rule)
    if rule is not None and rule.keep:
        return TensorDecision(info, KEPT, f"{rule.describe()}: keep = true", None, decided_by)
    if optimizer and options.budget and rule is None:
        why = (
            f"optimizer state: kept float, outside the {options.budget} budget "
            "(a plan rule naming it quantizes it; --drop-optimizer leaves it out)"
        )
        return TensorDecision(info, KEPT, why)
    resolved = options.with_settings(
        (plan.default if plan else ()) + (rule.settings if rule else ())
    )
    if rule is None or rule.keep is None:
        kept = _kept_by_default(info, resolved)
        if kept:
            return TensorDecision(info, KEPT, kept)
    reason = "float tensor" if rule is None else f"float tensor; {rule.describe()}"
    pinned = rule is not None and any(k == "bits" for k, _ in rule.settings)
    axis = choose_axis(info, layout, resolved, hint, _axis_setter(plan, rule))
    if options.budget and not pinned:
        candidates = candidate_specs(info, layout, resolved, axis)
        return TensorDecision(
            info, QUANTIZED, reason, candidates[0], options.budget, candidates, axis.rule
        )
    spec = _spec(info, resolved, axis)
    return TensorDecision(info, QUANTIZED, reason, spec, decided_by, (), axis.rule)


def choose_axis(
    info: TensorInfo,
    layout: Layout,
    options: QuantizeOptions,
    hint: AxisHint | None,
    setter: str = "--axis",
) -> AxisHint:
    """The output-channel axis and the rule that chose it: an explicit axis (``setter``: the
    option or the plan entry that set it), else what the file says (``hint``), else the
    layout's convention."""
    if options.axis is not None:
        return AxisHint(options.axis, f"axis {options.axis} set by {setter}")
    if hint is not None:
        return hint
    axis = default_axis(info, layout)
    return AxisHint(axis, f"{_LAYOUT_RULES[layout]}: axis {axis}")


_LAYOUT_RULES = {
    "pytorch": "PyTorch layout [out, in, ...]",
    "keras": "Keras layout [..., in, out]",
}


def _axis_setter(plan: Plan | None, rule: Rule | None) -> str:
    """Which explicit setting gave the axis: the plan rule, the plan's default, or --axis."""
    if rule is not None and any(k == "axis" for k, _ in rule.settings):
        return rule.describe()
    if plan is not None and any(k == "axis" for k, _ in plan.default):
        return "plan default"
    return "--axis"


def _decided_by(plan: Plan | None, rule: Rule | None) -> str:
    if rule is not None:
        return rule.describe()
    if plan is not None and plan.default:
        return "plan default"
    return "options"


def _kept_by_default(info: TensorInfo, options: QuantizeOptions) -> str | None:
    """Why the default rules keep a float tensor in float (--keep, 1-D, small), or None."""
    for pattern in options.keep:
        if name_matches(info.name, pattern):
            return f"matches --keep {pattern!r}"
    if len(info.shape) < 2:
        return f"{len(info.shape)}-D tensor (biases and norms stay float)"
    if info.size < options.min_elements:
        return f"{info.size} elements, fewer than --min-elements {options.min_elements}"
    return None


def keep_warnings(options: QuantizeOptions, names: Iterable[str]) -> list[str]:
    """One message per ``--keep`` glob that matches none of ``names``: likely a typo, and a
    tensor meant to stay float would be quantized without a word."""
    names = list(names)
    return [
        f"--keep {pattern!r} matches no tensor"
        for pattern in options.keep
        if not any(name_matches(n, pattern) for n in names)
    ]


def candidate_specs(
    info: TensorInfo, layout: Layout, options: QuantizeOptions, axis: AxisHint | None = None
) -> tuple[QuantSpec, ...]:
    """What a budget chooses among: every supported width with its default grouping, and, below
    8 bits when the granularity is not set, per-channel too (fewer scales: cheaper per weight, so
    a tight budget can keep more bits where they matter)."""
    specs = []
    for bits in BITS:
        at_width = dataclasses.replace(
            options, bits=bits, plan=None, target_bpw=None, min_sqnr=None
        )
        spec = _spec(info, at_width, axis or choose_axis(info, layout, options, None))
        specs.append(spec)
        if options.granularity is None and spec.granularity == "group":
            specs.append(dataclasses.replace(spec, granularity="channel"))
    return tuple(dict.fromkeys(specs))


def _spec(info: TensorInfo, options: QuantizeOptions, chosen: AxisHint) -> QuantSpec:
    d = options.defaults()
    axis = chosen.axis
    ndim = len(info.shape)
    if not -ndim <= axis < ndim:
        raise UsageError(f"--axis {axis}: tensor {info.name!r} has only {ndim} dimensions")
    return QuantSpec(
        bits=int(d["bits"]),
        scheme=str(d["scheme"]),
        granularity=str(d["granularity"]),
        axis=axis % ndim,
        group_size=int(d["group_size"]),
        range_method=str(d["range"]),
        scale_dtype=str(d["scale_dtype"]),
        scale_bits=None if d["scale_bits"] is None else int(str(d["scale_bits"])),
    )


def non_finite_error(path: object, name: str, err: NonFiniteError) -> InputError:
    """The one message for a tensor the engine refused for NaN or Inf, wherever it is quantized
    (the pipeline, or a budget measuring candidates): what to do about it included."""
    return InputError(
        f"{path}: tensor {name!r}: {err}; fix the model or keep the tensor in float "
        f"with --keep '{name}'"
    )
