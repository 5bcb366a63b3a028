"""Quality gates for ``verify`` and ``compare``: thresholds a tensor's error must meet.

A gate is a glob on tensor names, a metric and a limit. ``--min-sqnr DB`` and
``--max-abs-error E`` are gates on every tensor (``*``); ``--gate GLOB:METRIC:VALUE`` adds one
for the tensors GLOB matches. Every gate that applies to a tensor is checked, so a tensor named by
a stricter glob must pass both the global and its own limit.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from qcompress.errors import UsageError

# metric -> (error field it reads, True if the value must be at least the limit)
METRICS: dict[str, tuple[str, bool]] = {
    "min_sqnr": ("sqnr_db", True),
    "max_abs_error": ("max_abs_error", False),
    "max_mse": ("mse", False),
}


@dataclass(frozen=True)
class Gate:
    pattern: str
    metric: str
    limit: float

    def applies_to(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    def passes(self, errors: dict[str, float | None]) -> bool:
        """Whether the tensor's errors pass. An exact tensor (SQNR None = infinite) passes all."""
        field, at_least = METRICS[self.metric]
        value = errors[field]
        if value is None:
            value = math.inf if at_least else 0.0
        return value >= self.limit if at_least else value <= self.limit

    def describe(self) -> str:
        op = ">=" if METRICS[self.metric][1] else "<="
        return f"{self.pattern}:{self.metric} {op} {self.limit:g}"


def parse_gate(text: str) -> Gate:
    """``GLOB:METRIC:VALUE``; the glob itself may contain colons."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise UsageError(f"--gate {text!r}: expected GLOB:METRIC:VALUE, e.g. 'fc*:min_sqnr:30'")
    pattern, metric, value = parts
    if metric not in METRICS:
        raise UsageError(f"--gate {text!r}: metric must be one of {', '.join(METRICS)}")
    try:
        limit = float(value)
    except ValueError:
        raise UsageError(f"--gate {text!r}: {value!r} is not a number") from None
    if not math.isfinite(limit):
        raise UsageError(f"--gate {text!r}: the limit must be a finite number")
    return Gate(pattern, metric, limit)


def build_gates(
    min_sqnr: float | None, max_abs_error: float | None, specs: tuple[str, ...] = ()
) -> list[Gate]:
    gates = []
    if min_sqnr is not None:
        gates.append(Gate("*", "min_sqnr", min_sqnr))
    if max_abs_error is not None:
        gates.append(Gate("*", "max_abs_error", max_abs_error))
    gates.extend(parse_gate(s) for s in specs)
    return gates


def failed_gates(name: str, errors: dict[str, float | None], gates: list[Gate]) -> list[str]:
    """Descriptions of every gate that applies to ``name`` and fails."""
    return [g.describe() for g in gates if g.applies_to(name) and not g.passes(errors)]
