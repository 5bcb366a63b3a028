"""PLAN.toml: parsing, precedence (options < [default] < rule), warnings, and errors by line.

Why: a plan is hand-written; a typo must point at its line, and a rule that silently matches
nothing must be visible, or users ship a model quantized differently from what they wrote.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qcompress.artifact.recipe import KEPT, PASSTHROUGH, QUANTIZED
from qcompress.config import QuantizeOptions
from qcompress.errors import UsageError
from qcompress.formats.base import TensorInfo
from qcompress.quantize.plan_file import load_plan, parse_plan
from qcompress.quantize.policy import decide_tensor

TRANSFORMER_PLAN = """\
# a transformer: embeddings and the head at 8 bits, norms in float
[default]
bits = 4
group_size = 128

[[rule]]
match = ["*embed_tokens*", "lm_head.weight"]
bits = 8

[[rule]]
match = "*.self_attn.*_proj.weight"
granularity = "channel"

[[rule]]
match = "*norm*"
keep = true

[[rule]]
match = "*.mlp.down_proj.weight"
keep = false
"""


def info(name: str, shape: tuple[int, ...] = (256, 256), dtype: str = "float32") -> TensorInfo:
    return TensorInfo(name, shape, dtype)


def decide(name: str, options: QuantizeOptions, shape: tuple[int, ...] = (256, 256)):
    return decide_tensor(info(name, shape), "pytorch", options)


def test_parse_default_and_rules_in_order() -> None:
    plan = parse_plan(TRANSFORMER_PLAN, "p.toml")
    assert dict(plan.default) == {"bits": 4, "group_size": 128}
    assert [r.index for r in plan.rules] == [1, 2, 3, 4]
    assert [r.line for r in plan.rules] == [6, 10, 14, 18]
    assert plan.rules[0].globs == ("*embed_tokens*", "lm_head.weight")
    assert plan.rules[2].keep is True and plan.rules[3].keep is False


def test_precedence_options_then_default_then_rule() -> None:
    options = QuantizeOptions(
        bits=6, scheme="affine", group_size=64, plan=parse_plan(TRANSFORMER_PLAN, "p.toml")
    )
    other = decide("model.layers.0.mlp.up_proj.weight", options)
    assert other.action == QUANTIZED and other.decided_by == "plan default"
    assert other.spec is not None
    # [default] beats the options for bits and group size; the options' scheme still holds.
    assert (other.spec.bits, other.spec.group_size, other.spec.scheme) == (4, 128, "affine")
    assert other.spec.granularity == "group" and other.spec.range_method == "mse"
    embed = decide("model.embed_tokens.weight", options)
    assert embed.spec is not None and embed.spec.bits == 8
    assert embed.spec.granularity == "channel"  # the 8-bit default, filled in by defaults()
    assert "plan rule 1" in embed.decided_by and "plan rule 1" in embed.reason
    attn = decide("model.layers.3.self_attn.q_proj.weight", options)
    assert attn.spec is not None and (attn.spec.bits, attn.spec.granularity) == (4, "channel")


def test_first_matching_rule_wins() -> None:
    plan = parse_plan('[[rule]]\nmatch = "a.*"\nbits = 3\n[[rule]]\nmatch = "a.b"\nbits = 5\n')
    decision = decide("a.b", QuantizeOptions(plan=plan))
    assert decision.spec is not None and decision.spec.bits == 3
    assert "plan rule 1" in decision.decided_by


def test_keep_true_and_false_override_the_default_rules() -> None:
    options = QuantizeOptions(
        keep=("*down_proj*",), min_elements=10**9, plan=parse_plan(TRANSFORMER_PLAN)
    )
    norm = decide("model.layers.0.input_layernorm.weight", options)
    assert norm.action == KEPT and "keep = true" in norm.reason
    # keep = false quantizes what --keep and --min-elements would have kept.
    down = decide("model.layers.0.mlp.down_proj.weight", options)
    assert down.action == QUANTIZED
    # Without a rule, --keep and --min-elements still apply.
    assert decide("model.layers.0.mlp.up_proj.weight", options).action == KEPT


def test_non_float_tensors_pass_through_whatever_the_plan_says() -> None:
    plan = parse_plan('[[rule]]\nmatch = "*"\nbits = 4\n')
    decision = decide_tensor(info("ids", (64, 64), "int64"), "pytorch", QuantizeOptions(plan=plan))
    assert decision.action == PASSTHROUGH


def test_budget_gives_candidates_unless_a_rule_pins_bits() -> None:
    plan = parse_plan(TRANSFORMER_PLAN.replace("bits = 4\n", "", 1))
    options = QuantizeOptions(target_bpw=3.0, plan=plan)
    free = decide("model.layers.0.mlp.up_proj.weight", options)
    assert free.decided_by == "--target-bpw 3"
    assert {s.bits for s in free.candidates} == {2, 3, 4, 5, 6, 7, 8}
    assert all(s.group_size == 128 for s in free.candidates if s.granularity == "group")
    pinned = decide("lm_head.weight", options)
    assert pinned.candidates == () and pinned.spec is not None and pinned.spec.bits == 8


def test_budget_refuses_a_default_that_sets_bits() -> None:
    with pytest.raises(UsageError, match=r"p\.toml: \[default\] sets bits"):
        QuantizeOptions(min_sqnr=30.0, plan=parse_plan(TRANSFORMER_PLAN, "p.toml"))


def test_budgets_are_mutually_exclusive() -> None:
    with pytest.raises(UsageError, match="one budget"):
        QuantizeOptions(target_bpw=3.0, min_sqnr=20.0)


def test_rule_that_matches_nothing_is_a_warning() -> None:
    plan = parse_plan(
        '[[rule]]\nmatch = "*.weight"\nbits = 4\n\n[[rule]]\nmatch = "fc1.*"\nbits = 8\n'
        '\n[[rule]]\nmatch = "*conv*"\nkeep = true\n',
        "p.toml",
    )
    warnings = plan.warnings(["fc1.weight", "fc1.bias", "fc2.weight"])
    assert len(warnings) == 1  # rule 2 still decides fc1.bias
    assert warnings[0].startswith("p.toml: plan rule 3 (line 9, match '*conv*')")
    assert "matches no tensor" in warnings[0]
    shadowed = plan.warnings(["fc1.weight"])
    assert any("rule 2 (line 5" in w and "earlier rule takes (rule 1)" in w for w in shadowed)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[default]\nbits = 9\n", 2, "bits = 9: must be one of 2, 3"),
        ('[default]\nbits = 4\nscheme = "odd"\n', 3, "scheme"),
        ("[[rule]]\nbits = 4\n", 1, "has no 'match'"),
        ('[[rule]]\nmatch = "a"\n\n[[rule]]\nmatch = "b"\ngroup_size = 8\n', 6, "16 to 1024"),
        ('[[rule]]\nmatch = "a"\n[[rule]]\nmatch = "b"\nbitz = 4\n', 5, "unknown key 'bitz'"),
        ('[[rule]]\nmatch = "a"\nkeep = "yes"\n', 3, "'keep' must be true or false"),
        ('[[rule]]\nmatch = "a"\nkeep = true\nbits = 4\n', 1, "no effect"),
        ("[[rule]]\nmatch = []\n", 2, "'match' must be a glob"),
        ("bits = 4\n", 1, "unknown section or key 'bits'"),
        ("[default]\nbits = true\n", 2, "bits"),
        ("[default]\nmin_elements = -1\n", 2, "0 or more"),
        ("[default]\nscale_bits = 3\n", 2, "scale_bits = 3: must be one of 0, 4"),
        ('[[rule]]\nmatch = "a"\nmin_elements = 5\n', 3, "unknown key 'min_elements'"),
        ("[default\nbits = 4\n", 1, "invalid TOML"),
        ("[default]\nbits = 4\nbits = 5\n", 3, "invalid TOML"),
    ],
)
def test_invalid_plan_names_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_plan(text, "bad.toml")
    message = str(err.value)
    assert message.startswith("bad.toml: ")
    assert f"line {line}" in message
    assert fragment in message


def test_load_plan_from_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(TRANSFORMER_PLAN)
    assert len(load_plan(path).rules) == 4
    with pytest.raises(UsageError, match="plan file not found"):
        load_plan(tmp_path / "missing.toml")


def test_readme_plan_examples_parse() -> None:
    """The README's transformer and CNN plans are valid plans."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        assert parse_plan(block, "README.md").rules
