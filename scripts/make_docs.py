"""Regenerate README's pictures in docs/ (``make docs``), so none is drawn by hand:

- ``docs/frontier.svg``: bits per weight vs SQNR of every setting benchmarks/quality.py measures
  (its functions, its settings, the sample model's quantizable weights), qcompress and, where the
  ``gguf`` package is installed, llama.cpp's GGUF types; the qcompress frontier joined by a line.
- ``docs/report.png``: a headless Chromium screenshot of the HTML report of the sample model
  quantized at ``--target-bpw 4`` (``docs/report.html`` beside it).

Run: ``make docs`` (or ``python scripts/make_docs.py [--set sample|gauss|t3]``). Chromium is
Debian's ``chromium`` package; without it the screenshot is skipped with a message.
"""

from __future__ import annotations

import argparse
import html
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "benchmarks"))
CHROMIUM = "/usr/bin/chromium"
# Headless, and no background connections: this machine's closed network refuses them.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def screenshot_command(page: Path, png: Path, profile: str, *extra: str) -> list[str]:
    """Chromium rendering ``page`` into ``png`` at 1200x1600 with a fresh ``profile`` folder."""
    return [
        CHROMIUM,
        *CHROMIUM_FLAGS,
        *extra,
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        "--window-size=1200,1600",
        page.resolve().as_uri(),
    ]


def measure(set_name: str) -> list[tuple[str, str, float, float]]:
    """(label, kind, bits per weight, SQNR dB) of every quality.py row on one weight set."""
    import quality

    tensors = quality.weight_sets()[set_name]
    rows = [
        (s.label, "qcompress", *quality.measure(tensors, quality.qcompress_fn(s.spec))[:2])
        for s in quality.settings()
    ]
    try:
        types = quality.gguf_types()
    except ImportError:
        print("gguf not installed: the frontier shows qcompress only", file=sys.stderr)
        types = []
    for name, t, block in types:
        rows.append(
            (f"gguf {name}", "gguf", *quality.measure(tensors, quality.gguf_fn(t, block))[:2])
        )
    return rows


def frontier_svg(rows: list[tuple[str, str, float, float]], set_name: str) -> str:
    """A scatter of SQNR against bits per weight; the qcompress Pareto frontier as a line."""
    w, h, left, bottom, top, right = 760, 460, 60, 50, 30, 20
    xs = [r[2] for r in rows]
    ys = [r[3] for r in rows]
    x0, x1 = 0.0, max(xs) * 1.05
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.08

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="#fff"/>',
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">Bits per weight vs SQNR '
        f"({html.escape(set_name)} weights; up and left is better)</text>",
    ]
    for x in range(0, int(x1) + 1):
        out.append(
            f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{h - bottom}" stroke="#eee"/>'
            f'<text x="{px(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">{x}</text>'
        )
    for y in range(0, int(y1) + 1, 10):
        out.append(
            f'<line x1="{left}" y1="{py(y):.1f}" x2="{w - right}" y2="{py(y):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y}</text>'
        )
    out.append(
        f'<text x="{(w + left) / 2}" y="{h - 12}" text-anchor="middle">bits per weight '
        "(every stored byte: codes, scales, zero-points)</text>"
        f'<text transform="translate(16 {(h - bottom + top) / 2}) rotate(-90)" '
        'text-anchor="middle">SQNR dB</text>'
    )
    ours = sorted((r for r in rows if r[1] == "qcompress"), key=lambda r: (r[2], -r[3]))
    best, line = -1e9, []
    for r in ours:
        if r[3] > best:
            best = r[3]
            line.append(r)
    points = " ".join(f"{px(r[2]):.1f},{py(r[3]):.1f}" for r in line)
    out.append(f'<polyline points="{points}" fill="none" stroke="#4e79a7" stroke-width="1.5"/>')
    for label, kind, x, y in rows:
        tip = f"<title>{html.escape(label)}: {x:.3f} bpw, {y:.2f} dB</title>"
        if kind == "qcompress":
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="#4e79a7">{tip}</circle>'
            )
        else:
            out.append(
                f'<rect x="{px(x) - 4:.1f}" y="{py(y) - 4:.1f}" width="8" height="8" '
                f'fill="#f28e2b">{tip}</rect>'
            )
    out.append(
        f'<circle cx="{left + 20}" cy="{top + 10}" r="4" fill="#4e79a7"/>'
        f'<text x="{left + 30}" y="{top + 14}">qcompress settings (line: frontier)</text>'
    )
    if any(r[1] == "gguf" for r in rows):
        out.append(
            f'<rect x="{left + 16}" y="{top + 22}" width="8" height="8" fill="#f28e2b"/>'
            f'<text x="{left + 30}" y="{top + 30}">llama.cpp GGUF types (gguf-py)</text>'
        )
    out.append("</svg>\n")
    return "\n".join(out)


def report_screenshot(png: Path, page: Path) -> None:
    """Quantize the sample at --target-bpw 4 with --html; screenshot the page with Chromium."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / "sample_models" / "digits_mlp.npz", Path(tmp) / "digits_mlp.npz")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "qcompress",
                "quantize",
                "digits_mlp.npz",  # relative, so the page names no temporary folder
                "--target-bpw",
                "4",
                "--html",
                str(page),
                "--force",
                "--quiet",
            ],
            check=True,
            cwd=tmp,
        )
        if not Path(CHROMIUM).exists():
            print(
                f"{CHROMIUM} not found (apt-get install chromium): no screenshot", file=sys.stderr
            )
            return
        subprocess.run(
            screenshot_command(page, png, f"{tmp}/profile"),
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="sample", choices=("sample", "gauss", "t3"))
    args = parser.parse_args()
    DOCS.mkdir(exist_ok=True)
    rows = measure(args.set)
    (DOCS / "frontier.svg").write_text(frontier_svg(rows, args.set))
    print(f"wrote {DOCS / 'frontier.svg'} ({len(rows)} settings)")
    report_screenshot(DOCS / "report.png", DOCS / "report.html")
    print(f"wrote {DOCS / 'report.html'} and {DOCS / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
