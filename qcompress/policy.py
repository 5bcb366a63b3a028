"""Which tensors to quantize, and how: DESIGN.md's defaults turned into one decision per tensor.

The policy sees only names, shapes, dtypes and the source layout, never values, so the whole plan
(and the artifact header) is known before the first tensor is read.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from qcompress.engine.spec import (
    BITS,
    GRANULARITIES,
    GROUP_SIZE_MAX,
    GROUP_SIZE_MIN,
    RANGE_METHODS,
    SCALE_DTYPES,
    SCHEMES,
    QuantSpec,
)
from qcompress.errors import UsageError
from qcompress.formats.base import Layout, TensorInfo

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
DEFAULT_BITS = 8
DEFAULT_MIN_ELEMENTS = 1024
DEFAULT_GROUP_SIZE = 64

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
    keep: tuple[str, ...] = ()
    min_elements: int = DEFAULT_MIN_ELEMENTS

    def __post_init__(self) -> None:
        _check_choice("--bits", self.bits, BITS)
        _check_choice("--scheme", self.scheme, SCHEMES)
        _check_choice("--granularity", self.granularity, GRANULARITIES)
        _check_choice("--range", self.range_method, RANGE_METHODS)
        _check_choice("--scale-dtype", self.scale_dtype, SCALE_DTYPES)
        if self.group_size is not None and not GROUP_SIZE_MIN <= self.group_size <= GROUP_SIZE_MAX:
            raise UsageError(
                f"--group-size {self.group_size}: must be from {GROUP_SIZE_MIN} to {GROUP_SIZE_MAX}"
            )
        if self.min_elements < 0:
            raise UsageError(f"--min-elements {self.min_elements}: must be 0 or more")

    def defaults(self) -> dict[str, object]:
        """The options with every default filled in, as the report records them."""
        low = self.bits < 8
        return {
            "bits": self.bits,
            "scheme": self.scheme or "symmetric",
            "granularity": self.granularity or ("group" if low else "channel"),
            "group_size": self.group_size or DEFAULT_GROUP_SIZE,
            "axis": self.axis,
            "range": self.range_method or ("mse" if low else "minmax"),
            "scale_dtype": self.scale_dtype,
            "keep": list(self.keep),
            "min_elements": self.min_elements,
        }


def _check_choice(flag: str, value: object, allowed: tuple) -> None:
    if value is not None and value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise UsageError(f"{flag} {value}: must be one of {choices}")


@dataclass(frozen=True)
class TensorPlan:
    """The decision for one tensor: an action, why, and (when quantized) the engine spec."""

    info: TensorInfo
    action: str
    reason: str
    spec: QuantSpec | None = None


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
    """Decide one tensor's fate from its name, shape and dtype."""
    if info.dtype not in FLOAT_DTYPES:
        return TensorPlan(info, PASSTHROUGH, f"{info.dtype} is not a float dtype: stored unchanged")
    for pattern in options.keep:
        if fnmatch.fnmatchcase(info.name, pattern):
            return TensorPlan(info, KEPT, f"matches --keep {pattern!r}")
    if len(info.shape) < 2:
        return TensorPlan(info, KEPT, f"{len(info.shape)}-D tensor (biases and norms stay float)")
    if info.size < options.min_elements:
        return TensorPlan(
            info, KEPT, f"{info.size} elements, fewer than --min-elements {options.min_elements}"
        )
    d = options.defaults()
    axis = default_axis(info, layout) if options.axis is None else options.axis
    ndim = len(info.shape)
    if not -ndim <= axis < ndim:
        raise UsageError(f"--axis {axis}: tensor {info.name!r} has only {ndim} dimensions")
    spec = QuantSpec(
        bits=int(d["bits"]),
        scheme=str(d["scheme"]),
        granularity=str(d["granularity"]),
        axis=axis % ndim,
        group_size=int(d["group_size"]),
        range_method=str(d["range"]),
        scale_dtype=str(d["scale_dtype"]),
    )
    return TensorPlan(info, QUANTIZED, "float tensor", spec)
