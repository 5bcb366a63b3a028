"""Regenerate README's pictures in docs/ (``make docs``), so none is drawn by hand:

- ``docs/frontier.svg``: bits per weight vs SQNR of every point benchmarks/frontier.py measured
  (read from its ``docs/frontier.json``, so the picture is the benchmark's data, never redrawn
  by hand): one panel per data set, every peer, the qcompress frontier joined by a line.
- ``docs/report.png``: a headless Chromium screenshot of the HTML report of the sample model
  quantized at ``--target-bpw 4`` (``docs/report.html`` beside it).

Run: ``make docs`` (or ``python scripts/make_docs.py [--data frontier.json]``). Chromium is
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


FRONTIER_JSON = DOCS / "frontier.json"  # written by benchmarks/frontier.py (make bench)
# method -> (fill colour, marker); qcompress is drawn last, on top
STYLE = {
    "gguf-py": ("#f28e2b", "square"),
    "llama.cpp": ("#e15759", "diamond"),
    "SZ3": ("#59a14f", "triangle"),
    "ZFP": ("#b07aa1", "triangle-down"),
    "qcompress": ("#4e79a7", "circle"),
}
PANEL_W, PANEL_H = 480, 330
X_MAX = 10.0  # bits per weight shown: the lossy range (lossless points have no SQNR)


def load_frontier(path: Path = FRONTIER_JSON) -> dict:
    """The benchmark's JSON: every point of every set (benchmarks/frontier.py writes it)."""
    import json

    return json.loads(path.read_text())


def pareto(points: list[dict]) -> list[dict]:
    """The points no other point beats in both bits per weight and SQNR, by bits per weight."""
    line, best = [], -float("inf")
    for p in sorted(points, key=lambda p: (p["bpw"], -p["sqnr_db"])):
        if p["sqnr_db"] > best:
            best = p["sqnr_db"]
            line.append(p)
    return line


def _marker(shape: str, x: float, y: float, fill: str, tip: str) -> str:
    r = 3.5
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}">{tip}</circle>'
    if shape == "square":
        return (
            f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" '
            f'fill="{fill}">{tip}</rect>'
        )
    pts = {
        "diamond": ((0, -r - 1), (r + 1, 0), (0, r + 1), (-r - 1, 0)),
        "triangle": ((0, -r - 1), (r + 1, r), (-r - 1, r)),
        "triangle-down": ((0, r + 1), (r + 1, -r), (-r - 1, -r)),
    }[shape]
    coords = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in pts)
    return f'<polygon points="{coords}" fill="{fill}">{tip}</polygon>'


def frontier_panel(name: str, info: dict, points: list[dict], ox: float, oy: float) -> list[str]:
    """One data set: SQNR against bits per weight, every method, the qcompress frontier as a
    line; the Gaussian panel also draws the Shannon bound of a Gaussian source (6.02 dB/bit)."""
    left, bottom, top, right = 44, 34, 26, 10
    shown = [p for p in points if p["sqnr_db"] is not None and p["bpw"] <= X_MAX]
    y1 = max([10.0, *(p["sqnr_db"] for p in shown)]) * 1.06
    y0 = min([0.0, *(p["sqnr_db"] for p in shown)])

    def px(x: float) -> float:
        return ox + left + x / X_MAX * (PANEL_W - left - right)

    def py(y: float) -> float:
        return oy + PANEL_H - bottom - (y - y0) / (y1 - y0) * (PANEL_H - top - bottom)

    out = [
        f'<text x="{ox + left}" y="{oy + 16}" font-weight="bold">{html.escape(name)}: '
        f"{html.escape(_short(info['description']))}<title>{html.escape(info['description'])}"
        "</title></text>"
    ]
    for x in range(0, int(X_MAX) + 1):
        out.append(
            f'<line x1="{px(x):.1f}" y1="{py(y1):.1f}" x2="{px(x):.1f}" y2="{py(y0):.1f}" '
            f'stroke="#eee"/><text x="{px(x):.1f}" y="{py(y0) + 14:.1f}" '
            f'text-anchor="middle">{x}</text>'
        )
    for y in range(int(y0) // 10 * 10, int(y1) + 1, 10):
        out.append(
            f'<line x1="{px(0):.1f}" y1="{py(y):.1f}" x2="{px(X_MAX):.1f}" y2="{py(y):.1f}" '
            f'stroke="#eee"/><text x="{px(0) - 5:.1f}" y="{py(y) + 4:.1f}" '
            f'text-anchor="end">{y}</text>'
        )
    if name == "gauss":
        xe = min(X_MAX, y1 / 6.0206)
        out.append(
            f'<line x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(xe):.1f}" y2="{py(6.0206 * xe):.1f}" '
            f'stroke="#999" stroke-dasharray="4 3"><title>Shannon bound, Gaussian source'
            "</title></line>"
        )
    ours = [p for p in shown if p["method"] == "qcompress"]
    if ours:
        line = " ".join(f"{px(p['bpw']):.1f},{py(p['sqnr_db']):.1f}" for p in pareto(ours))
        out.append(f'<polyline points="{line}" fill="none" stroke="#4e79a7" stroke-width="1.5"/>')
    for method, (fill, shape) in STYLE.items():
        for p in (q for q in shown if q["method"] == method):
            tip = (
                f"<title>{html.escape(p['label'])}: {p['bpw']:.3f} bpw, "
                f"{p['sqnr_db']:.2f} dB</title>"
            )
            out.append(_marker(shape, px(p["bpw"]), py(p["sqnr_db"]), fill, tip))
    return out


def _short(text: str, limit: int = 58) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def frontier_svg(doc: dict) -> str:
    """Every data set of the benchmark's JSON as one panel, two per row, and one legend."""
    names = list(doc["sets"])
    cols = 2
    rows = (len(names) + cols - 1) // cols
    w, h = cols * PANEL_W, rows * PANEL_H + 70
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="#fff"/>',
        '<text x="12" y="20" font-size="14" font-weight="bold">SQNR dB (up) against bits per '
        "weight, every stored byte (right): up and left is better</text>",
    ]
    for i, name in enumerate(names):
        pts = [p for p in doc["points"] if p["dataset"] == name]
        out += frontier_panel(
            name, doc["sets"][name], pts, (i % cols) * PANEL_W, 30 + (i // cols) * PANEL_H
        )
    y = h - 26
    x = 12
    for method, (fill, shape) in STYLE.items():
        label = "qcompress (line: its frontier)" if method == "qcompress" else method
        out.append(_marker(shape, x + 4, y - 4, fill, ""))
        out.append(f'<text x="{x + 14}" y="{y}">{html.escape(label)}</text>')
        x += 40 + 7 * len(label)
    out.append(
        f'<text x="12" y="{h - 8}" fill="#555">{html.escape(doc["command"])}; '
        f"{html.escape(str(doc['machine'].get('cpus')))} CPUs; gauss: dashed, Shannon bound "
        "of a Gaussian source</text>"
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
    parser.add_argument(
        "--data", type=Path, default=FRONTIER_JSON, help="benchmarks/frontier.py's JSON"
    )
    args = parser.parse_args()
    DOCS.mkdir(exist_ok=True)
    if args.data.exists():
        doc = load_frontier(args.data)
        (DOCS / "frontier.svg").write_text(frontier_svg(doc))
        print(f"wrote {DOCS / 'frontier.svg'} ({len(doc['points'])} points of {args.data})")
    else:
        print(
            f"{args.data} not found: run python benchmarks/frontier.py (make bench) first; "
            "docs/frontier.svg left as it is",
            file=sys.stderr,
        )
    report_screenshot(DOCS / "report.png", DOCS / "report.html")
    print(f"wrote {DOCS / 'report.html'} and {DOCS / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
