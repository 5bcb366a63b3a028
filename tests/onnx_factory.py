"""Small ONNX models built with ``onnx.helper`` for the ONNX tests: every op whose weight axis
qcompress reads, a Constant-node weight, and tensors used by several ops or by none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_SHAPE = (1, 3, 8, 8)

# tensor name -> (axis, rule) that the consuming op gives it
EXPECTED_AXES = {
    "conv.weight": (0, "ONNX Conv weight [out, in/group, k...]: axis 0"),
    "deconv.weight": (1, "ONNX ConvTranspose weight [in, out/group, k...]: axis 1"),
    "fc1.weight": (0, "ONNX Gemm B [N, K] (transB=1): axis 0"),
    "fc2.weight": (1, "ONNX Gemm B [K, N] (transB=0): axis 1"),
    "mm.weight": (1, "ONNX MatMul B [..., in, out]: last axis"),
    "const.weight": (1, "ONNX MatMul B [..., in, out]: last axis (used by 2 ops, which agree)"),
    "shared.weight": (0, "ONNX: used by 2 ops (Gemm input 1, MatMul input 1): default axis 0"),
    "unused.weight": (0, "ONNX: used by no op of the main graph: default axis 0"),
}


def cnn_model(seed: int = 0, dtype: str = "float32") -> onnx.ModelProto:
    """Conv -> ConvTranspose -> Gemm (transB=1) -> Gemm (transB=0) -> MatMul -> MatMul by a
    Constant-node weight (twice) -> Gemm and MatMul sharing one weight; input x [1, 3, 8, 8],
    output y [1, 10]. ``dtype`` is that of every float tensor and of x and y."""
    rng = np.random.default_rng(seed)
    np_dtype = {"float32": np.float32, "float16": np.float16}[dtype]
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np_dtype)

    inits = {
        "conv.weight": w(8, 3, 3, 3),
        "conv.bias": w(8),
        "deconv.weight": w(8, 4, 2, 2),
        "shape": np.array([1, -1], dtype=np.int64),
        "fc1.weight": w(16, 4 * 16 * 16, scale=0.05),
        "fc1.bias": w(16),
        "fc2.weight": w(16, 12),
        "mm.weight": w(12, 10),
        "shared.weight": w(10, 10),
        "unused.weight": w(4, 4),
    }
    const = numpy_helper.from_array(w(10, 10), "const_value")
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["c_relu"]),
        helper.make_node("ConvTranspose", ["c_relu", "deconv.weight"], ["d"], strides=[2, 2]),
        helper.make_node("Relu", ["d"], ["d_relu"]),
        helper.make_node("Reshape", ["d_relu", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["g1"], transB=1),
        helper.make_node("Gemm", ["g1", "fc2.weight"], ["g2"]),
        helper.make_node("MatMul", ["g2", "mm.weight"], ["m"]),
        helper.make_node("Constant", [], ["const.weight"], value=const),
        helper.make_node("MatMul", ["m", "const.weight"], ["k1"]),
        helper.make_node("MatMul", ["k1", "const.weight"], ["k2"]),
        helper.make_node("Gemm", ["k2", "shared.weight"], ["s1"], transB=1),
        helper.make_node("MatMul", ["s1", "shared.weight"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", elem, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("y", elem, [1, 10])],
        [numpy_helper.from_array(a, name) for name, a in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qcompress-tests"
    )
    model.ir_version = 8  # what onnxruntime of any recent release loads
    helper.set_model_props(model, {"origin": "tests/onnx_factory.py"})
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path, external: str | None = None) -> Path:
    """``model`` saved at ``path``; with ``external``, tensors of 1 KB and more go to that side
    file (onnx's own external-data layout), the smaller ones stay inline."""
    if external is None:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=external,
            size_threshold=1024,
        )
    return path


def input_array(seed: int = 1, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(INPUT_SHAPE).astype(dtype)
