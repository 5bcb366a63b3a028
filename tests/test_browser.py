"""The HTML report in a real browser: headless Chromium renders it without console errors and the
screenshot is not blank. Marked ``browser``: `make test` skips it, CI (``.ci/run``) runs it with
Debian's chromium installed. Two control pages prove the checks can fail."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest
from samples import SAMPLES, make_docs_module, run

CHROMIUM = Path("/usr/bin/chromium")  # = scripts/make_docs.py CHROMIUM, for the skip marker

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs /usr/bin/chromium (apt-get install chromium); .ci/run installs it",
    ),
]


def screenshot(page: Path, png: Path) -> str:
    """Render ``page`` headless into ``png``; Chromium's log (console messages included)."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            make_docs_module().screenshot_command(
                page, png, profile, "--enable-logging=stderr", "--v=0"
            ),
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": profile},
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def console_errors(log: str) -> list[str]:
    """Lines where the page's JavaScript failed or logged an error."""
    return [
        line
        for line in log.splitlines()
        if "CONSOLE" in line and ("Uncaught" in line or "Error" in line or ":ERROR:" in line)
    ]


def png_pixels(png: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of raw pixel bytes) of an 8-bit non-interlaced PNG."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and header[12] == 0, "8-bit, not interlaced"
    bpp = {2: 3, 6: 4, 0: 1, 4: 2}[color]
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def variance(rows: list[bytes]) -> float:
    """Variance of the byte values over every 7th row (enough to tell a blank page)."""
    values = [v for row in rows[::7] for v in row[::3]]
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def test_report_renders_without_console_errors_and_is_not_blank(tmp_path: Path) -> None:
    shutil.copy(SAMPLES / "digits_mlp.npz", tmp_path / "m.npz")
    result = run("quantize", tmp_path / "m.npz", "--target-bpw", "4", "--html", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    log = screenshot(tmp_path / "r.html", tmp_path / "r.png")
    assert console_errors(log) == []
    width, height, rows = png_pixels(tmp_path / "r.png")
    assert (width, height) == (1200, 1600)
    assert variance(rows) > 100


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A page whose script throws is caught; a blank page has no variance."""
    (tmp_path / "bad.html").write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction();</script></body></html>"
    )
    assert console_errors(screenshot(tmp_path / "bad.html", tmp_path / "bad.png"))
    (tmp_path / "blank.html").write_text("<!DOCTYPE html><html><body></body></html>")
    screenshot(tmp_path / "blank.html", tmp_path / "blank.png")
    assert variance(png_pixels(tmp_path / "blank.png")[2]) == 0
