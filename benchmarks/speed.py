"""Speed and memory of qcompress against this machine's own limits, measured in one run.

Run: ``python benchmarks/speed.py`` (``make bench`` runs it too). Prints one table; every ratio
is against a reference timed in the same run on the same bytes, so the numbers mean something on
a shared, noisy machine:

- engine throughput (MB/s of float32 input) for int8 per-channel, 4-bit per-group with the
  default range search, and dequantize, on one thread and on all cores (tensors in parallel, as
  ``--jobs`` does), against ``np.copyto`` of the same bytes, with the allocator set as the CLI
  sets it (``qcompress.malloc``; one more 4-bit run in fresh processes shows what that does);
- ``torch.quantize_per_channel`` and gguf's numpy Q8_0 / Q4_0 on the same matrices, when those
  packages are installed (``pip install -e .[bench]`` and ``pip install torch==2.13.0``);
- end-to-end ``qcompress quantize`` of a page-cached 1 GB safetensors file against ``cp`` of it
  (target: at most 4x) and against hashlib's SHA-256 of it (target: at most 1.5x);
- ``inspect`` and ``quantize`` of 100k tiny tensors (``benchmarks/many_tensors.py``; target:
  under 3 s each), which shows any per-tensor overhead;
- peak resident memory of quantizing a 4 GB model made of 64 MB tensors (``--big-gb`` to change);
- start-up time of ``qcompress --version`` and of ``qcompress inspect sample_models/digits_mlp.npz``
  (target: under 0.25 s; no ml_dtypes, h5py or numba for a float32 npz).

Options: ``--quick`` for smaller sizes (a smoke run), ``--skip-big`` to skip the 4 GB case,
``--skip-engine`` to time only the commands (start-up, end to end, many tensors).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from qcompress import engine
from qcompress.engine.spec import QuantSpec
from qcompress.malloc import keep_freed_memory
from qcompress.quantize.pipeline import default_jobs

ROOT = Path(__file__).resolve().parent.parent
# The console script beside this interpreter (the venv's), so the CLI timed is this checkout's.
QCOMPRESS = [str(Path(sys.executable).parent / "qcompress")]


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest of ``repeat`` runs: the least disturbed by other load on a shared machine."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matrices(count: int, rows: int, cols: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((rows, cols), dtype=np.float32) for _ in range(count)]


INT8 = QuantSpec(bits=8, scheme="symmetric", granularity="channel", axis=0)


def default_spec(bits: int, shape: tuple[int, ...]) -> QuantSpec:
    """The spec ``qcompress quantize --bits N`` picks for an [out, in] safetensors weight."""
    from qcompress.config import QuantizeOptions
    from qcompress.formats.base import TensorInfo
    from qcompress.quantize.policy import decide_tensor

    plan = decide_tensor(TensorInfo("w", shape, "float32"), "pytorch", QuantizeOptions(bits=bits))
    assert plan.spec is not None
    return plan.spec


def int8_channel(x: np.ndarray) -> object:
    """What ``quantize`` does per tensor at 8 bits: codes plus their error metrics (fused)."""
    return engine.quantize_with_error(x, INT8)


def q4_group(x: np.ndarray) -> object:
    """The 4-bit default (affine groups of 32, MSE range search, 6-bit second-level scales):
    codes, error metrics and the packed 4-bit stream, as the pipeline makes them."""
    q, stats = engine.quantize_with_error(x, default_spec(4, x.shape))
    engine.pack_codes(q.codes, 4)
    return stats


def jit_cost() -> tuple[float, float]:
    """Seconds for a fresh process to get the compiled kernels and run the 8-bit and 4-bit
    paths once on a 4 MB matrix: with numba's on-disk cache warm (every run after the first),
    and cold (an empty cache directory: the first run after an install or an upgrade)."""
    code = (
        "import time, numpy as np\n"
        "t = time.perf_counter()\n"
        "from qcompress import engine\n"
        "from qcompress.engine.spec import QuantSpec\n"
        "x = np.ones((1024, 1024), np.float32)\n"
        "engine.quantize_with_error(x, QuantSpec(8, granularity='channel'))\n"
        "engine.quantize_with_error(x, QuantSpec(4, 'affine', 'group', 0, 32, 'mse', "
        "'float32', 6))\n"
        "print(time.perf_counter() - t)\n"
    )

    def run(env: dict[str, str]) -> float:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        )
        return float(done.stdout.split()[-1])

    env = dict(os.environ)
    run(env)  # make sure the default cache is filled
    warm = min(run(env) for _ in range(3))
    with tempfile.TemporaryDirectory() as cache:
        cold = run({**env, "NUMBA_CACHE_DIR": cache})
    return warm, cold


def allocator_effect(count: int, rows: int, cols: int) -> tuple[float, float]:
    """4-bit MB/s on one thread in a fresh process, with glibc's default allocator settings and
    with ``qcompress.malloc.keep_freed_memory`` (which the CLI calls, and this run too)."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from speed import matrices, q4_group, throughput\n"
        "from qcompress.malloc import keep_freed_memory\n"
        "if sys.argv[1] == 'tuned':\n"
        "    keep_freed_memory()\n"
        f"data = matrices({count}, {rows}, {cols})\n"
        "q4_group(data[0])\n"
        "print(throughput(q4_group, data, 1))\n"
    )

    def run(mode: str) -> float:
        cmd = [sys.executable, "-c", code, mode]
        return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    return run("defaults"), run("tuned")


def throughput(fn: Callable[[np.ndarray], object], data: list[np.ndarray], jobs: int) -> float:
    """MB/s of float32 input through ``fn``, tensors spread over ``jobs`` threads."""
    nbytes = sum(x.nbytes for x in data)

    def run() -> None:
        if jobs == 1:
            for x in data:
                fn(x)
        else:
            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(fn, data))

    return nbytes / best_of(run, repeat=2) / 1e6


def copy_bandwidth(data: list[np.ndarray]) -> float:
    """MB/s of ``np.copyto`` of the same tensors into warm, preallocated buffers."""
    targets = [np.empty_like(x) for x in data]
    for t, x in zip(targets, data, strict=True):
        np.copyto(t, x)  # touch the targets once, so the timing is of a copy, not of page faults

    def run() -> None:
        for t, x in zip(targets, data, strict=True):
            np.copyto(t, x)

    return sum(x.nbytes for x in data) / best_of(run) / 1e6


def reference_rows(data: list[np.ndarray]) -> list[tuple[str, float]]:
    rows = []
    nbytes = sum(x.nbytes for x in data)
    try:
        import torch

        torch.set_num_threads(1)
        tensors = [torch.from_numpy(x) for x in data]

        def torch_q8() -> None:
            for t in tensors:
                amax = t.abs().amax(dim=1)
                scale = (amax / 127).clamp(min=1e-12).double()
                zp = torch.zeros(t.shape[0], dtype=torch.long)
                torch.quantize_per_channel(t, scale, zp, 0, torch.qint8)

        rows.append(
            ("torch.quantize_per_channel qint8 (1 thread)", nbytes / best_of(torch_q8) / 1e6)
        )
    except ImportError:
        rows.append(("torch.quantize_per_channel: torch not installed", float("nan")))
    try:
        from gguf import GGMLQuantizationType, quants

        for name in ("Q8_0", "Q4_0"):
            qtype = GGMLQuantizationType[name]

            def gguf_q(qtype: GGMLQuantizationType = qtype) -> None:
                for x in data:
                    quants.quantize(x, qtype)

            rows.append((f"gguf numpy {name} (1 thread)", nbytes / best_of(gguf_q, 1) / 1e6))
    except ImportError:
        rows.append(("gguf: not installed", float("nan")))
    return rows


def write_model(path: Path, n_tensors: int, rows: int, cols: int) -> None:
    """A float32 safetensors model written one tensor at a time (never all in memory)."""
    from qcompress.formats.base import TensorInfo
    from qcompress.formats.safetensors import write_safetensors

    infos = [TensorInfo(f"layers.{i}.weight", (rows, cols), "float32") for i in range(n_tensors)]
    rng = np.random.default_rng(3)
    arrays = (rng.standard_normal((rows, cols), dtype=np.float32) for _ in infos)
    write_safetensors(path, infos, arrays, {})


def timed(cmd: list[str]) -> float:
    return timed_cpu(cmd)[0]


def timed_cpu(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds of ``cmd`` and the CPU seconds (user + system) it used: on a machine shared
    with other work, CPU time shows the command's own cost when wall time mostly shows waiting."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), cmd)
    return wall, usage.ru_utime + usage.ru_stime


def best_timed(cmd: list[str], repeat: int) -> tuple[float, float]:
    """The fastest wall time of ``repeat`` runs and the least CPU time (each the least disturbed
    by other load)."""
    runs = [timed_cpu(cmd) for _ in range(repeat)]
    return min(w for w, _ in runs), min(c for _, c in runs)


def end_to_end(folder: Path, gb: float) -> tuple[float, float, float]:
    """Seconds for ``qcompress quantize``, for ``cp`` and for hashlib's SHA-256 (which the report
    records, a floor under the first) of the same page-cached file, best of 3,
    each writing a new file with no writeback of earlier writes pending (``sync`` before each
    run: on this machine a pending 1 GB writeback makes the next ``cp`` up to 3x slower)."""
    model = folder / "e2e.safetensors"
    n = max(1, round(gb * 1024 / 64))
    write_model(model, n, 4096, 4096)
    subprocess.run(["cat", str(model)], check=True, stdout=subprocess.DEVNULL)  # page cache

    def fresh(cmd: list[str], out: Path) -> float:
        out.unlink(missing_ok=True)
        os.sync()
        return timed(cmd)

    copy = folder / "copy.bin"
    out = folder / "e2e.qc.safetensors"
    cp_time = min(fresh(["cp", str(model), str(copy)], copy) for _ in range(3))
    qc = [*QCOMPRESS, "quantize", str(model), "-o", str(out), "-q", "--force"]
    return min(fresh(qc, out) for _ in range(3)), cp_time, best_of(lambda: sha256_of(model))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(64 << 20)
    with path.open("rb") as f:
        while n := f.readinto(buf):
            digest.update(memoryview(buf)[:n])
    return digest.hexdigest()


def peak_rss_mb(folder: Path, gb: float) -> float:
    """Peak RSS of ``qcompress quantize`` on a ``gb`` GB model of 64 MB tensors, measured in a
    fresh child process: its VmHWM, which execve resets. (Not ``ru_maxrss``: Linux carries it
    over from the forked parent, so this benchmark's own arrays, and torch once imported, would
    count.)"""
    model = folder / "big.safetensors"
    write_model(model, max(1, round(gb * 1024 / 64)), 4096, 4096)
    out = folder / "big.qc.safetensors"
    code = (
        "import resource, sys\n"
        "from qcompress.cli import main\n"
        f"sys.argv = ['qcompress', 'quantize', {str(model)!r}, '-o', {str(out)!r}, '-q']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "try:\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    print(int(status.split()[0]))\n"
        "except OSError:\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    for p in (model, out, out.with_suffix(".json")):
        p.unlink()
    return int(done.stdout.split()[-1]) / 1024  # both are in KiB on Linux


def main() -> None:
    # Commands are timed as an installed tool runs, with Python's bytecode cache: where the
    # environment sets PYTHONDONTWRITEBYTECODE (this one does), every start recompiles every
    # module, about 0.15 s of the start-up measured here.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--skip-big", action="store_true", help="skip the 4 GB memory case")
    parser.add_argument("--big-gb", type=float, default=4.0)
    parser.add_argument("--e2e-gb", type=float, default=1.0)
    parser.add_argument("--skip-engine", action="store_true", help="only the command timings")
    args = parser.parse_args()
    keep_freed_memory()  # as the CLI does; allocator_effect() measures what it changes
    if args.skip_engine:
        commands(args)
        return

    count, rows, cols = (2, 1024, 1024) if args.quick else (8, 4096, 1024)
    data = matrices(count, rows, cols)
    cores = default_jobs()
    copy = copy_bandwidth(data)
    print(f"machine: {platform.machine()}, {cores} cores, {_cpu_model()}, numpy {np.__version__}")
    total_mb = sum(x.nbytes for x in data) / 1e6
    print(f"data: {count} float32 matrices of {rows}x{cols} ({total_mb:.0f} MB), seed 0")
    print(f"np.copyto of the same bytes: {copy:,.0f} MB/s\n")
    print(f"{'operation':<48} {'MB/s':>9} {'x copyto':>9}")

    def row(label: str, mbs: float) -> None:
        ratio = "" if np.isnan(mbs) else f"{mbs / copy:9.3f}"
        value = "-" if np.isnan(mbs) else f"{mbs:9,.0f}"
        print(f"{label:<48} {value:>9} {ratio:>9}")

    codes = [engine.quantize(x, INT8) for x in data]  # also compiles the kernels (not timed)
    q4_group(data[0])
    for label, fn in (
        ("int8 per-channel quantize + error metrics", int8_channel),
        ("4-bit per-group, default range search", q4_group),
    ):
        row(f"{label} (1 thread)", throughput(fn, data, 1))
        row(f"{label} ({cores} threads)", throughput(fn, data, cores))
    by_id = {id(x): q for x, q in zip(data, codes, strict=True)}
    deq = lambda x: engine.dequantize(by_id[id(x)])  # noqa: E731
    row("dequantize int8 per-channel (1 thread)", throughput(deq, data, 1))
    row(f"dequantize int8 per-channel ({cores} threads)", throughput(deq, data, cores))
    for label, mbs in reference_rows(data):
        row(label, mbs)

    commands(args)
    plain, tuned = allocator_effect(count, rows, cols)
    print(
        f"4-bit per-group (1 thread) in a fresh process: {plain:,.0f} MB/s with glibc's default "
        f"allocator settings, {tuned:,.0f} MB/s keeping freed memory (qcompress.malloc)"
    )
    warm, cold = jit_cost()
    print(
        f"compiled kernels, first use in a fresh process (load + first 8-bit and 4-bit calls): "
        f"{warm:.2f} s with numba's cache warm, {cold:.2f} s cold (first run after install)"
    )


def verdict(value: float, target: float) -> str:
    return f"target <= {target:g}: {'met' if value <= target else 'NOT met'}"  # seconds or x


def commands(args: argparse.Namespace) -> None:
    """Start-up, end to end against cp and SHA-256, and many tiny tensors, with their targets."""
    startup = statistics.median(timed([*QCOMPRESS, "--version"]) for _ in range(5))
    print(f"\nqcompress --version start-up: {startup:.3f} s (median of 5)")
    sample = ROOT / "sample_models" / "digits_mlp.npz"
    inspect_cmd = [*QCOMPRESS, "inspect", str(sample)]
    start_inspect, inspect_cpu = best_timed(inspect_cmd, 5)
    python, python_cpu = best_timed([sys.executable, "-c", "import numpy"], 5)
    floor, floor_cpu = best_timed([sys.executable, "-c", "import numpy, click, rich.table"], 5)
    print(
        f"qcompress inspect {sample.name}: {start_inspect:.3f} s (best of 5; "
        f"{verdict(start_inspect, 0.25)}; CPU {inspect_cpu:.3f} s; python -c 'import numpy' "
        f"alone: {python:.3f} s, CPU {python_cpu:.3f} s; 'import numpy, click, rich.table' "
        f"(what the command's table needs): {floor:.3f} s, CPU {floor_cpu:.3f} s)"
    )
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        folder = Path(tmp)
        gb = 0.125 if args.quick else args.e2e_gb
        qc, cp, sha = end_to_end(folder, gb)
        print(f"\nend to end, {gb:g} GB page-cached float32 safetensors, int8 defaults:")
        print(f"  qcompress quantize {qc:.2f} s, cp {cp:.2f} s, SHA-256 of the input {sha:.2f} s")
        print(f"  x cp: {qc / cp:.2f} ({verdict(qc / cp, 4)})")
        print(f"  x SHA-256: {qc / sha:.2f} ({verdict(qc / sha, 1.5)})")
        for p in folder.iterdir():
            p.unlink()
        many(folder, 10_000 if args.quick else 100_000)
        for p in folder.iterdir():
            p.unlink()
        if not args.skip_big:
            big = 0.25 if args.quick else args.big_gb
            rss = peak_rss_mb(folder, big)
            print(f"peak RSS quantizing a {big:g} GB model of 64 MB tensors: {rss:,.0f} MB")


def many(folder: Path, n: int) -> None:
    """``inspect`` and ``quantize`` of ``n`` tiny tensors, npz and safetensors."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from many_tensors import write_many

    print(f"\n{n:,} tiny tensors (target: under 3 s per command; best of 2, CPU seconds too):")
    for path in write_many(folder, n):
        size = path.stat().st_size / 1e6
        out = folder / f"{path.stem}.qc.safetensors"
        t_inspect, c_inspect = best_timed([*QCOMPRESS, "inspect", str(path), "--json"], 2)
        quantize = [*QCOMPRESS, "quantize", str(path), "-o", str(out), "-q", "--force"]
        t_quantize, c_quantize = best_timed(quantize, 2)
        print(
            f"  {path.name} ({size:.0f} MB): inspect --json {t_inspect:.2f} s "
            f"(CPU {c_inspect:.2f} s; {verdict(t_inspect, 3)}), quantize {t_quantize:.2f} s "
            f"(CPU {c_quantize:.2f} s; {verdict(t_quantize, 3)})"
        )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
