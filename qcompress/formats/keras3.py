"""What a Keras HDF5 file says about its tensors: the layer each belongs to, and from that the
output-channel axis, the layers Keras itself already quantized, and the optimizer's state.

Keras 3 (``model.save_weights("x.weights.h5")`` and the ``model.weights.h5`` inside a ``.keras``
archive) stores ``layers/<class_snake>[_N]/vars/<i>``: the group is named after the layer's
*class* (``Dense`` -> ``dense``, the second one ``dense_1``), the layer's own name is the
``name`` attribute of its ``vars`` group, nested layers nest (``layers/lstm/cell/vars/0``,
``layers/multi_head_attention/query_dense/vars/0``), the optimizer keeps ``optimizer/vars/<i>``
and the model itself a root ``vars``. Keras 2 stores ``model_weights/<name>/<name>/kernel:0``
and the layer classes in the ``model_config`` attribute.

Tensor names stay the HDF5 paths, so a class-wide glob works without knowing the user's layer
names (``layers/dense*/vars/0``: every Dense kernel); the layer's own name is shown in each
tensor's ``axis_rule``. Nothing here reads tensor data: only the index (groups, attributes,
shapes, dtypes) and, for an archive, its ``config.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qcompress.formats.base import AxisHint, TensorInfo

# Kernel variables by index in Keras 3 (their order in ``layer.variables``), per class:
# (index, role) -> axis rule. Roles: "last" (output channels last), "transpose" (axis -2),
# "depthwise" (channels, axis -2), "rows" (axis 0), "equation" (EinsumDense).
_KERNELS: dict[str, dict[int, str]] = {
    "Dense": {0: "last"},
    "Conv1D": {0: "last"},
    "Conv2D": {0: "last"},
    "Conv3D": {0: "last"},
    "Conv1DTranspose": {0: "transpose"},
    "Conv2DTranspose": {0: "transpose"},
    "Conv3DTranspose": {0: "transpose"},
    "DepthwiseConv1D": {0: "depthwise"},
    "DepthwiseConv2D": {0: "depthwise"},
    "SeparableConv1D": {0: "depthwise", 1: "last"},
    "SeparableConv2D": {0: "depthwise", 1: "last"},
    "Embedding": {0: "rows"},
    "EinsumDense": {0: "equation"},
    "LSTMCell": {0: "last", 1: "last"},
    "GRUCell": {0: "last", 1: "last"},
    "SimpleRNNCell": {0: "last", 1: "last"},
}
_RNN_CELLS = {"LSTM": "LSTMCell", "GRU": "GRUCell", "SimpleRNN": "SimpleRNNCell"}
# MultiHeadAttention builds its four EinsumDense sublayers with these equations (rank-3 input).
_MHA_EQUATIONS = {
    "query_dense": "abc,cde->abde",
    "key_dense": "abc,cde->abde",
    "value_dense": "abc,cde->abde",
    "output_dense": "abcd,cde->abe",
}
_CONTAINERS = {"MultiHeadAttention", "LSTM", "GRU", "SimpleRNN", "Bidirectional"}
# Keras 2 variable leaf names -> role, when the layer class is unknown or says no more.
_KERAS2_LEAVES = {
    "kernel": "last",
    "recurrent_kernel": "last",
    "depthwise_kernel": "depthwise",
    "pointwise_kernel": "last",
    "embeddings": "rows",
}
_QUANTIZABLE = {"Dense", "EinsumDense", "Embedding"}  # what Model.quantize("int8"/"int4") touches


def snake_case(name: str) -> str:
    """Keras 3's own ``naming.to_snake_case``, which names each layer's group in the file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


_BY_SNAKE = {snake_case(c): c for c in (*_KERNELS, *_CONTAINERS)}


def equation_axis(equation: str, ndim: int) -> int | None:
    """The kernel axis an EinsumDense ``equation`` maps to the output (the last such letter:
    "ab,bc->ac" gives 1); None when the equation does not fit a kernel of ``ndim`` axes."""
    try:
        inputs, output = equation.replace(" ", "").split("->")
        _, kernel = inputs.split(",")
    except ValueError:
        return None
    if len(kernel) != ndim:
        return None
    outs = [i for i, c in enumerate(kernel) if c in output]
    return outs[-1] if outs else None


@dataclass(frozen=True)
class KerasFacts:
    """What the index of a Keras file says, per tensor name."""

    axis_hints: Mapping[str, AxisHint] = field(default_factory=dict)
    as_stored: Mapping[str, str] = field(default_factory=dict)  # name -> why it stays as stored
    optimizer: frozenset[str] = frozenset()
    layer_names: Mapping[str, str] = field(default_factory=dict)  # tensor -> the layer's name


def _attr_str(attrs: Mapping[str, Any], key: str) -> str | None:
    enc = attrs.get(key)
    if not enc or enc.get("kind") not in ("str", "bytes") or enc.get("shape") != []:
        return None
    return enc["value"] if isinstance(enc["value"], str) else None


def _rule_axis(role: str, ndim: int, equation: str | None) -> tuple[int, str] | None:
    if role == "last":
        return ndim - 1, "output channels last"
    if role == "transpose" and ndim >= 2:
        return ndim - 2, "[..., filters, in]"
    if role == "depthwise" and ndim >= 2:
        return ndim - 2, "depthwise: the input channels"
    if role == "rows":
        return 0, "one scale per row, as Keras int8 does"
    if role == "equation":
        axis = equation_axis(equation, ndim) if equation else None
        if axis is None:
            return ndim - 1, "no usable equation: output channels last"
        return axis, f"equation {equation}"
    return None


def _config_layers(config: Any, prefix: str, out: dict[str, dict[str, Any]]) -> None:
    """Group path -> layer config, named the way Keras 3 names them when saving."""
    layers = config.get("config", {}).get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        return
    seen: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
            continue
        snake = snake_case(layer["class_name"])
        n = seen.get(snake, 0)
        seen[snake] = n + 1
        path = f"{prefix}layers/{snake}" + (f"_{n}" if n else "")
        out[path] = layer
        _config_layers(layer, path + "/", out)


def keras3_facts(
    infos: Sequence[TensorInfo],
    groups: Sequence[Mapping[str, Any]],
    config: Any = None,
) -> KerasFacts:
    """Facts of a Keras 3 ``.weights.h5`` index (``config``: an archive's config.json)."""
    by_config: dict[str, dict[str, Any]] = {}
    _config_layers(config, "", by_config)
    names = {g["name"]: _attr_str(g.get("attrs", {}), "name") for g in groups}
    layer_of: dict[str, list[TensorInfo]] = {}
    for info in infos:
        parent, _, index = info.name.rpartition("/vars/")
        if index.isdigit():
            layer_of.setdefault(parent, []).append(info)
    hints: dict[str, AxisHint] = {}
    as_stored: dict[str, str] = {}
    optimizer = {i.name for i in infos if i.name.startswith("optimizer/")}
    layer_names: dict[str, str] = {}
    for group, members in layer_of.items():
        cls, equation = _keras3_class(group, by_config)
        shown = names.get(group + "/vars") or group.rsplit("/", 1)[-1]
        for info in members:
            layer_names[info.name] = shown
        if cls in _QUANTIZABLE and any(m.dtype in ("int8", "uint8") for m in members):
            why = (
                f"Keras {cls} layer {shown!r} already quantized by Keras (Model.quantize): "
                "kept as stored"
            )
            as_stored.update({m.name: why for m in members})
            continue
        for info in members:
            role = _KERNELS.get(cls or "", {}).get(int(info.name.rpartition("/")[2]))
            found = _rule_axis(role, len(info.shape), equation) if role else None
            if found and len(info.shape) >= 2:
                axis, how = found
                hints[info.name] = AxisHint(
                    axis, f"Keras 3 {cls} {shown!r} kernel: axis {axis} ({how})"
                )
    _optimizer_hints(infos, optimizer, hints)
    return KerasFacts(hints, as_stored, frozenset(optimizer), layer_names)


def _keras3_class(group: str, by_config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The class of the layer stored at ``group`` and, for EinsumDense, its equation."""
    layer = by_config.get(group)
    if layer is not None:
        cls = layer["class_name"]
        eq = layer.get("config", {}).get("equation")
        return cls, eq if isinstance(eq, str) else None
    parent, _, leaf = group.rpartition("/")
    parent_cls = by_config.get(parent, {}).get("class_name") or _BY_SNAKE.get(
        re.sub(r"_\d+$", "", parent.rpartition("/")[2])
    )
    if leaf == "cell" and parent_cls in _RNN_CELLS:
        return _RNN_CELLS[parent_cls], None
    if parent_cls == "MultiHeadAttention" and leaf in _MHA_EQUATIONS:
        return "EinsumDense", _MHA_EQUATIONS[leaf]
    if leaf == "cell" and parent.rpartition("/")[2] in ("forward_layer", "backward_layer"):
        rnn = _BY_SNAKE.get(re.sub(r"_\d+$", "", parent.rsplit("/", 2)[-2]))
        return _RNN_CELLS.get(rnn or ""), None
    return _BY_SNAKE.get(re.sub(r"_\d+$", "", leaf)), None


def _optimizer_hints(
    infos: Sequence[TensorInfo], optimizer: set[str], hints: dict[str, AxisHint]
) -> None:
    """An optimizer slot takes the axis of its parameter: matched by shape, and only when every
    parameter of that shape has the same axis (Adam's m and v of a depthwise kernel are the
    kernel's shape; left to the layout, they would get the last axis)."""
    by_shape: dict[tuple[int, ...], set[int]] = {}
    example: dict[tuple[int, ...], str] = {}
    for info in infos:
        if info.name in optimizer:
            continue
        hint = hints.get(info.name)
        axis = hint.axis if hint else None
        by_shape.setdefault(info.shape, set()).add(axis)  # type: ignore[arg-type]
        example.setdefault(info.shape, info.name)
    for info in infos:
        axes = by_shape.get(info.shape)
        if info.name not in optimizer or len(info.shape) < 2 or not axes or len(axes) != 1:
            continue
        (axis,) = axes
        if axis is not None:
            hints[info.name] = AxisHint(
                axis, f"optimizer slot like its parameter {example[info.shape]}: axis {axis}"
            )


def keras2_facts(
    infos: Sequence[TensorInfo],
    root_attrs: Mapping[str, Any],
) -> KerasFacts:
    """Facts of a Keras 2 ``.h5``: classes from ``model_config`` (full-model saves), else from the
    variable's leaf name (``embeddings``, ``depthwise_kernel``, ...)."""
    classes: dict[str, tuple[str, Any]] = {}
    raw = _attr_str(root_attrs, "model_config")
    try:
        config = json.loads(raw) if raw else None
    except ValueError:
        config = None
    _keras2_classes(config, classes)
    optimizer = {i.name for i in infos if i.name.startswith("optimizer_weights/")}
    hints: dict[str, AxisHint] = {}
    for info in infos:
        if info.name in optimizer or len(info.shape) < 2:
            continue
        parts = info.name.split("/")
        if parts[0] == "model_weights":
            parts = parts[1:]
        leaf = re.sub(r"(_\d+)?:\d+$", "", parts[-1])
        cls, equation = classes.get(parts[0], (None, None))
        role = _KERAS2_LEAVES.get(leaf)
        if cls is not None and cls.endswith("Transpose") and leaf == "kernel":
            role = "transpose"
        elif cls is not None and cls.startswith("DepthwiseConv") and leaf == "kernel":
            role = "depthwise"  # Keras 3's legacy .h5 names a depthwise kernel just "kernel"
        elif cls == "EinsumDense" and leaf == "kernel":
            role = "equation"
        if role is None:
            continue
        axis, how = _rule_axis(role, len(info.shape), equation) or (None, "")
        if axis is not None:
            what = f"Keras 2 {cls} {parts[0]!r}" if cls else f"Keras 2 {leaf!r}"
            hints[info.name] = AxisHint(axis, f"{what} {leaf}: axis {axis} ({how})")
    _optimizer_hints(infos, optimizer, hints)
    return KerasFacts(hints, {}, frozenset(optimizer), {})


def _keras2_classes(config: Any, out: dict[str, tuple[str, Any]]) -> None:
    layers = config.get("config", {}).get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        return
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        cfg = layer.get("config", {})
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            out[cfg["name"]] = (str(layer.get("class_name")), cfg.get("equation"))
        _keras2_classes(layer, out)


def is_keras3_layout(infos: Sequence[TensorInfo], groups: Sequence[Mapping[str, Any]]) -> bool:
    """Whether an HDF5 index is Keras 3's: a top-level ``layers`` or ``vars`` group and every
    dataset under ``.../vars/<i>``."""
    tops = {g["name"] for g in groups if "/" not in g["name"]}
    if not tops & {"layers", "vars"} or "model_weights" in tops:
        return False
    return all(re.search(r"(^|/)vars/\d+$", i.name) for i in infos)


def keras_facts(
    infos: Sequence[TensorInfo],
    groups: Sequence[Mapping[str, Any]],
    root_attrs: Mapping[str, Any],
    config: Any = None,
) -> KerasFacts:
    """The facts of any Keras HDF5 index: Keras 3's layout, else Keras 2's."""
    if is_keras3_layout(infos, groups):
        return keras3_facts(infos, groups, config)
    return keras2_facts(infos, root_attrs)
