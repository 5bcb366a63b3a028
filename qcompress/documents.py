"""Typed results to JSON documents, at the edge: the commands' results (inspect, verify,
compare) travel between modules as frozen dataclasses, and become the dicts that
``report.dumps`` prints only where they leave the program.

The document follows the dataclass: its fields in declaration order, tuples as lists, paths as
strings, nested results as objects; a field declared with ``OMIT_NONE`` is left out while it
is None (a key that only some results carry, such as compare's ``unpaired``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

OMIT_NONE = {"omit_none": True}
"""``dataclasses.field(metadata=OMIT_NONE)``: the key appears only when the value is not None."""


_SCALARS = (str, int, float, bool, type(None))
_PLANS: dict[type, tuple[tuple[str, bool], ...]] = {}  # a dataclass's (field, omit_none) pairs


def as_document(value: Any) -> Any:
    """``value`` as plain JSON data (see the module docstring). Linear in the result's size: a
    dataclass's fields are looked up once per class (inspect of 100k tensors makes 700k calls)."""
    if isinstance(value, _SCALARS):
        return value
    cls = type(value)
    plan = _PLANS.get(cls)
    if plan is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        plan = _PLANS[cls] = tuple(
            (f.name, bool(f.metadata.get("omit_none"))) for f in dataclasses.fields(value)
        )
    if plan is not None:
        out = {}
        for name, omit_none in plan:
            v = getattr(value, name)
            if v is None and omit_none:
                continue
            out[name] = as_document(v)
        return out
    if isinstance(value, (tuple, list)):
        return [as_document(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
