"""The axis a file itself gives (``WeightReader.axis_hints``) against explicit settings and the
layout's convention, and the report's ``axis_rule`` that names which one chose."""

from __future__ import annotations

import numpy as np
import pytest

from qcompress.config import QuantizeOptions
from qcompress.formats.base import AxisHint, TensorInfo
from qcompress.quantize.plan_file import parse_plan
from qcompress.quantize.policy import decide_tensor

INFO = TensorInfo("layers/depthwise_conv2d/vars/0", (3, 3, 8, 2), "float32")
HINT = AxisHint(2, "Keras 3 DepthwiseConv2D kernel: axis 2")


def test_a_hint_beats_the_layout_convention() -> None:
    plain = decide_tensor(
        TensorInfo("x/kernel", (3, 3, 8, 2), "float32"), "keras", QuantizeOptions(min_elements=1)
    )
    assert (plain.spec.axis, plain.axis_rule) == (3, "Keras layout [..., in, out]: axis 3")
    hinted = decide_tensor(INFO, "keras", QuantizeOptions(min_elements=1), HINT)
    assert (hinted.spec.axis, hinted.axis_rule) == (2, HINT.rule)


def test_pytorch_layout_rule_is_named() -> None:
    d = decide_tensor(
        TensorInfo("w", (4, 5), "float32"), "pytorch", QuantizeOptions(min_elements=1)
    )
    assert (d.spec.axis, d.axis_rule) == (0, "PyTorch layout [out, in, ...]: axis 0")


def test_explicit_axis_wins_over_a_hint() -> None:
    d = decide_tensor(INFO, "keras", QuantizeOptions(axis=0, min_elements=1), HINT)
    assert (d.spec.axis, d.axis_rule) == (0, "axis 0 set by --axis")


def test_plan_axis_wins_and_is_named() -> None:
    plan = parse_plan('[[rule]]\nmatch = "layers/*"\naxis = 1\n', "plan.toml")
    d = decide_tensor(INFO, "keras", QuantizeOptions(plan=plan, min_elements=1), HINT)
    assert d.spec.axis == 1
    assert d.axis_rule.startswith("axis 1 set by ") and "layers/*" in d.axis_rule


def test_budget_candidates_use_the_hint() -> None:
    d = decide_tensor(INFO, "keras", QuantizeOptions(target_bpw=4.0, min_elements=1), HINT)
    assert d.candidates and {c.axis for c in d.candidates} == {2}
    assert d.axis_rule == HINT.rule


@pytest.mark.parametrize("dtype", ["int8"])
def test_no_axis_rule_for_passthrough(dtype: str) -> None:
    d = decide_tensor(
        TensorInfo("w", (4, 5), dtype), "keras", QuantizeOptions(min_elements=1), HINT
    )
    assert d.axis_rule is None


def test_report_names_the_rule(tmp_path) -> None:
    from qcompress.api import quantize_file

    src = tmp_path / "m.npz"
    np.savez(src, w=np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), b=np.ones(8, "f4"))
    report = quantize_file(src, QuantizeOptions(min_elements=1)).report
    by_name = {t["name"]: t for t in report["tensors"]}
    assert by_name["w"]["axis_rule"] == "PyTorch layout [out, in, ...]: axis 0"
    assert by_name["b"]["axis_rule"] is None
