"""Mixed precision against uniform bits, at the same effective bits per weight (issue 4).

Run: ``python benchmarks/quality_mixed.py`` (``benchmarks/quality.py`` runs it as its last
section). Exit status 1 if a claim fails. Two models:

- a synthetic transformer-shaped set (fixed seeds): 4 blocks of attention (q, k, v, o: 256x256)
  and MLP (up 1024x256, down 256x1024) matrices plus an embedding, some drawn from a heavy-tailed
  Student-t (df 3, like outlier-heavy projections), the rest Gaussian, at different scales.
  For every uniform setting (each width with its default grouping, and per-channel), quantize
  with ``--target-bpw`` set to that setting's own measured bits per weight and compare the total
  relative error (sum over tensors of squared error / squared norm, the quantity the allocator
  minimises). Claim: mixed is lower than the best uniform setting at the same or fewer bits
  (except at the very cheapest setting, where every tensor must take it and they tie).
- the sample digits MLP: test accuracy of ``--target-bpw 3`` against every uniform setting that
  fits in 3 bits per weight, and against plain ``--bits 3`` (which needs 3.5). Claim: mixed is
  more accurate than the best uniform setting within 3 bits per weight.

Numbers come from the reports and artifacts qcompress writes (bits per weight from the bytes
stored), so they are what a user gets.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from qcompress import api
from qcompress.engine.spec import BITS

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_models" / "digits_mlp.safetensors"


def transformer_like(seed: int = 7) -> dict[str, np.ndarray]:
    """A small transformer's weight matrices ([out, in]), half heavy-tailed, at mixed scales."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}

    def matrix(shape: tuple[int, int], heavy: bool, scale: float) -> np.ndarray:
        x = rng.standard_t(3, size=shape) if heavy else rng.normal(size=shape)
        return (scale * x / np.sqrt(shape[1])).astype(np.float32)

    tensors["embed_tokens.weight"] = matrix((2048, 256), heavy=False, scale=1.0)
    for i in range(4):
        p = f"layers.{i}."
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj", "o_proj")):
            tensors[p + f"self_attn.{proj}.weight"] = matrix((256, 256), (i + j) % 2 == 0, 1.0)
        tensors[p + "mlp.up_proj.weight"] = matrix((1024, 256), heavy=i % 2 == 1, scale=2.0)
        tensors[p + "mlp.down_proj.weight"] = matrix((256, 1024), heavy=True, scale=0.5)
        tensors[p + "input_layernorm.weight"] = np.ones(256, np.float32)
    tensors["lm_head.weight"] = matrix((2048, 256), heavy=True, scale=1.0)
    return tensors


def total_rel_error(report: dict[str, Any]) -> float:
    """Sum over quantized tensors of squared error / squared norm, from the report's SQNRs."""
    return sum(
        10 ** (-t["sqnr_db"] / 10) if t["sqnr_db"] is not None else 0.0
        for t in report["tensors"]
        if t["action"] == "quantized"
    )


def _quantize(path: Path, out: Path, options: api.QuantizeOptions) -> dict[str, Any]:
    return api.quantize_file(path, options, output=out, force=True).report


def uniform_settings() -> list[tuple[str, api.QuantizeOptions]]:
    """Each width with its default grouping, and per-channel below 8 bits."""
    out = [(f"{b}-bit default", api.QuantizeOptions(bits=b)) for b in BITS]
    out += [
        (f"{b}-bit channel", api.QuantizeOptions(bits=b, granularity="channel"))
        for b in BITS
        if b < 8
    ]
    return out


def synthetic_benchmark(work: Path) -> bool:
    """Mixed vs uniform total relative error at equal bits per weight; True if mixed wins."""
    path = work / "transformer.npz"
    np.savez(path, **transformer_like())
    uniform = []
    for label, options in uniform_settings():
        report = _quantize(path, work / "u.qc.safetensors", options)
        uniform.append((report["totals"]["float_bits_per_weight"], total_rel_error(report), label))
    uniform.sort()
    print("\nSynthetic transformer (Student-t and Gaussian matrices): total relative error")
    print(
        f"{'uniform setting':<18}{'bits/weight':>12}{'uniform':>10}{'mixed':>10}{'mixed bpw':>11}"
    )
    ok = True
    for bpw, err, label in uniform:
        report = _quantize(path, work / "m.qc.safetensors", api.QuantizeOptions(target_bpw=bpw))
        m_bpw, m_err = report["totals"]["float_bits_per_weight"], total_rel_error(report)
        # The best uniform setting that fits the same budget, whichever width it is. At the
        # cheapest budget every tensor must take its cheapest setting: mixed can only tie there.
        best = min(e for b, e, _ in uniform if b <= bpw)
        cheapest = bpw == uniform[0][0]
        ok &= m_bpw <= bpw and (m_err <= best if cheapest else m_err < best)
        print(f"{label:<18}{bpw:>12.3f}{err:>10.4f}{m_err:>10.4f}{m_bpw:>11.3f}")
    print(
        "claim: mixed < best uniform at <= the same bits per weight (a tie at the cheapest):",
        "PASS" if ok else "FAIL",
    )
    return ok


def _score() -> ModuleType:
    spec = importlib.util.spec_from_file_location("qc_bench_score", ROOT / "sample_models/score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _accuracy(score: ModuleType, artifact: Path) -> float:
    rebuilt = artifact.with_suffix(".dq.safetensors")
    api.dequantize_file(artifact, rebuilt, force=True)
    return float(score.accuracy(rebuilt))


def sample_benchmark(work: Path, target: float = 3.0) -> bool:
    """Digits MLP accuracy: mixed at ``target`` bpw vs uniform; True if mixed beats the best
    uniform setting that fits the same budget."""
    score = _score()
    print(f"\nDigits MLP ({SAMPLE.name}), float accuracy {score.accuracy(SAMPLE):.4f}")
    print(f"{'setting':<22}{'bits/weight':>12}{'rel. error':>12}{'accuracy':>10}")
    rows = []
    for label, options in [
        *uniform_settings(),
        (f"mixed --target-bpw {target:g}", api.QuantizeOptions(target_bpw=target)),
    ]:
        out = work / f"s{len(rows)}.qc.safetensors"
        report = _quantize(SAMPLE, out, options)
        bpw = report["totals"]["float_bits_per_weight"]
        rows.append((label, bpw, total_rel_error(report), _accuracy(score, out)))
    for label, bpw, err, acc in sorted(rows, key=lambda r: r[1]):
        print(f"{label:<22}{bpw:>12.3f}{err:>12.4f}{acc:>10.4f}")
    _, m_bpw, m_err, m_acc = rows[-1]
    fitting = [r for r in rows[:-1] if r[1] <= target]
    best_acc = max(r[3] for r in fitting)
    best_err = min(r[2] for r in fitting)
    ok = m_bpw <= target and m_acc > best_acc and m_err < best_err
    print(
        f"claim: mixed at {m_bpw:.3f} bits/weight is more accurate ({m_acc:.4f}) than every "
        f"uniform setting within {target:g} (best {best_acc:.4f}):",
        "PASS" if ok else "FAIL",
    )
    return ok


def mixed_precision_section() -> bool:
    """Both benchmarks; True if every claim holds."""
    with tempfile.TemporaryDirectory(prefix="qc-mixed-") as tmp:
        work = Path(tmp)
        return all([synthetic_benchmark(work), sample_benchmark(work)])


if __name__ == "__main__":
    sys.exit(0 if mixed_precision_section() else 1)
