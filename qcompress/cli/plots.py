"""Plots for the terminal: a tensor's histogram and SQNR bars, as lines of text.

Why text: ``inspect`` runs over ssh and in CI logs. The drawing is pure (data in, lines out) so
it is tested without a terminal; :func:`print_lines` adds colour through rich only when the
console is a terminal and ``NO_COLOR`` is unset, and ``fancy=False`` gives plain ASCII for pipes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qcompress.api import Histogram

BLOCKS = " ▁▂▃▄▅▆▇█"
HEIGHT = 10
MARGIN = 9  # left column for the count scale


def is_fancy(console: Any) -> bool:
    """Unicode blocks and colour only for a person at a terminal that allows colour."""
    return bool(console.is_terminal) and "NO_COLOR" not in os.environ


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _bin_of(value: float, edges: list[float]) -> int:
    """Index of the bin holding ``value`` (clamped to the histogram)."""
    n = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    if hi <= lo:
        return 0
    return min(max(int((value - lo) / (hi - lo) * n), 0), n - 1)


def histogram_lines(h: Histogram, *, fancy: bool) -> list[tuple[str, str]]:
    """(text, style) lines: the bars, an axis with the clipping range as ``[`` and ``]``, the
    quantization levels as ticks below it, the value range, and a summary."""
    head = (
        f"{h.name}  {h.dtype} {list(h.shape)}  {h.count:,} values"
        + (f", {h.action} at {h.bits} bits" if h.bits else f", {h.action}")
        + (f", {h.nonfinite:,} NaN/Inf not shown" if h.nonfinite else "")
    )
    out: list[tuple[str, str]] = [(head, "bold")]
    if not h.counts:
        return [*out, ("no finite values", "")]
    n = len(h.counts)
    top = max(h.counts) or 1
    for row in range(HEIGHT, 0, -1):
        cells = []
        for c in h.counts:
            level = c / top * HEIGHT  # in rows
            if fancy:
                eighths = round(min(max(level - (row - 1), 0.0), 1.0) * 8)
                cells.append(BLOCKS[eighths])
            else:
                cells.append("#" if level >= row - 0.5 and c else " ")
        label = f"{top:,}" if row == HEIGHT else ("0" if row == 1 else "")
        out.append((f"{label:>{MARGIN - 2}} {'|' if not fancy else '│'}" + "".join(cells), "cyan"))
    axis = ["-" if not fancy else "─"] * n
    if h.clip_min is not None and h.clip_max is not None:
        axis[_bin_of(h.clip_min, h.edges)] = "["
        axis[_bin_of(h.clip_max, h.edges)] = "]"
    out.append((" " * (MARGIN - 1) + "+" + "".join(axis), "yellow"))
    if h.levels:
        ticks = [" "] * n
        for v in h.levels:
            ticks[_bin_of(v, h.edges)] = "|" if not fancy else "╵"
        out.append((" " * MARGIN + "".join(ticks), "magenta"))
    lo, hi = _fmt(h.edges[0]), _fmt(h.edges[-1])
    out.append((" " * MARGIN + lo + " " * max(n - len(lo) - len(hi), 1) + hi, ""))
    notes = []
    if h.clip_min is not None:
        notes.append(
            f"clipping range [ ] {_fmt(h.clip_min)} to {_fmt(h.clip_max or 0.0)} "
            f"({h.clip_source})" + ("" if h.clipped is None else f", {h.clipped:,} values outside")
        )
    if h.levels:
        notes.append(f"{len(h.levels)} quantization levels (ticks below the axis)")
    elif h.distinct_levels is not None:
        notes.append(
            f"{h.distinct_levels:,} distinct decoded values (one grid per channel or group: "
            "too many to mark)"
        )
    notes.append(f"values {_fmt(h.min or 0.0)} to {_fmt(h.max or 0.0)}")
    return out + [(note, "dim") for note in notes]


def error_lines(rows: list[dict[str, Any]], *, fancy: bool, width: int) -> list[tuple[str, str]]:
    """(text, style) lines: one bar per tensor, its length the SQNR in dB (shorter is worse),
    in the order given (worst first)."""
    if not rows:
        return [("no quantized tensors", "")]
    names = min(max(len(r["name"]) for r in rows), 40)
    bar_width = max(width - names - 20, 10)
    finite = [r["sqnr_db"] for r in rows if r["sqnr_db"] is not None]
    top = max([*finite, 1.0])
    out = []
    for r in rows:
        name = r["name"] if len(r["name"]) <= names else "…" + r["name"][-(names - 1) :]
        sqnr = r["sqnr_db"]
        if sqnr is None:
            bar, value = "", "exact"
        else:
            length = max(sqnr, 0.0) / top * bar_width
            bar = ("█" if fancy else "#") * int(length)
            if fancy and length - int(length) >= 0.5:
                bar += "▌"
            value = f"{sqnr:.1f} dB"
        style = "red" if sqnr is not None and sqnr < 20 else "green"
        bits = "vr" if r["bits"] is None else f"{r['bits']:>2}b"  # vr: variable-rate codes
        out.append((f"{name:<{names}} {bits:>3} {bar} {value}", style))
    return out


def print_lines(console: Any, lines: list[tuple[str, str]]) -> None:
    fancy = is_fancy(console)
    for text, style in lines:
        console.print(text, style=style if fancy else None, highlight=False, markup=False)
