"""README's plan examples against the names real files of each kind have: every rule must take
a tensor. The default tests use names Keras, PyTorch's ONNX exporter and transformers wrote (kept
here as lists); the ``frameworks`` tests make those files with the frameworks themselves."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from qcompress.formats import open_weights
from qcompress.quantize.plan_file import Plan, parse_plan

README = Path(__file__).resolve().parent.parent / "README.md"
os.environ.setdefault("KERAS_BACKEND", "torch")


def readme_plans() -> dict[str, Plan]:
    """Each ```toml block of README whose first line is ``# qcompress quantize FILE --plan P``,
    by the input file's suffix (``cnn.keras`` -> ".keras")."""
    plans = {}
    for block in re.findall(r"```toml\n(.*?)```", README.read_text(), re.S):
        first = block.splitlines()[0]
        found = re.match(r"# qcompress quantize (\S+) --plan (\S+)", first)
        assert found, first
        plans["".join(Path(found[1]).suffixes)] = parse_plan(block, found[2])
    return plans


# Names as the frameworks write them (the frameworks tests below check they still do).
KERAS3 = [
    "layers/conv2d/vars/0",
    "layers/conv2d/vars/1",
    "layers/depthwise_conv2d/vars/0",
    "layers/dense/vars/0",
    "layers/dense_1/vars/0",
    "layers/batch_normalization/vars/2",
    "optimizer/vars/2",
]
KERAS2 = [
    "model_weights/conv2d/conv2d/kernel:0",
    "model_weights/conv2d_1/conv2d_1/kernel:0",
    "model_weights/depthwise_conv2d/depthwise_conv2d/depthwise_kernel:0",
    "model_weights/dense/dense/kernel:0",
    "model_weights/batch_normalization/batch_normalization/moving_mean:0",
    "optimizer_weights/Adam/dense/kernel/m:0",
]
ONNX = ["fc.weight", "fc.bias", "onnx::Conv_16", "onnx::Conv_17"]
TRANSFORMERS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.norm.weight",
    "lm_head.weight",
]
KINDS = {".keras": KERAS3, ".h5": KERAS2, ".onnx": ONNX, ".safetensors": TRANSFORMERS}


def unmatched_rules(plan: Plan, names: list[str]) -> list[str]:
    return [r.describe() for r in plan.rules if not any(r.matches(n) for n in names)]


def test_readme_has_a_plan_for_each_kind() -> None:
    assert set(readme_plans()) == set(KINDS)


@pytest.mark.parametrize("suffix", sorted(KINDS))
def test_every_readme_rule_matches_real_names(suffix: str) -> None:
    assert unmatched_rules(readme_plans()[suffix], KINDS[suffix]) == []


def test_keras3_rules_take_the_tensors_they_say() -> None:
    plan = readme_plans()[".keras"]
    assert plan.rule_for("layers/conv2d/vars/0").index == 1
    assert plan.rule_for("layers/conv2d_1/vars/0") is None  # only the first conv
    assert plan.rule_for("layers/conv2d/vars/1") is None  # its bias: 1-D, float anyway
    assert plan.rule_for("layers/dense_1/vars/0").index == 3


def test_readme_regex_examples_match_one_segment() -> None:
    from qcompress.config import name_matches

    assert name_matches("layers/dense/vars/0", "re:layers/[^/]+/vars/0")
    assert not name_matches("layers/lstm/cell/vars/0", "re:layers/[^/]+/vars/0")
    assert name_matches("model.layers.3.mlp.up_proj.weight", r"re:model\.layers\.[0-3]\..*")
    assert not name_matches("model.layers.13.mlp.up_proj.weight", r"re:model\.layers\.[0-3]\..*")
    assert name_matches("model_weights/conv2d/conv2d/kernel:0", "*conv2d*kernel*")


# --- the same names, from files the frameworks write ---------------------------------------


def names_of(path: Path) -> list[str]:
    with open_weights(path) as reader:
        return [i.name for i in reader.tensor_infos()]


def keras_cnn(keras):  # type: ignore[no-untyped-def]
    keras.backend.clear_session()
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3)(inp)
    x = keras.layers.Conv2D(8, 3)(x)
    x = keras.layers.DepthwiseConv2D(3)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16)(x)
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    model.compile("adam", "mse")
    return model


@pytest.mark.frameworks
def test_keras_files_have_the_names(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    import numpy as np

    model = keras_cnn(keras)
    model.fit(np.zeros((2, 12, 12, 3)), np.zeros((2, 10)), verbose=0)
    model.save(tmp_path / "cnn.keras")
    model.save(tmp_path / "cnn.h5")  # Keras 2's layout, without tf.keras' ":0"
    keras3 = names_of(tmp_path / "cnn.keras")
    assert set(KERAS3) <= set(keras3)
    assert unmatched_rules(readme_plans()[".keras"], keras3) == []
    keras2 = names_of(tmp_path / "cnn.h5")
    assert unmatched_rules(readme_plans()[".h5"], keras2) == []


@pytest.mark.frameworks
def test_onnx_export_has_the_names(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 8, 3)
            self.bn = torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.fc(self.bn(self.conv1(x)).mean((2, 3)))

    path = tmp_path / "cnn.onnx"
    torch.onnx.export(Net().eval(), (torch.rand(1, 3, 8, 8),), path, dynamo=False)
    names = [i.name for i in onnx.load(path).graph.initializer]
    assert unmatched_rules(readme_plans()[".onnx"], names) == []


@pytest.mark.frameworks
def test_transformers_checkpoint_has_the_names(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    names = names_of(tmp_path / "model.safetensors")
    assert set(TRANSFORMERS) <= set(names)
    assert unmatched_rules(readme_plans()[".safetensors"], names) == []
