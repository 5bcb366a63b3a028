"""onnxruntime runs what ``dequantize -o model.onnx`` rebuilt (inline and external data), and
its output is what the dequantized weights give: the rebuilt model computes with exactly the
artifact's values, and those differ from the original by the quantization error only.
Marked ``frameworks`` (``pip install '.[frameworks]'``; ``make test-extra``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_factory import cnn_model, input_array, save
from samples import run

from qcompress.artifact.reader import Artifact

pytestmark = pytest.mark.frameworks


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _with_tensors(model: onnx.ModelProto, tensors: dict[str, np.ndarray], path: Path) -> Path:
    """``model`` with ``tensors`` put in by onnx's own helpers: the independent reference."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for init in ref.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(tensors[init.name], init.name))
    for node in ref.graph.node:
        if node.op_type == "Constant":
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(tensors[node.output[0]]))
    onnx.save_model(ref, str(path))
    return path


@pytest.mark.parametrize(
    ("external", "bits", "dtype"),
    [
        (None, 8, "float32"),
        ("weights.bin", 8, "float32"),
        ("m.onnx.data", 4, "float32"),
        (None, 8, "float16"),
    ],
)
def test_onnxruntime_runs_the_rebuilt_model(
    tmp_path: Path, external: str | None, bits: int, dtype: str
) -> None:
    model = cnn_model(dtype=dtype)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    path = save(model, src_dir / "m.onnx", external=external)
    art = tmp_path / "m.qc.safetensors"
    result = run("quantize", path, "-o", art, "--bits", bits, "--min-elements", 1, "--quiet")
    assert result.exit_code == 0, result.output
    out = tmp_path / "r.onnx"
    result = run("dequantize", art, "-o", out)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.onnx.data").exists() == (external is not None)

    x = input_array(dtype=dtype)
    original = _outputs(path, x).astype(np.float64)
    rebuilt = _outputs(out, x).astype(np.float64)
    with Artifact(art) as artifact:
        values = {e.name: artifact.tensor(e).astype(e.dtype) for e in artifact.entries}
    reference = _outputs(_with_tensors(model, values, tmp_path / "ref.onnx"), x)
    # the rebuilt model computes with exactly the artifact's values ...
    assert np.array_equal(rebuilt, reference.astype(np.float64))
    # ... which moved the output by the quantization error only: well above zero, well below
    # the output's own size (8-bit: about 1%, 4-bit: about 10% on this random network)
    rel = np.linalg.norm(rebuilt - original) / np.linalg.norm(original)
    assert 0 < rel < {8: 0.03, 4: 0.3}[bits]
    report = json.loads((tmp_path / "m.qc.json").read_text())
    axes = {t["name"]: t["axis"] for t in report["tensors"] if t["action"] == "quantized"}
    assert axes["conv.weight"] == 0 and axes["deconv.weight"] == 1
    assert axes["fc1.weight"] == 0 and axes["fc2.weight"] == 1 and axes["mm.weight"] == 1


def test_a_model_torch_exported(tmp_path: Path) -> None:
    """PyTorch's own exporter (BatchNorm folded into the Conv, whose weight it names
    ``onnx::Conv_N``; Linear as Gemm with transB=1): quantized, rebuilt, run."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.bn = torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8 * 6 * 6, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "net.onnx"
    x = input_array()
    with warnings.catch_warnings():  # the TorchScript exporter (no onnxscript needed) is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.from_numpy(x),), path, dynamo=False, input_names=["x"])
    art = tmp_path / "net.qc.safetensors"
    assert run("quantize", path, "-o", art, "--min-elements", 1, "--quiet").exit_code == 0
    report = json.loads((tmp_path / "net.qc.json").read_text())
    rules = {t["name"]: t["axis_rule"] for t in report["tensors"] if t["action"] == "quantized"}
    conv = next(n for n in rules if n.startswith("onnx::Conv_"))
    assert rules == {
        "fc.weight": "ONNX Gemm B [N, K] (transB=1): axis 0",
        conv: "ONNX Conv weight [out, in/group, k...]: axis 0",
    }
    out = tmp_path / "rebuilt.onnx"
    assert run("dequantize", art, "-o", out).exit_code == 0
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy().astype(np.float64)
    got = _outputs(out, x).astype(np.float64)
    rel = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert 0 < rel < 0.02
