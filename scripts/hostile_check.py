#!/usr/bin/env python3
"""Run qcompress on every file of the hostile corpus, each command in its own process.

    python scripts/hostile_check.py [CORPUS] [--timeout S] [--jobs N] [--verbose]

For each corpus file (default ``tests/corpus/``) it runs ``qcompress inspect``, ``quantize``
(into a fresh temporary folder) and, for artifacts, ``verify`` and ``dequantize``, from a fresh
working folder, with a timeout. A run passes when it exits 0, 1 or 2 (1 only for ``verify``) with
no traceback on stderr; when it fails, stderr must be a single ``Error: ...`` line naming the
file, and no file may be left behind: not in the output folder (temporary files included), not
in the working folder (which is where a pickle in the corpus would drop its marker), not beside
the input. It prints, per format, how many cases and runs were tried and how many ended in each
outcome, and exits 1 if any run produced a traceback, a hang, a crash or a leftover file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO / "tests" / "corpus"
QCOMPRESS = [sys.executable, "-c", "from qcompress.cli import main; main()"]
BAD = ("traceback", "hang", "crash", "leftover", "messy")


@dataclass(frozen=True)
class Outcome:
    case: str
    command: str
    result: str  # "ok", "refused" (exit 2), "gate" (exit 1) or one of BAD
    detail: str = ""


def commands(name: str, inp: Path, out: Path) -> dict[str, list[str]]:
    """The commands to run on one corpus file; artifacts also get verify and dequantize."""
    runs = {
        "inspect": ["inspect", str(inp), "--json"],
        "quantize": ["quantize", str(inp), "-o", str(out / "q.qc.safetensors"), "-q"],
    }
    if name.startswith("artifact-"):
        runs["verify"] = ["verify", str(inp), "--json"]
        runs["dequantize"] = ["dequantize", str(inp), "-o", str(out / "dq.npz")]
    return runs


def run_one(case: Path, command: str, args: list[str], root: Path, timeout: float) -> Outcome:
    """One command on a private copy of ``case``; classify how it ended."""
    work = root / "work"
    inp_dir, out = root / "in", root / "out"
    for d in (work, inp_dir, out):
        d.mkdir(parents=True)
    inp = inp_dir / case.name
    shutil.copyfile(case, inp)
    argv = [a.replace(str(case), str(inp)) for a in args]
    env = {**os.environ, "NO_COLOR": "1", "QCOMPRESS_H5_PROBE_TIMEOUT": str(timeout / 2)}
    try:
        proc = subprocess.run(
            [*QCOMPRESS, *argv],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Outcome(case.name, command, "hang", f"no exit within {timeout:g} s")
    err = proc.stderr.strip()
    if "Traceback" in proc.stderr:
        return Outcome(case.name, command, "traceback", err.splitlines()[-1] if err else "")
    if proc.returncode < 0 or proc.returncode not in (0, 1, 2):
        return Outcome(case.name, command, "crash", f"exit status {proc.returncode}")
    leftovers = sorted(p.name for p in [*work.iterdir(), *inp_dir.iterdir()] if p != inp)
    if proc.returncode != 0:
        leftovers += sorted(p.name for p in out.iterdir())
    elif any(p.name.endswith(".tmp") for p in out.iterdir()):
        leftovers += sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
    if leftovers:
        return Outcome(case.name, command, "leftover", ", ".join(leftovers))
    if proc.returncode == 0:
        return Outcome(case.name, command, "ok")
    if proc.returncode == 1 and command != "verify":
        return Outcome(case.name, command, "messy", f"exit 1 from {command}: {err}")
    lines = err.splitlines()
    if proc.returncode == 2 and (
        len(lines) != 1 or not lines[0].startswith("Error: ") or case.name not in lines[0]
    ):
        return Outcome(case.name, command, "messy", f"stderr not one 'Error: {case.name}' line")
    return Outcome(case.name, command, "gate" if proc.returncode == 1 else "refused", err)


def check(corpus: Path, timeout: float, jobs: int) -> list[Outcome]:
    cases = sorted(p for p in corpus.iterdir() if p.is_file() and p.name != "README.md")
    with tempfile.TemporaryDirectory(prefix="qcompress-hostile-") as tmp:
        tasks = []
        for i, case in enumerate(cases):
            for command, args in commands(case.name, case, Path("OUT")).items():
                root = Path(tmp) / f"{i:04d}-{command}"
                real = [a.replace("OUT", str(root / "out")) for a in args]
                tasks.append((case, command, real, root))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(lambda t: run_one(*t, timeout), tasks))


def summarise(outcomes: list[Outcome]) -> list[str]:
    """The per-format table the README quotes."""
    kinds = sorted({o.case.split("-", 1)[0] for o in outcomes})
    head = f"{'format':12} {'cases':>5} {'runs':>5} {'ok':>5} {'refused':>7} {'gate':>5}"
    lines = [head + "".join(f" {b:>9}" for b in BAD)]
    for kind in [*kinds, "total"]:
        mine = [o for o in outcomes if kind == "total" or o.case.split("-", 1)[0] == kind]
        counts = {r: sum(o.result == r for o in mine) for r in ("ok", "refused", "gate", *BAD)}
        n_cases = len({o.case for o in mine})
        row = f"{kind:12} {n_cases:5d} {len(mine):5d} {counts['ok']:5d} {counts['refused']:7d}"
        row += f" {counts['gate']:5d}" + "".join(f" {counts[b]:9d}" for b in BAD)
        lines.append(row)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--verbose", "-v", action="store_true", help="print every run")
    args = parser.parse_args()
    if not args.corpus.is_dir():
        print(
            f"{args.corpus}: no corpus here; run scripts/hostile_corpus.py first", file=sys.stderr
        )
        return 2
    outcomes = check(args.corpus, args.timeout, args.jobs)
    for o in outcomes:
        if args.verbose or o.result in BAD:
            print(f"{o.result:9} {o.command:10} {o.case}: {o.detail}")
    print("\n".join(summarise(outcomes)))
    bad = [o for o in outcomes if o.result in BAD]
    if bad:
        print(f"FAILED: {len(bad)} run(s) ended in a traceback, hang, crash or leftover file")
        return 1
    print("no traceback, hang, crash or leftover file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
