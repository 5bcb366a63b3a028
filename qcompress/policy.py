"""Which tensors to quantize, and how: DESIGN.md's defaults turned into one decision per tensor.

The policy sees only names, shapes, dtypes and the source layout, never values, so the whole plan
(and the artifact header) is known before the first tensor is read.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterable
from dataclasses import dataclass

from qcompress.engine.spec import (
    BITS,
    GRANULARITIES,
    GROUP_SIZE_MAX,
    GROUP_SIZE_MIN,
    RANGE_METHODS,
    SCALE_BITS,
    SCALE_DTYPES,
    SCHEMES,
    QuantSpec,
)
from qcompress.errors import UsageError
from qcompress.formats.base import Layout, TensorInfo
from qcompress.plan import Plan, Rule

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
DEFAULT_BITS = 8
DEFAULT_MIN_ELEMENTS = 1024
DEFAULT_GROUP_SIZE = 64  # for an explicit --granularity group at 8 bits
LOW_BIT_DEFAULTS: dict[int, tuple[int, int]] = {b: (32, 6) for b in BITS if b < 8}
"""(group size, scale bits) chosen below 8 bits, from benchmarks/quality.py (README, Quality):
groups of 32 with affine codes, an MSE range search and 6-bit second-level scale and min codes
beat GGUF's Q4_0/Q5_0 by more than 1 dB at fewer bits per weight."""

QUANTIZED, KEPT, PASSTHROUGH = "quantized", "kept", "passthrough"


@dataclass(frozen=True)
class QuantizeOptions:
    """What the user asked for. ``None`` means "the expert default for these bits"."""

    bits: int = DEFAULT_BITS
    scheme: str | None = None
    granularity: str | None = None
    group_size: int | None = None
    axis: int | None = None
    range_method: str | None = None
    scale_dtype: str = "float32"
    scale_bits: int | None = None  # None: the default for these bits; 0: float scales
    keep: tuple[str, ...] = ()
    min_elements: int = DEFAULT_MIN_ELEMENTS
    plan: Plan | None = None  # PLAN.toml, parsed: qcompress.plan.load_plan
    target_bpw: float | None = None  # choose bits per tensor: at most this many bits per weight
    min_sqnr: float | None = None  # choose bits per tensor: the fewest that reach this SQNR (dB)

    def __post_init__(self) -> None:
        _check_choice("--bits", self.bits, BITS)
        _check_choice("--scheme", self.scheme, SCHEMES)
        _check_choice("--granularity", self.granularity, GRANULARITIES)
        _check_choice("--range", self.range_method, RANGE_METHODS)
        _check_choice("--scale-dtype", self.scale_dtype, SCALE_DTYPES)
        _check_choice("--scale-bits", self.scale_bits, (0, *SCALE_BITS))
        if self.scale_bits and self.scale_dtype != "float32":
            raise UsageError(
                f"--scale-bits {self.scale_bits} with --scale-dtype {self.scale_dtype}: scale "
                "codes sit under float32 super-scales; use --scale-bits 0 for float16 scales"
            )
        if self.group_size is not None and not GROUP_SIZE_MIN <= self.group_size <= GROUP_SIZE_MAX:
            raise UsageError(
                f"--group-size {self.group_size}: must be from {GROUP_SIZE_MIN} to {GROUP_SIZE_MAX}"
            )
        if self.min_elements < 0:
            raise UsageError(f"--min-elements {self.min_elements}: must be 0 or more")
        self._check_budget()

    def _check_budget(self) -> None:
        if self.target_bpw is not None and self.min_sqnr is not None:
            raise UsageError("--target-bpw and --min-sqnr: give one budget, not both")
        if self.target_bpw is not None and not (
            math.isfinite(self.target_bpw) and self.target_bpw > 0
        ):
            raise UsageError(f"--target-bpw {self.target_bpw}: must be a positive number")
        if self.min_sqnr is not None and not math.isfinite(self.min_sqnr):
            raise UsageError(f"--min-sqnr {self.min_sqnr}: must be a finite number of dB")
        if self.budget and self.plan is not None and self.plan.sets("bits"):
            raise UsageError(
                f"{self.plan.path}: [default] sets bits, which {self.budget} chooses; "
                "remove it (set bits in a [[rule]] to pin tensors)"
            )

    @property
    def budget(self) -> str | None:
        """The budget that chooses bits per tensor, as the user wrote it, or None."""
        if self.target_bpw is not None:
            return f"--target-bpw {self.target_bpw:g}"
        if self.min_sqnr is not None:
            return f"--min-sqnr {self.min_sqnr:g}"
        return None

    def defaults(self) -> dict[str, object]:
        """The options with every default filled in, as the report records them."""
        low = self.bits < 8
        group_size, scale_bits = LOW_BIT_DEFAULTS.get(self.bits, (DEFAULT_GROUP_SIZE, 0))
        if self.scale_bits is not None:
            scale_bits = self.scale_bits
        elif self.scale_dtype != "float32":
            scale_bits = 0  # float16 scales asked for: no second level
        return {
            "bits": self.bits,
            "scheme": self.scheme or ("affine" if low else "symmetric"),
            "granularity": self.granularity or ("group" if low else "channel"),
            "group_size": self.group_size or group_size,
            "axis": self.axis,
            "range": self.range_method or ("mse" if low else "minmax"),
            "scale_dtype": self.scale_dtype,
            "scale_bits": scale_bits or None,
            "keep": list(self.keep),
            "min_elements": self.min_elements,
            "plan": None if self.plan is None else self.plan.path,
            "target_bpw": self.target_bpw,
            "min_sqnr": self.min_sqnr,
        }

    def with_settings(self, settings: tuple[tuple[str, object], ...]) -> QuantizeOptions:
        """These options overridden by (field, value) pairs from a plan, without the plan or
        budget (the result describes one tensor's recipe; defaults() still fills the rest)."""
        if not settings:
            return self
        return dataclasses.replace(
            self, plan=None, target_bpw=None, min_sqnr=None, **dict(settings)
        )


def _check_choice(flag: str, value: object, allowed: tuple) -> None:
    if value is not None and value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise UsageError(f"{flag} {value}: must be one of {choices}")


@dataclass(frozen=True)
class TensorPlan:
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


def default_axis(info: TensorInfo, layout: Layout) -> int:
    """The output-channel axis by the source framework's convention."""
    ndim = len(info.shape)
    if layout == "pytorch":
        return 0
    leaf = info.name.rsplit("/", 1)[-1]
    if ndim == 4 and leaf.startswith("depthwise_kernel"):
        return 2  # Keras depthwise [kh, kw, channels, multiplier]: channels are the outputs
    return ndim - 1


def plan_tensor(info: TensorInfo, layout: Layout, options: QuantizeOptions) -> TensorPlan:
    """Decide one tensor's fate from its name, shape and dtype.

    Settings combine as command-line options < the plan's [default] < the first matching plan
    rule. Under a budget, tensors whose bits no rule pins get candidates to choose among.
    """
    if info.dtype not in FLOAT_DTYPES:
        return TensorPlan(info, PASSTHROUGH, f"{info.dtype} is not a float dtype: stored unchanged")
    plan = options.plan
    rule = plan.rule_for(info.name) if plan is not None else None
    decided_by = _decided_by(plan, rule)
    if rule is not None and rule.keep:
        return TensorPlan(info, KEPT, f"{rule.describe()}: keep = true", None, decided_by)
    resolved = options.with_settings(
        (plan.default if plan else ()) + (rule.settings if rule else ())
    )
    if rule is None or rule.keep is None:
        kept = _kept_by_default(info, resolved)
        if kept:
            return TensorPlan(info, KEPT, kept)
    reason = "float tensor" if rule is None else f"float tensor; {rule.describe()}"
    pinned = rule is not None and any(k == "bits" for k, _ in rule.settings)
    if options.budget and not pinned:
        candidates = candidate_specs(info, layout, resolved)
        return TensorPlan(info, QUANTIZED, reason, candidates[0], options.budget, candidates)
    return TensorPlan(info, QUANTIZED, reason, _spec(info, layout, resolved), decided_by)


def _decided_by(plan: Plan | None, rule: Rule | None) -> str:
    if rule is not None:
        return rule.describe()
    if plan is not None and plan.default:
        return "plan default"
    return "options"


def _kept_by_default(info: TensorInfo, options: QuantizeOptions) -> str | None:
    """Why the default rules keep a float tensor in float (--keep, 1-D, small), or None."""
    for pattern in options.keep:
        if fnmatch.fnmatchcase(info.name, pattern):
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
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names)
    ]


def candidate_specs(
    info: TensorInfo, layout: Layout, options: QuantizeOptions
) -> tuple[QuantSpec, ...]:
    """What a budget chooses among: every supported width with its default grouping, and, below
    8 bits when the granularity is not set, per-channel too (fewer scales: cheaper per weight, so
    a tight budget can keep more bits where they matter)."""
    specs = []
    for bits in BITS:
        at_width = dataclasses.replace(
            options, bits=bits, plan=None, target_bpw=None, min_sqnr=None
        )
        spec = _spec(info, layout, at_width)
        specs.append(spec)
        if options.granularity is None and spec.granularity == "group":
            specs.append(dataclasses.replace(spec, granularity="channel"))
    return tuple(dict.fromkeys(specs))


def _spec(info: TensorInfo, layout: Layout, options: QuantizeOptions) -> QuantSpec:
    d = options.defaults()
    axis = default_axis(info, layout) if options.axis is None else options.axis
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
