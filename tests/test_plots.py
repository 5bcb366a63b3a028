"""inspect --histogram / --errors (the data and its text), the layer-kind classifier, and shell
completion scripts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from samples import SAMPLES, run

from qcompress.cli import cli
from qcompress.cli.plots import error_lines, histogram_lines
from qcompress.errors import UsageError
from qcompress.histogram import tensor_histogram
from qcompress.layer_kind import KINDS, layer_kind


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("plots")
    shutil.copy(SAMPLES / "digits_mlp.npz", tmp / "m.npz")
    out = {"weights": tmp / "m.npz"}
    for label, args in {
        "tensor3": ("--bits", "3", "--granularity", "tensor"),
        "budget": ("--target-bpw", "4"),
    }.items():
        out[label] = tmp / f"{label}.qc.safetensors"
        result = run("quantize", tmp / "m.npz", "-o", out[label], "-q", *args)
        assert result.exit_code == 0, result.output
    return out


def test_histogram_of_a_per_tensor_artifact_has_its_whole_grid(artifacts: Any) -> None:
    h = tensor_histogram(artifacts["tensor3"], "fc2.weight", bins=40)
    assert h.kind == "artifact" and h.bits == 3 and h.count == 128 * 128
    assert sum(h.counts) == h.count and len(h.edges) == 41
    assert h.levels is not None and len(h.levels) == 8  # affine 3-bit: 8 levels
    assert np.allclose(np.diff(h.levels), np.diff(h.levels)[0])  # one uniform grid
    assert h.clip_min == pytest.approx(h.levels[0]) and h.clip_max == pytest.approx(h.levels[-1])
    # every decoded value is one of the levels
    report = json.loads(artifacts["tensor3"].with_suffix(".json").read_text())
    entry = next(t for t in report["tensors"] if t["name"] == "fc2.weight")
    assert h.clip_min == pytest.approx(entry["clip_min"], rel=1e-5)
    assert h.clip_max == pytest.approx(entry["clip_max"], rel=1e-5)


def test_histogram_of_a_weight_file_marks_the_default_clipping_range(artifacts: Any) -> None:
    h = tensor_histogram(artifacts["weights"], "fc1.weight")
    x = np.load(artifacts["weights"])["fc1.weight"]
    assert h.kind == "weights" and h.levels is None and h.clipped == 0  # 8-bit minmax
    assert h.min == float(x.min()) and h.max == float(x.max())
    assert h.counts == np.histogram(x, bins=60, range=(h.edges[0], h.edges[-1]))[0].tolist()
    assert h.clip_min is not None and h.clip_min <= h.min and h.clip_max >= h.max
    bias = tensor_histogram(artifacts["weights"], "fc1.bias")
    assert bias.action == "kept" and bias.clip_min is None and sum(bias.counts) == bias.count


def test_histogram_unknown_tensor_is_a_usage_error(artifacts: Any) -> None:
    for path in (artifacts["weights"], artifacts["tensor3"]):
        with pytest.raises(UsageError, match="no tensor named 'nope'"):
            tensor_histogram(path, "nope")


def test_histogram_text_marks_clip_range_and_levels(artifacts: Any) -> None:
    h = tensor_histogram(artifacts["tensor3"], "fc2.weight", bins=40)
    lines = [text for text, _ in histogram_lines(h, fancy=False)]
    axis = next(line for line in lines if line.lstrip().startswith("+"))
    assert axis.count("[") == 1 and axis.count("]") == 1
    ticks = lines[lines.index(axis) + 1]
    assert ticks.count("|") == 8
    assert all(line.isascii() for line in lines)
    fancy = [text for text, _ in histogram_lines(h, fancy=True)]
    assert any("█" in line for line in fancy)


def test_cli_histogram_plain_when_not_a_terminal(artifacts: Any) -> None:
    result = run("inspect", artifacts["tensor3"], "--tensor", "fc2.weight", "--histogram")
    assert result.exit_code == 0, result.output
    assert result.stdout.isascii() and "\x1b[" not in result.stdout
    assert "8 quantization levels" in result.stdout
    as_json = run(
        "inspect", artifacts["tensor3"], "--tensor", "fc2.weight", "--histogram", "--json"
    )
    data = json.loads(as_json.stdout)
    assert data["name"] == "fc2.weight" and sum(data["counts"]) == data["count"]


def test_errors_are_worst_first(artifacts: Any) -> None:
    result = run("inspect", artifacts["budget"], "--errors", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    report = json.loads(artifacts["budget"].with_suffix(".json").read_text())
    quantized = [t for t in report["tensors"] if t["action"] == "quantized"]
    assert [r["name"] for r in rows] == [
        t["name"] for t in sorted(quantized, key=lambda t: t["sqnr_db"])
    ]
    text = run("inspect", artifacts["budget"], "--errors").stdout.splitlines()
    assert [line.split()[0] for line in text] == [r["name"] for r in rows]
    bars = [line.count("#") for line in text]
    assert bars == sorted(bars) and bars[0] < bars[-1]


def test_error_lines_show_exact_tensors_without_a_bar() -> None:
    rows = [
        {"name": "a", "bits": 4, "sqnr_db": 10.0},
        {"name": "b", "bits": 8, "sqnr_db": 40.0},
        {"name": "c", "bits": 8, "sqnr_db": None},
    ]
    lines = [t for t, _ in error_lines(rows, fancy=False, width=80)]
    assert lines[0].count("#") * 4 == pytest.approx(lines[1].count("#"), abs=4)
    assert lines[2].endswith("exact") and "#" not in lines[2]


def test_errors_of_a_weight_file_and_conflicting_flags_fail_cleanly(artifacts: Any) -> None:
    cases = [
        (("inspect", artifacts["weights"], "--errors"), "needs an artifact"),
        (("inspect", artifacts["tensor3"], "--histogram"), "--tensor"),
        (("inspect", artifacts["tensor3"], "--tensor", "nope", "--histogram"), "'nope'"),
        (("inspect", artifacts["tensor3"], "--errors", "--histogram"), "one of them"),
    ]
    for args, fragment in cases:
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.layers.0.self_attn.q_proj.weight", "attention.q"),
        ("model.layers.0.self_attn.k_proj.weight", "attention.k"),
        ("model.layers.0.self_attn.v_proj.weight", "attention.v"),
        ("model.layers.0.self_attn.o_proj.weight", "attention.o"),
        ("bert.encoder.layer.0.attention.self.query.weight", "attention.q"),
        ("bert.encoder.layer.0.attention.output.dense.weight", "attention.o"),
        ("bert.encoder.layer.0.output.dense.weight", "ffn"),
        ("transformer.h.0.attn.c_attn.weight", "attention"),
        ("transformer.h.0.mlp.c_fc.weight", "ffn"),
        ("model.layers.3.mlp.down_proj.weight", "ffn"),
        ("model.embed_tokens.weight", "embedding"),
        ("transformer.wte.weight", "embedding"),
        ("lm_head.weight", "head"),
        ("output.weight", "head"),
        ("classifier.1.weight", "head"),
        ("model.norm.weight", "norm"),
        ("batch_normalization/gamma:0", "norm"),
        ("model_weights/conv2d/conv2d/kernel:0", "conv"),
        ("depthwise_conv2d/depthwise_kernel:0", "depthwise"),
        ("fc1.weight", "ffn"),
        ("model_weights/dense_1/dense_1/kernel:0", "ffn"),
        ("classes", "other"),
        ("<script>", "other"),
    ],
)
def test_layer_kind(name: str, kind: str) -> None:
    assert layer_kind(name) == kind
    assert kind in KINDS


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _qcompress_completion qcompress"),
        ("zsh", "#compdef qcompress"),
        ("fish", "complete --no-files --command qcompress"),
    ],
)
def test_completion_script_for_each_shell(shell: str, marker: str) -> None:
    result = CliRunner().invoke(
        cli, [], prog_name="qcompress", env={"_QCOMPRESS_COMPLETE": f"{shell}_source"}
    )
    assert result.exit_code == 0, result.output
    assert marker in result.stdout and "_QCOMPRESS_COMPLETE" in result.stdout


def test_completion_completes_commands_and_options() -> None:
    env = {"_QCOMPRESS_COMPLETE": "bash_complete", "COMP_WORDS": "qcompress re", "COMP_CWORD": "1"}
    result = CliRunner().invoke(cli, [], prog_name="qcompress", env=env)
    assert "plain,report" in result.stdout.split()
    env = {
        "_QCOMPRESS_COMPLETE": "bash_complete",
        "COMP_WORDS": "qcompress inspect x --hi",
        "COMP_CWORD": "3",
    }
    result = CliRunner().invoke(cli, [], prog_name="qcompress", env=env)
    assert "plain,--histogram" in result.stdout.split()
