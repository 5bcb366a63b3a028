"""Quality gates for ``verify`` and ``compare``: thresholds a tensor's error must meet.

A gate is a glob on tensor names, a metric and a limit. ``--min-sqnr DB`` and
``--max-abs-error E`` are gates on every tensor (``*``); ``--gate GLOB:METRIC:VALUE`` adds one
for the tensors GLOB matches. Every gate that applies to a tensor is checked, so a tensor named by
a stricter glob must pass both the global and its own limit.

A gate fails on NaN or Inf (a tensor that holds them has a NaN SQNR and a NaN or infinite error),
and a gate whose glob matches no tensor is a usage error, never a silent pass: a mistyped name
must not turn a CI check off.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass

from qcompress.config import check_pattern, name_matches
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
        return name_matches(name, self.pattern)

    def passes(self, errors: dict[str, float | None]) -> bool:
        """Whether the tensor's errors pass. An exact tensor (SQNR None = infinite) passes all;
        NaN fails all (every comparison with NaN is False)."""
        field, at_least = METRICS[self.metric]
        value = errors[field]
        if value is None:
            value = math.inf if at_least else 0.0
        return value >= self.limit if at_least else value <= self.limit

    def describe(self) -> str:
        op = ">=" if METRICS[self.metric][1] else "<="
        return f"{self.pattern}:{self.metric} {op} {_number(self.limit)}"

    def describe_failure(self, errors: dict[str, float | None]) -> str:
        """The gate and the value that failed it, with the digits that show why."""
        field, at_least = METRICS[self.metric]
        return f"{self.describe()} (got {shown(errors[field], self.limit, at_least)})"


def _number(value: float) -> str:
    """``:g`` where it is exact (30, 0.01), else the shortest text that reads back as ``value``."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def shown(value: float | None, limit: float, at_least: bool) -> str:
    """``value`` with the fewest significant digits (3 or more) whose printed number still fails
    ``limit`` as the value does: 22.473 against ``>= 22.5`` prints "22.47", never "22.5".
    Rounding is monotone, so the printed number is on the same side as the value itself."""
    if value is None:
        return "exact"
    if not math.isfinite(value):
        return str(value)  # nan, inf
    fails = (lambda v: v < limit) if at_least else (lambda v: v > limit)
    for digits in range(3, 18):
        text = f"{value:.{digits}g}"
        if not fails(value) or fails(float(text)):
            return text
    return repr(value)


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
    check_pattern(pattern, "--gate")
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
    """Descriptions of every gate that applies to ``name`` and fails, each with its value."""
    return [
        g.describe_failure(errors) for g in gates if g.applies_to(name) and not g.passes(errors)
    ]


def check_gates_match(gates: list[Gate], names: Iterable[str], where: object) -> None:
    """Raise UsageError naming the first gate whose glob matches none of ``names`` (tensors of
    ``where``): a gate that checks nothing would pass whatever the error."""
    names = list(names)
    for gate in gates:
        if not any(gate.applies_to(n) for n in names):
            pattern = gate.pattern.rstrip("*")
            close = [n for n in names if n.startswith(pattern) or pattern.startswith(n)]
            close = close or difflib.get_close_matches(gate.pattern, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "globs match whole names"
            raise UsageError(f"{where}: gate {gate.describe()!r} matches no tensor; {hint}")
