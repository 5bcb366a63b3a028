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


def as_document(value: Any) -> Any:
    """``value`` as plain JSON data (see the module docstring)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = as_document(v)
        return out
    if isinstance(value, (tuple, list)):
        return [as_document(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
