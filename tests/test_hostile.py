"""Every file of the committed hostile corpus (``tests/corpus/``, made by
``scripts/hostile_corpus.py``) through the CLI: each command ends in exit 2 with one
``Error: FILE: ...`` line (exit 1 from ``verify`` when a checksum fails), never a traceback, and
leaves no file behind. The few cases that are odd but valid may succeed; they are listed.

``scripts/hostile_check.py`` runs the same corpus in subprocesses with timeouts; here CliRunner
keeps it fast, which is safe because HDF5 inputs are parsed in a probe child first (see
``qcompress/formats/h5/probe.py``): a hang there costs the probe timeout, set low below.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from qcompress.cli import cli

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.name != "README.md")
MARKER = "qcompress-was-unpickled.marker"

# (case, command) pairs that may exit 0: the input is odd but valid, or the damage is in bytes
# the command does not read. Everything else must be refused.
MAY_SUCCEED = {
    ("npz-deflate-bomb-64mb.npz", "inspect"),  # an honest 64 MB of zeros: ratio 1000:1 is legal
    ("npz-deflate-bomb-64mb.npz", "quantize"),
    ("npz-bad-crc.npz", "inspect"),  # inspect lists headers; the CRC is checked on read
    ("npz-corrupt-deflate-stream.npz", "inspect"),
    ("h5-global-heap-flip-4.h5", "inspect"),  # the flip lands in padding of the heap
    ("h5-global-heap-flip-4.h5", "quantize"),
    ("h5-never-written-huge-dataset.h5", "inspect"),
    ("h5-nan-weights.h5", "inspect"),
    ("npz-nan-weights.npz", "inspect"),
    ("safetensors-nan-weights.safetensors", "inspect"),
    ("safetensors-name-clash-with-codes.safetensors", "inspect"),
    ("npz-name-clash-with-codes.npz", "inspect"),
    ("h5-name-clash-with-codes.h5", "inspect"),
    ("safetensors-reserved-name.safetensors", "inspect"),
    ("h5-vlen-string-dataset.h5", "inspect"),  # listed; quantize refuses the string tensor
    ("npz-empty-archive.npz", "inspect"),  # nothing to list; quantize says there is nothing
    ("npz-member-named-metadata.npz", "inspect"),  # listed; no artifact can hold that name
    # zipfile walks the directory by its byte size and ignores the entry counts.
    ("npz-directory-claims-65535-entries.npz", "inspect"),
    ("npz-directory-claims-65535-entries.npz", "quantize"),
    # The "qcompress" metadata key is damaged: a plain safetensors file to inspect.
    ("artifact-flipped-header-byte-00028.qc.safetensors", "inspect"),
    # The stats are report data, not model data: verify flags them (exit 1), a rebuild is exact.
    ("artifact-flipped-bit-stats.qc.safetensors", "dequantize"),
}
# inspect shows an artifact's recipe and stats without reading the payload or checking the
# recipe: it is not a verifier. Damage anywhere else may go unnoticed by it.
MAY_SUCCEED |= {
    (case, "inspect")
    for case in CASES
    if case.startswith(("artifact-flipped-bit-", "artifact-tampered-recipe-reason"))
    and "stats" not in case
}


def commands(case: str, inp: Path, out: Path) -> dict[str, list[str]]:
    runs = {
        "inspect": ["inspect", str(inp), "--json"],
        "quantize": ["quantize", str(inp), "-o", str(out / "q.qc.safetensors"), "-q"],
    }
    if case.startswith("artifact-"):
        runs["verify"] = ["verify", str(inp), "--json"]
        runs["dequantize"] = ["dequantize", str(inp), "-o", str(out / "dq.npz")]
    return runs


def run_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> dict[str, object]:
    """Run every command on a private copy of ``case``; check what must hold for all of them
    and return {command: result} for case-specific checks."""
    monkeypatch.setenv("QCOMPRESS_H5_PROBE_TIMEOUT", "2")
    work, inp_dir = tmp_path / "work", tmp_path / "in"
    work.mkdir()
    inp_dir.mkdir()
    inp = inp_dir / case
    shutil.copyfile(CORPUS / case, inp)
    monkeypatch.chdir(work)
    results = {}
    for command, args in commands(case, inp, tmp_path / "out").items():
        out = tmp_path / "out"
        out.mkdir()
        result = CliRunner().invoke(cli, args)
        where = f"{command} {case}: exit {result.exit_code}, stderr {result.stderr!r}"
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            where,
            result.exc_info,
        )
        assert "Traceback" not in result.stderr, where
        if result.exit_code == 0:
            assert (case, command) in MAY_SUCCEED, where
        else:
            assert result.exit_code == 2 or (result.exit_code == 1 and command == "verify"), where
            assert not list(out.iterdir()), where  # nothing written, no temp file left
        if result.exit_code == 2:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: "), where
            assert case in lines[0], where
        assert not list(work.iterdir()), where  # e.g. a pickle that ran would leave its marker
        assert sorted(p.name for p in inp_dir.iterdir()) == [case], where
        results[command] = result
        shutil.rmtree(out)
    return results


@pytest.mark.parametrize("case", CASES)
def test_hostile_case_is_refused_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    results = run_case(tmp_path, monkeypatch, case)
    if case.startswith("artifact-") and (case, "dequantize") not in MAY_SUCCEED:
        # A damaged or altered artifact is never rebuilt into a model.
        assert results["dequantize"].exit_code == 2, results["dequantize"].stderr
    if case.startswith("artifact-flipped-bit-"):
        # Payload damage is a failed checksum: verify exits 1 and names it.
        assert results["verify"].exit_code == 1, results["verify"].stderr
        assert "checksum" in results["verify"].stdout


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_is_small_and_up_to_date(tmp_path: Path) -> None:
    """The committed corpus holds every case the script makes (rerun the script if not)."""
    counts = load_script("hostile_corpus").generate(tmp_path / "corpus")
    fresh = sorted(p.name for p in (tmp_path / "corpus").iterdir() if p.name != "README.md")
    assert fresh == CASES, "tests/corpus is stale: run python scripts/hostile_corpus.py"
    assert set(counts) == {"any", "npz", "safetensors", "h5", "artifact"}
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) < 2_000_000
