"""Quality benchmark: effective bits per weight vs SQNR, qcompress against llama.cpp's GGUF types.

Why: "smaller at the same error" is the product's claim, and the only honest way to make it is
per stored bit, against the quantizer most people would otherwise use, on fixed data:

- ``sample``: the quantizable weights of sample_models/digits_mlp.safetensors (those the default
  policy quantizes), taken together;
- ``gauss``: a 4096 x 4096 standard normal matrix (seed 0);
- ``t3``: a 4096 x 4096 Student-t matrix with 3 degrees of freedom (seed 1): heavy tails.

Bits per weight are 8 x bytes stored / weights. For qcompress they are the bytes of the stored
tensors the artifact recipe lays out for the tensor (codes + scales + zero-points + second-level
codes and super-scales), from ``qcompress.artifact.layout.build_recipe``; one setting is also run
through ``api.quantize_file`` on a generated file to check that both agree. For GGUF they are
the bytes of ``gguf.quants.quantize``'s output. Every quantized (non-float) type the installed
``gguf`` can quantize in numpy is measured; types raising NotImplementedError are skipped.
SQNR = 10 log10(sum x^2 / sum (x - x̂)^2) over the whole weight set. Nothing is subsampled.

Run: ``make bench`` (or ``python benchmarks/quality.py``); needs the ``bench`` extra (gguf).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np

from qcompress import api
from qcompress.artifact.layout import build_recipe
from qcompress.artifact.recipe import CHECKSUM_TENSOR, QUANTIZED, STATS_TENSOR
from qcompress.config import QuantizeOptions
from qcompress.engine import QuantSpec, dequantize, quantize
from qcompress.formats import open_weights
from qcompress.formats.base import TensorInfo
from qcompress.quantize.policy import TensorDecision, decide_tensor

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_models" / "digits_mlp.safetensors"
SIZE = 4096
TARGET_DB = 1.0


@dataclasses.dataclass(frozen=True)
class Setting:
    """One qcompress row: a label and the spec it quantizes every tensor with."""

    label: str
    spec: QuantSpec


def _s(bits: int, scheme: str, gran: str, g: int, rng: str, sd: str, sb: int | None) -> QuantSpec:
    return QuantSpec(bits, scheme, gran, 0, g, rng, sd, sb)


def default_spec(bits: int) -> QuantSpec:
    """The spec ``qcompress quantize --bits N`` picks for a [out, in] safetensors weight."""
    info = TensorInfo("w", (SIZE, SIZE), "float32")
    plan = decide_tensor(info, "pytorch", QuantizeOptions(bits=bits))
    assert plan.spec is not None
    return plan.spec


def settings() -> list[Setting]:
    """The rows shown: the defaults, the floor, and the settings that answer each GGUF type."""
    rows = [Setting(f"default --bits {b}", default_spec(b)) for b in (8, 7, 6, 5, 4, 3, 2)]
    rows += [
        Setting(
            f"floor {b}b tensor affine minmax",
            _s(b, "affine", "tensor", 0, "minmax", "float32", None),
        )
        for b in (8, 4, 2)
    ]
    rows += [
        Setting(
            "8b g32 sym minmax f16 (=Q8_0 grid)",
            _s(8, "symmetric", "group", 32, "minmax", "float16", None),
        ),
        Setting("8b g32 affine minmax sb7", _s(8, "affine", "group", 32, "minmax", "float32", 7)),
        Setting("8b g24 affine minmax sb5", _s(8, "affine", "group", 24, "minmax", "float32", 5)),
        Setting("5b g16 affine mse sb6", _s(5, "affine", "group", 16, "mse", "float32", 6)),
        Setting(
            "4b g32 affine mse f16 (no level 2)",
            _s(4, "affine", "group", 32, "mse", "float16", None),
        ),
        Setting("4b g16 affine mse sb6", _s(4, "affine", "group", 16, "mse", "float32", 6)),
        Setting("4b g64 affine mse sb6", _s(4, "affine", "group", 64, "mse", "float32", 6)),
        Setting("4b g48 affine mse sb5", _s(4, "affine", "group", 48, "mse", "float32", 5)),
        Setting("4b g64 symmetric mse sb6", _s(4, "symmetric", "group", 64, "mse", "float32", 6)),
        Setting("2b g256 affine mse sb6", _s(2, "affine", "group", 256, "mse", "float32", 6)),
        Setting("2b tensor affine mse", _s(2, "affine", "tensor", 0, "mse", "float32", None)),
        # 2-bit symmetric codes have 3 levels, stored base 3 (5 per byte): 1.6 bits per code
        Setting("2b sym g128 mse sb6 base3", _s(2, "symmetric", "group", 128, "mse", "float32", 6)),
    ]
    return rows


def stored_bytes(shape: tuple[int, ...], spec: QuantSpec) -> int:
    """Bytes the artifact stores for one tensor quantized with ``spec`` (its recipe's layout)."""
    info = TensorInfo("w", shape, "float32")
    _, stored = build_recipe([TensorDecision(info, QUANTIZED, "bench", spec)], {})
    return sum(i.nbytes for i in stored if i.name not in (STATS_TENSOR, CHECKSUM_TENSOR))


def weight_sets() -> dict[str, list[np.ndarray]]:
    """name -> float32 tensors ([out, in] layout), fixed seeds."""
    with open_weights(SAMPLE) as reader:
        opts = QuantizeOptions(bits=4)
        names = [
            i.name
            for i in reader.tensor_infos()
            if decide_tensor(i, reader.layout, opts).action == QUANTIZED
        ]
        sample = [np.asarray(reader.read(n), np.float32) for n in names]
    gauss = np.random.default_rng(0).standard_normal((SIZE, SIZE), dtype=np.float32)
    t3 = np.random.default_rng(1).standard_t(3, (SIZE, SIZE)).astype(np.float32)
    return {"sample": sample, "gauss": [gauss], "t3": [t3]}


@dataclasses.dataclass
class Result:
    label: str
    kind: str  # "qcompress" or "gguf"
    bpw: float
    sqnr: float
    seconds: float


def measure(tensors: list[np.ndarray], fn: Callable[[np.ndarray], tuple[np.ndarray, int]]) -> tuple:
    """(bits per weight, SQNR dB, seconds) of ``fn`` (x -> (x̂, stored bytes)) over tensors."""
    t0 = time.perf_counter()
    nbytes = n = 0
    signal = noise = 0.0
    for x in tensors:
        xhat, b = fn(x)
        d = xhat.astype(np.float64) - x
        noise += float(np.einsum("ij,ij->", d, d))
        signal += float(np.einsum("ij,ij->", x.astype(np.float64), x.astype(np.float64)))
        nbytes += b
        n += x.size
    sqnr = 10 * math.log10(signal / noise) if noise else math.inf
    return 8 * nbytes / n, sqnr, time.perf_counter() - t0


def qcompress_fn(spec: QuantSpec) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    def fn(x: np.ndarray) -> tuple[np.ndarray, int]:
        return dequantize(quantize(x, spec)), stored_bytes(x.shape, spec)

    return fn


def gguf_types() -> list[tuple[str, object, int]]:
    """(name, type, block size) of every quantized type gguf can quantize in numpy here."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quantize as gq

    out = []
    for t in GGMLQuantizationType:
        block, _ = GGML_QUANT_SIZES[t]
        if block == 1:  # F32/F16/BF16/integers: storage types, not quantizers
            continue
        try:
            gq(np.zeros((1, block), np.float32), t)
        except NotImplementedError:
            continue
        out.append((t.name, t, block))
    return out


def gguf_fn(t: object, block: int) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    from gguf.quants import dequantize as gdq
    from gguf.quants import quantize as gq

    def fn(x: np.ndarray) -> tuple[np.ndarray, int]:
        # Blocks run along the input dimension. A row shorter than the block (the sample
        # model's 64- and 128-wide rows against 256-blocks) is quantized as one flat row.
        view = x if x.shape[-1] % block == 0 else x.reshape(1, -1)
        q = gq(view, t)
        return gdq(q, t).reshape(x.shape), q.nbytes

    return fn


def cross_check(spec: QuantSpec) -> str:
    """Quantize a generated safetensors file through api.quantize_file; compare bytes and SQNR."""
    from safetensors.numpy import save_file

    x = np.random.default_rng(2).standard_normal((512, SIZE), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "w.safetensors"
        save_file({"w": x}, str(src))
        opts = QuantizeOptions(
            bits=spec.bits,
            scheme=spec.scheme,
            granularity=spec.granularity,
            group_size=spec.group_size,
            range_method=spec.range_method,
            scale_bits=spec.scale_bits or 0,
            min_elements=0,
        )
        report = api.quantize_file(src, opts, output=Path(tmp) / "w.qc.safetensors").report
    totals = report["totals"]
    bpw, sqnr, _ = measure([x], qcompress_fn(spec))
    ok = (
        totals["quantized_stored_bytes"] == stored_bytes(x.shape, spec)
        and abs(totals["bits_per_weight"] - bpw) < 1e-12
        and abs(totals["overall_sqnr_db"] - sqnr) < 1e-6
    )
    return (
        f"cross-check ({spec.bits}b g{spec.group_size} {spec.scheme} {spec.range_method} "
        f"sb{spec.scale_bits}, 512x{SIZE} Gaussian): api.quantize_file report "
        f"{totals['bits_per_weight']:.4f} bpw, {totals['overall_sqnr_db']:.2f} dB; benchmark "
        f"sizing {bpw:.4f} bpw, {sqnr:.2f} dB: {'agree' if ok else 'DISAGREE'}"
    )


def machine() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _peers import cpu_model

    cpu = cpu_model()
    return (
        f"machine: {os.cpu_count()} CPUs, {cpu}; Python {platform.python_version()}, "
        f"numpy {np.__version__}, gguf {version('gguf')}"
    )


def main() -> int:
    started = time.perf_counter()
    print(machine())
    sets = weight_sets()
    types = gguf_types()
    rows = settings()
    results: dict[str, list[Result]] = {}
    for set_name, tensors in sets.items():
        out = []
        for s in rows:
            out.append(Result(s.label, "qcompress", *measure(tensors, qcompress_fn(s.spec))))
            print(f"  {set_name}: {s.label} {out[-1].seconds:.1f}s", file=sys.stderr, flush=True)
        for name, t, block in types:
            out.append(Result(f"gguf {name}", "gguf", *measure(tensors, gguf_fn(t, block))))
        results[set_name] = out
    print_table(rows, types, results)
    print()
    verdicts = print_verdicts(types, results)
    print()
    print(cross_check(default_spec(4)))
    print(f"elapsed {time.perf_counter() - started:.0f} s")
    return 0 if all(verdicts) else 1


def print_table(rows: list[Setting], types: list, results: dict[str, list[Result]]) -> None:
    names = list(results)
    labels = [r.label for r in results[names[0]]]
    width = max(len(x) for x in labels) + 2
    head = "".join(f"{n + ' bpw':>12}{n + ' dB':>11}" for n in names)
    print(f"{'setting':<{width}}{head}")
    print("-" * (width + 23 * len(names)))
    for i, label in enumerate(labels):
        cells = "".join(f"{results[n][i].bpw:>12.3f}{results[n][i].sqnr:>11.2f}" for n in names)
        print(f"{label:<{width}}{cells}")


def print_verdicts(types: list, results: dict[str, list[Result]]) -> list[bool]:
    """Per weight set and GGUF type: the best qcompress row at <= its bpw, margin, PASS/FAIL."""
    print(
        f"target: for each GGUF type, a qcompress setting at <= its bits per weight with "
        f">= {TARGET_DB:+.1f} dB SQNR"
    )
    verdicts = []
    for set_name, res in results.items():
        ours = [r for r in res if r.kind == "qcompress"]
        for g in (r for r in res if r.kind == "gguf"):
            fits = [r for r in ours if r.bpw <= g.bpw + 1e-12]
            if not fits:
                print(
                    f"{set_name:>7} {g.label:<11} {g.bpw:6.3f} bpw {g.sqnr:6.2f} dB: not "
                    f"comparable (no qcompress setting at <= {g.bpw:.3f} bpw)"
                )
                continue
            best = max(fits, key=lambda r: r.sqnr)
            margin = best.sqnr - g.sqnr
            ok = margin >= TARGET_DB
            verdicts.append(ok)
            print(
                f"{set_name:>7} {g.label:<11} {g.bpw:6.3f} bpw {g.sqnr:6.2f} dB | best "
                f"{best.label} {best.bpw:.3f} bpw {best.sqnr:.2f} dB | margin "
                f"{margin:+.2f} dB {'PASS' if ok else 'FAIL'}"
            )
    return verdicts


# --- Mixed precision (issue 4) --------------------------------------------------------------
# Mixed vs uniform bits at the same effective bits per weight, on a synthetic transformer and the
# sample model; the code is in benchmarks/quality_mixed.py (runnable on its own).


def mixed_precision() -> int:
    """Run benchmarks/quality_mixed.py's section; 0 if its claims hold, else 1."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality_mixed import mixed_precision_section

    return 0 if mixed_precision_section() else 1


if __name__ == "__main__":
    sys.exit(max(main(), mixed_precision()))
