"""Killing ``qcompress quantize`` mid-write never leaves a file at the destination path.

SIGKILL cannot be caught, so the hidden temporary file the artifact is being written to
(``.NAME.XXXXXXXX.tmp`` beside the destination) stays behind; it is never renamed into place,
so the destination either does not exist or is complete. SIGTERM is caught: the temporary files
are removed and the exit status is 143.

The model is ~128 MB of float32 so the write takes long enough to be hit; the subprocess runs
the real console entry point.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qcompress import api
from qcompress.formats import TensorInfo, write_weights

QCOMPRESS = [sys.executable, "-c", "from qcompress.cli import main; main()"]
TEMP_GLOB = ".model.qc.*.tmp"


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 tensors of 4096 x 1024 float32 (128 MB) in safetensors."""
    path = tmp_path_factory.mktemp("big") / "model.safetensors"
    rng = np.random.default_rng(0)
    infos = [TensorInfo(f"layer{i}.weight", (4096, 1024), "float32") for i in range(8)]
    arrays = (rng.standard_normal((4096, 1024), dtype=np.float32) for _ in infos)
    write_weights(path, "safetensors", infos, arrays, {})
    return path


def start(model: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*QCOMPRESS, "quantize", str(model), "-o", str(out / "model.qc.safetensors"), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_temp(out: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> Path | None:
    """The temporary artifact once it holds data, or None if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in out.glob(TEMP_GLOB) if p.stat().st_size > 0]
        if temps:
            return temps[0]
        time.sleep(0.002)
    return None


def test_sigkill_at_random_points_never_leaves_a_destination_file(
    big_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    full = start(big_model, out)
    assert full.wait(timeout=120) == 0, full.stderr.read() if full.stderr else ""
    duration = time.monotonic() - started
    assert (out / "model.qc.safetensors").is_file()
    assert not list(out.glob(".*"))  # a completed run leaves no temporary file
    for p in out.iterdir():
        p.unlink()

    rng = random.Random(42)
    killed_mid_write = 0
    for trial in range(8):
        proc = start(big_model, out)
        if trial % 2:  # anywhere in the run, start-up included
            time.sleep(rng.uniform(0, duration))
        else:  # while the artifact is being written
            if wait_for_temp(out, proc) is not None:
                time.sleep(rng.uniform(0, duration / 3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        names = sorted(p.name for p in out.iterdir())
        if proc.returncode == -signal.SIGKILL:  # it was still running: the kill landed
            temps = [n for n in names if n.startswith(".model.qc.") and n.endswith(".tmp")]
            finals = [n for n in names if n not in temps]
            # What SIGKILL leaves: hidden, clearly named temporaries beside the destination, and
            # at most an output renamed into place just before the kill, which is then complete.
            assert set(finals) <= {"model.qc.safetensors", "model.qc.json"}, names
            if "model.qc.safetensors" in finals:
                assert api.verify(out / "model.qc.safetensors").passed, (trial, names)
            killed_mid_write += bool(temps) and not finals
        for p in out.iterdir():
            p.unlink()
    assert killed_mid_write >= 2  # the kills really landed during the write


def test_sigterm_removes_the_temporary_files(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = start(big_model, out)
    temp = wait_for_temp(out, proc)
    assert temp is not None, "quantize finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert not list(out.iterdir())
