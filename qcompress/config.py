"""The one table of quantization knobs: names, types, defaults, choices, bounds and help.

Why one table: the knobs used to be listed five times (QuantizeOptions, the plan file's keys, the
CLI's options, the report's ``options`` and its JSON Schema), with defaults in three places and
validation in two, and they drifted (the schema allowed ``scale_bits`` 1 while the engine takes
4 to 8). Choices and bounds come from the engine's table (:mod:`qcompress.engine.spec`); the plan
file (:mod:`qcompress.quantize.plan_file`), :class:`QuantizeOptions`, the report schema's bounds
(checked by tests/test_report_schema) and the CLI's defaults and help all read :data:`KNOBS`.

This module imports only ``engine.spec`` and ``errors``, so every layer may use it.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qcompress.engine.spec import (
    BITS,
    GRANULARITIES,
    GROUP_SIZE_MAX,
    GROUP_SIZE_MIN,
    RANGE_METHODS,
    SCALE_BITS,
    SCALE_DTYPES,
    SCHEMES,
)
from qcompress.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from qcompress.quantize.plan_file import Plan

DEFAULT_BITS = 8
DEFAULT_MIN_ELEMENTS = 1024
DEFAULT_SCALE_DTYPE = "float32"
DEFAULT_GROUP_SIZE = 64  # for an explicit --granularity group at 8 bits
LOW_BIT_DEFAULTS: dict[int, tuple[int, int]] = {b: (32, 6) for b in BITS if b < 8}
"""(group size, scale bits) chosen below 8 bits, from benchmarks/quality.py (README, Quality):
groups of 32 with affine codes, an MSE range search and 6-bit second-level scale and min codes
beat GGUF's Q4_0/Q5_0 by more than 1 dB at fewer bits per weight."""
SCALE_BITS_CHOICES: tuple[int, ...] = (0, *SCALE_BITS)
"""--scale-bits values: 0 keeps float scales, else the second level's code width."""


@dataclass(frozen=True)
class Knob:
    """One quantization setting as every surface sees it.

    ``name`` is the report's and the plan file's key, ``field`` the :class:`QuantizeOptions`
    attribute, ``flag`` the CLI option. ``default`` is what QuantizeOptions holds when the user
    says nothing (None: "the expert default for these bits", spelled out in ``help``).
    ``plan``: "setting" (in ``[default]`` and rules), "default" (``[default]`` only) or "" (not in
    plan files).
    """

    name: str
    field: str
    type: type
    default: object
    help: str
    choices: tuple[object, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    plan: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not valid for this knob, or None (None itself is never checked)."""
        if value is None:
            return None
        if self.choices is not None:
            if value not in self.choices or isinstance(value, bool):
                return "must be one of " + ", ".join(str(c) for c in self.choices)
            return None
        if self.type is int and (not isinstance(value, int) or isinstance(value, bool)):
            return "must be an integer"
        if self.minimum is not None and self.maximum is not None:
            if not self.minimum <= value <= self.maximum:  # type: ignore[operator]
                return f"must be from {self.minimum} to {self.maximum}"
        elif self.minimum is not None and value < self.minimum:  # type: ignore[operator]
            return f"must be {self.minimum} or more"
        return None


KNOBS: tuple[Knob, ...] = (
    Knob("bits", "bits", int, DEFAULT_BITS, "Bits per code.", BITS, plan="setting"),
    Knob(
        "scheme",
        "scheme",
        str,
        None,
        "symmetric (zero-point 0) or affine (scale and zero-point) "
        "[default: symmetric at 8 bits, affine below].",
        SCHEMES,
        plan="setting",
    ),
    Knob(
        "granularity",
        "granularity",
        str,
        None,
        "One scale per tensor, output channel or group [default: channel at 8 bits, group below].",
        GRANULARITIES,
        plan="setting",
    ),
    Knob(
        "group_size",
        "group_size",
        int,
        None,
        "Elements per group along the input dimension "
        f"[default: {LOW_BIT_DEFAULTS[4][0]} below 8 bits, else {DEFAULT_GROUP_SIZE}].",
        minimum=GROUP_SIZE_MIN,
        maximum=GROUP_SIZE_MAX,
        plan="setting",
    ),
    Knob(
        "axis",
        "axis",
        int,
        None,
        "Output-channel axis [default: 0 for npz/safetensors; last for h5, 2 for depthwise].",
        plan="setting",
    ),
    Knob(
        "range",
        "range_method",
        str,
        None,
        "How the clipping range is chosen [default: minmax at 8 bits, mse below].",
        RANGE_METHODS,
        plan="setting",
    ),
    Knob(
        "scale_dtype",
        "scale_dtype",
        str,
        DEFAULT_SCALE_DTYPE,
        "Dtype of stored float scales and zero-points.",
        SCALE_DTYPES,
        plan="setting",
    ),
    Knob(
        "scale_bits",
        "scale_bits",
        int,
        None,
        "Store group scales (and mins) as N-bit codes under float32 super-scales, 0 for float "
        f"scales [default: {LOW_BIT_DEFAULTS[4][1]} below 8 bits, 0 at 8].",
        SCALE_BITS_CHOICES,
        plan="setting",
    ),
    Knob("keep", "keep", tuple, (), "Keep tensors whose name matches GLOB in float (repeatable)."),
    Knob(
        "drop",
        "drop",
        tuple,
        (),
        "Leave tensors whose name matches GLOB out of the artifact (repeatable).",
    ),
    Knob(
        "min_elements",
        "min_elements",
        int,
        DEFAULT_MIN_ELEMENTS,
        "Tensors with fewer elements stay in float.",
        minimum=0,
        plan="default",
    ),
    Knob(
        "plan",
        "plan",
        str,
        None,
        "Per-tensor recipes: a [default] and ordered [[rule]]s by name glob (see README).",
    ),
    Knob(
        "target_bpw",
        "target_bpw",
        float,
        None,
        "Choose bits per tensor: least total error at <= X bits per quantized weight.",
    ),
    Knob(
        "min_sqnr",
        "min_sqnr",
        float,
        None,
        "Choose bits per tensor: the fewest reaching DB; tensors that cannot stay float.",
    ),
)
DEFAULTS: dict[str, Knob] = {k.name: k for k in KNOBS}
"""Knob by report/plan name: ``DEFAULTS["min_elements"].default`` is 1024."""
PLAN_SETTINGS: dict[str, str] = {k.name: k.field for k in KNOBS if k.plan == "setting"}
"""Plan key -> QuantizeOptions field, for ``[default]`` and ``[[rule]]``."""
PLAN_DEFAULT_ONLY: dict[str, str] = {k.name: k.field for k in KNOBS if k.plan == "default"}
"""Plan key -> QuantizeOptions field, for ``[default]`` only."""
_BY_FIELD: dict[str, Knob] = {k.field: k for k in KNOBS}


def name_matches(name: str, pattern: str) -> bool:
    """Whether tensor ``name`` matches a --keep/--drop/--gate/plan ``pattern``: a shell glob
    whose ``*`` matches any run of characters, ``.`` and ``/`` included (``*conv*`` finds
    ``model_weights/conv2d/conv2d/kernel:0``), or ``re:REGEX``, a Python regular expression the
    whole name must match (``re:layers/[^/]+/vars/0`` takes one path segment: top-level layers
    only)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def check_pattern(pattern: str, where: str) -> None:
    """A UsageError naming ``where`` for a ``re:`` pattern that is no valid regular expression."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise UsageError(f"{where} {pattern!r}: not a regular expression: {exc}") from None


OPTIMIZER_GLOBS = ("optimizer_weights/*", "optimizer/*")
"""Where Keras keeps optimizer state: Keras 2 ``optimizer_weights/``, Keras 3 ``optimizer/``
(``--drop-optimizer``)."""


@dataclass(frozen=True)
class QuantizeOptions:
    """What the user asked for. ``None`` means "the expert default for these bits"; the
    defaults are :data:`KNOBS`' (a test checks the two agree)."""

    bits: int = DEFAULT_BITS
    scheme: str | None = None
    granularity: str | None = None
    group_size: int | None = None
    axis: int | None = None
    range_method: str | None = None
    scale_dtype: str = DEFAULT_SCALE_DTYPE
    scale_bits: int | None = None  # None: the default for these bits; 0: float scales
    keep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()  # --drop and --drop-optimizer (OPTIMIZER_GLOBS)
    min_elements: int = DEFAULT_MIN_ELEMENTS
    plan: Plan | None = None  # PLAN.toml, parsed: qcompress.quantize.plan_file.load_plan
    target_bpw: float | None = None  # choose bits per tensor: at most this many bits per weight
    min_sqnr: float | None = None  # choose bits per tensor: the fewest that reach this SQNR (dB)

    def __post_init__(self) -> None:
        for pattern in self.keep:
            check_pattern(pattern, "--keep")
        for pattern in self.drop:
            check_pattern(pattern, "--drop")
        for field in ("bits", "scheme", "granularity", "range_method", "scale_dtype"):
            _check_choice(_BY_FIELD[field], getattr(self, field))
        _check_choice(_BY_FIELD["scale_bits"], self.scale_bits)
        if self.scale_bits and self.scale_dtype != "float32":
            raise UsageError(
                f"--scale-bits {self.scale_bits} with --scale-dtype {self.scale_dtype}: scale "
                "codes sit under float32 super-scales; use --scale-bits 0 for float16 scales"
            )
        for field in ("group_size", "min_elements"):
            knob = _BY_FIELD[field]
            problem = knob.problem(getattr(self, field))
            if problem:
                raise UsageError(f"{knob.flag} {getattr(self, field)}: {problem}")
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
        """The options with every default filled in, as the report records them (one key per
        knob, in :data:`KNOBS` order)."""
        low = self.bits < 8
        group_size, scale_bits = LOW_BIT_DEFAULTS.get(self.bits, (DEFAULT_GROUP_SIZE, 0))
        if self.scale_bits is not None:
            scale_bits = self.scale_bits
        elif self.scale_dtype != "float32":
            scale_bits = 0  # float16 scales asked for: no second level
        plan: Path | str | None = None if self.plan is None else self.plan.path
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
            "drop": list(self.drop),
            "min_elements": self.min_elements,
            "plan": plan,
            "target_bpw": self.target_bpw,
            "min_sqnr": self.min_sqnr,
        }

    def with_settings(self, settings: tuple[tuple[str, object], ...]) -> QuantizeOptions:
        """These options overridden by (field, value) pairs from a plan, without the plan or
        budget (the result describes one tensor's recipe; defaults() still fills the rest)."""
        if not settings:
            return self
        import dataclasses

        return dataclasses.replace(
            self, plan=None, target_bpw=None, min_sqnr=None, **dict(settings)
        )


def _check_choice(knob: Knob, value: object) -> None:
    if value is not None and value not in (knob.choices or ()):
        choices = ", ".join(str(a) for a in knob.choices or ())
        raise UsageError(f"{knob.flag} {value}: must be one of {choices}")
