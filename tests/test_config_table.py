"""The one table of knobs (qcompress.config) against every surface that lists them: the options
dataclass, the plan file's keys, the report's options and its JSON Schema, the engine's table."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from qcompress import config
from qcompress.config import KNOBS, QuantizeOptions
from qcompress.engine import spec
from qcompress.errors import UsageError
from qcompress.quantize import plan_file
from qcompress.report import TensorReport, dumps, json_safe, schema

NULLABLE = {
    int: ["integer", "null"],
    float: ["number", "null"],
    str: ["string", "null"],
    bool: ["boolean", "null"],
}


def options_schema() -> dict[str, object]:
    """What the report schema must say about ``options``, derived from the table (no
    ``required``: test_defaults_report_one_key_per_knob checks real reports have every knob)."""
    props: dict[str, object] = {}
    for knob in KNOBS:
        if knob.type is tuple:
            props[knob.name] = {"type": "array", "items": {"type": "string"}}
            continue
        prop: dict[str, object] = {"type": NULLABLE[knob.type]}
        if knob.choices is not None:
            choices = (
                [c for c in knob.choices if c != 0] if knob.name == "scale_bits" else knob.choices
            )
            prop = {"enum": [*choices, None]}
        if knob.minimum is not None:
            prop["minimum"] = knob.minimum
        if knob.maximum is not None:
            prop["maximum"] = knob.maximum
        props[knob.name] = prop
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }


def test_report_schema_options_derive_from_the_table() -> None:
    assert schema()["properties"]["options"] == options_schema()


def test_report_schema_tensor_bounds_are_the_engines() -> None:
    for where in ("tensor", "candidate"):
        props = schema()["$defs"][where]["properties"]
        assert (props["bits"]["minimum"], props["bits"]["maximum"]) == (
            min(spec.BITS),
            max(spec.BITS),
        )
        assert props["group_size"]["minimum"] == spec.GROUP_SIZE_MIN
        assert props["group_size"]["maximum"] == spec.GROUP_SIZE_MAX
    scale_bits = schema()["$defs"]["tensor"]["properties"]["scale_bits"]
    assert (scale_bits["minimum"], scale_bits["maximum"]) == (
        min(spec.SCALE_BITS),
        max(spec.SCALE_BITS),
    )


def test_defaults_report_one_key_per_knob_in_table_order() -> None:
    assert list(QuantizeOptions().defaults()) == [k.name for k in KNOBS]
    assert list(QuantizeOptions(bits=4).defaults()) == [k.name for k in KNOBS]


def test_options_dataclass_defaults_are_the_tables() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(QuantizeOptions)}
    assert set(fields) == {k.field for k in KNOBS}
    for knob in KNOBS:
        assert fields[knob.field] == knob.default, knob.name
    assert config.DEFAULTS["min_elements"].default == 1024
    assert config.LOW_BIT_DEFAULTS[4] == (32, 6)


def test_plan_keys_derive_from_the_table() -> None:
    assert plan_file.SETTINGS == {
        "bits": "bits",
        "scheme": "scheme",
        "granularity": "granularity",
        "group_size": "group_size",
        "axis": "axis",
        "range": "range_method",
        "scale_dtype": "scale_dtype",
        "scale_bits": "scale_bits",
        "max_abs_error": "max_abs_error",
        "max_rel_error": "max_rel_error",
        "codebook": "codebook",
    }
    assert plan_file.DEFAULT_ONLY == {"min_elements": "min_elements"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 9}, "--bits 9: must be one of 2, 3, 4, 5, 6, 7, 8"),
        ({"scale_bits": 3}, "--scale-bits 3: must be one of 0, 4, 5, 6, 7, 8"),
        ({"group_size": 8}, "--group-size 8: must be from 16 to 1024"),
        ({"group_size": 2048}, "--group-size 2048: must be from 16 to 1024"),
        ({"min_elements": -1}, "--min-elements -1: must be 0 or more"),
        ({"range_method": "p99"}, "--range p99: must be one of minmax, percentile, mse"),
    ],
)
def test_options_refuse_out_of_table_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as err:
        QuantizeOptions(**kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("bits", 9, "must be one of 2, 3, 4, 5, 6, 7, 8"),
        ("bits", True, "must be one of 2, 3, 4, 5, 6, 7, 8"),
        ("group_size", 8, "must be from 16 to 1024"),
        ("group_size", "64", "must be an integer"),
        ("axis", 1.5, "must be an integer"),
        ("min_elements", -1, "must be 0 or more"),
        ("bits", 4, None),
        ("axis", -1, None),
    ],
)
def test_plan_values_checked_by_the_table(key: str, value: object, problem: str | None) -> None:
    assert plan_file._check_value(key, value) == problem


def test_tensor_report_fields_are_the_schemas_in_order() -> None:
    """TensorReport's field order is the report's key order; every field is in the schema."""
    names = [f.name for f in dataclasses.fields(TensorReport)]
    tensor = schema()["$defs"]["tensor"]
    assert names[: len(tensor["required"])] == tensor["required"]
    assert set(names) <= set(tensor["properties"])


def test_dumps_marks_nonfinite_like_json_safe() -> None:
    """dumps marks NaN/Inf in one walk; the result is json_safe's, to the byte."""
    nan, inf = math.nan, math.inf
    doc = {
        "a": 1.0,
        "b": [1.0, nan],
        "tensors": [{"x": inf, "y": [-inf, 2]}, {"z": {"q": nan}}],
        "n": {"k": nan, "m": [inf]},
    }
    text = dumps(doc)
    assert json.loads(text) == json_safe(doc)
    assert json.loads(text)["tensors"][0]["nonfinite"] == {"x": "Infinity", "y/0": "-Infinity"}
    assert json.loads(text)["tensors"][1]["z"] == {"q": None, "nonfinite": {"q": "NaN"}}
    assert json.loads(dumps([nan, {"a": inf}])) == [
        None,
        {"a": None, "nonfinite": {"a": "Infinity"}},
    ]
