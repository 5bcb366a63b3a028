"""What people read: rich tables and one-line summaries on stderr (stdout for ``inspect``), and
the one JSON document of ``--json``. rich is imported only when something is drawn for a person.

Consoles honour NO_COLOR (no escape codes at all) and COLUMNS; piped output is ``PIPE_WIDTH``
wide so names are not cut.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
from collections.abc import Iterable
from typing import Any

import click

PIPE_WIDTH = 160  # rich's 80 columns would truncate tensor names when output is not a terminal
NAME_MIN = 16  # narrowest tensor-name column worth drawing a table for
RICH_ROWS_MAX = 500
"""Tables longer than this are laid out here, in one pass over the rows: rich measures every cell
of every row (about 3 ms a row), which for 100k tensors takes minutes."""


def no_color() -> bool:
    """NO_COLOR (https://no-color.org): set and not empty."""
    return bool(os.environ.get("NO_COLOR"))


def console(stderr: bool) -> Any:
    """A rich console; under NO_COLOR it has no color system at all, so not even bold or italic
    escape codes are written (rich's own NO_COLOR handling drops colors but keeps styles).
    Piped output is PIPE_WIDTH wide unless COLUMNS says otherwise."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
    if no_color():
        out = Console(stderr=stderr, width=width, color_system=None, no_color=True)
    else:
        out = Console(stderr=stderr, width=width)
    out.on_broken_pipe = _broken_pipe  # rich would exit 1; the CLI boundary exits 0
    return out


def _broken_pipe() -> None:
    raise BrokenPipeError(32, "Broken pipe")


def stderr_console() -> Any:
    return console(stderr=True)


def stdout_console() -> Any:
    return console(stderr=False)


def say(text: str) -> None:
    """One plain line for a person, on stderr (no markup or highlighting applied)."""
    stderr_console().print(text, highlight=False)


def echo_json(document: Any) -> None:
    """One strict JSON document; NaN/Inf become null plus a "nonfinite" map (report.json_safe),
    pretty-printed in linear time (json's indent= is not)."""
    from qcompress.report import dumps

    click.echo(dumps(document), nl=False)


def warn(messages: Iterable[str], prefix: str = "warning") -> None:
    """Warnings and notes on stderr: always, -q and --json included (quiet hides summaries)."""
    for message in messages:
        click.echo(f"{prefix}: {message}", err=True)


def fmt_sqnr(value: float | None) -> str:
    return "exact" if value is None else f"{value:.1f}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


# --- quantize ------------------------------------------------------------------------------


def quantize_summary(result: Any) -> None:
    """The per-tensor table of a quantize run, then its totals."""
    from rich.table import Table

    report = result.report
    table = Table(title=f"{report['input']['path']} -> {result.artifact}", title_justify="left")
    for column in ("tensor", "shape", "action", "bits", "granularity", "SQNR dB", "bytes"):
        table.add_column(
            column, justify="right" if column in ("bits", "SQNR dB", "bytes") else "left"
        )
    for t in report["tensors"]:
        table.add_row(
            t["name"],
            _shape(t["shape"]),
            t["action"],
            str(t["bits"] or "-"),
            t["granularity"] or "-",
            fmt_sqnr(t["sqnr_db"]) if t["action"] == "quantized" else "-",
            f"{fmt_bytes(t['original_bytes'])} -> {fmt_bytes(t['stored_bytes'])}",
        )
    stderr_console().print(table)
    totals(report, f"report: {result.report_path}")
    state_and_drops(report)


def state_and_drops(report: dict[str, Any]) -> None:
    """One line on the optimizer state (how much of the file, dropped or kept) and one on
    what --drop left out."""
    state = report.get("optimizer_state")
    if state:
        share = f"{state['fraction']:.0%} of the tensor bytes"
        if state["dropped_tensors"] == state["tensors"]:
            say(f"optimizer state: {state['tensors']} tensors, {share}, dropped")
        else:
            say(
                f"optimizer state: {state['tensors']} tensors, {share}, kept "
                "(--drop-optimizer leaves it out)"
            )
    dropped = report.get("dropped") or []
    if dropped:
        nbytes = sum(d["bytes"] for d in dropped)
        say(f"dropped {len(dropped)} tensors ({fmt_bytes(nbytes)}); listed in the report")


def totals(report: dict[str, Any], where: str) -> None:
    t = report["totals"]
    bpw = t["bits_per_weight"]
    say(
        f"{fmt_bytes(t['original_bytes'])} -> {fmt_bytes(t['artifact_bytes'])} "
        f"({t['compression_ratio']:.2f}x), "
        f"{t['quantized_tensors']}/{t['tensors']} tensors quantized"
        + (f" at {bpw:.2f} bits/weight" if bpw else "")
        + f", overall SQNR {fmt_sqnr(t['overall_sqnr_db'])} dB; {where}"
    )


# --- inspect -------------------------------------------------------------------------------

_RIGHT = ("parameters", "bytes", "stored", "bits", "SQNR dB")


def inspect_table(result: dict[str, Any]) -> None:
    """The tensors of a weight file or an artifact, on stdout: a table whose name column folds
    (never cuts) long names, or one block per tensor where the columns do not fit."""
    artifact = result["kind"] == "artifact"
    title = f"{result['path']} ({result['format']}"
    title += (
        f" artifact from {result['source_format']})"
        if artifact
        else f", {result['layout']} layout)"
    )
    columns = ["tensor", "shape", "dtype", "parameters", "bytes"]
    if artifact:
        columns += ["stored", "bits", "scheme", "granularity", "SQNR dB"]
    rows = [_inspect_row(t, artifact) for t in result["tensors"]]
    out = stdout_console()
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    # every column but the name at full width, 3 characters of border and padding each, and
    # at least NAME_MIN for the name, which folds onto more lines as needed
    others = sum(w + 3 for w in widths[1:])
    fits = others + NAME_MIN + 4 <= out.width
    if len(rows) > RICH_ROWS_MAX:
        lines = _plain_table(title, columns, rows, widths, out.width) if fits else None
        _write_lines(lines or _plain_blocks(title, columns, rows, out.width))
    elif fits:
        _rich_table(out, title, columns, rows)
    else:  # too narrow for the columns: one block per tensor, its name on a line of its own
        out.print(title, highlight=False, overflow="fold")
        for row in rows:
            out.print(row[0], highlight=False, overflow="fold")
            details = ", ".join(f"{c} {v}" for c, v in zip(columns[1:], row[1:], strict=True))
            out.print(f"  {details}", highlight=False, overflow="fold")
    _inspect_summary(out, result, artifact)


def _inspect_row(t: dict[str, Any], artifact: bool) -> list[str]:
    row = [t["name"], _shape(t["shape"]), t["dtype"], f"{t['parameters']:,}", fmt_bytes(t["bytes"])]
    if artifact:
        quantized = t["action"] == "quantized"
        row += [
            fmt_bytes(t["stored_bytes"]),
            str(t["bits"]) if quantized else t["action"],
            t["scheme"] or "-",
            t["granularity"] or "-",
            fmt_sqnr(t["sqnr_db"]) if quantized else "-",
        ]
    return row


def _rich_table(out: Any, title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(
            column,
            justify="right" if column in _RIGHT else "left",
            overflow="fold",  # never "tens…": a cut name cannot be found or grepped
            no_wrap=column != "tensor",
            min_width=NAME_MIN if column == "tensor" else None,
        )
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _plain_table(
    title: str, columns: list[str], rows: list[list[str]], widths: list[int], width: int
) -> list[str]:
    """The table as plain lines, each cell measured once: columns two spaces apart, numbers
    right-aligned, a name wider than its column folded onto the following lines."""
    name_w = max(NAME_MIN, min(widths[0], width - sum(w + 2 for w in widths[1:])))
    widths = [name_w, *widths[1:]]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if col in _RIGHT else c.ljust(w)
            for c, w, col in zip(cells, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [*_fold(title, width), line(columns), line(["-" * w for w in widths])]
    blank = [""] * (len(columns) - 1)
    for row in rows:
        name = row[0]
        lines.append(line([name[:name_w], *row[1:]]))
        lines.extend(line([name[i : i + name_w], *blank]) for i in range(name_w, len(name), name_w))
    return lines


def _plain_blocks(title: str, columns: list[str], rows: list[list[str]], width: int) -> list[str]:
    """One block per tensor (its name on a line of its own), folded at ``width``."""
    lines = [*_fold(title, width)]
    for row in rows:
        lines.extend(_fold(row[0], width))
        details = ", ".join(f"{c} {v}" for c, v in zip(columns[1:], row[1:], strict=True))
        lines.extend(textwrap.wrap(f"  {details}", width, subsequent_indent="  ") or [""])
    return lines


def _fold(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


def _write_lines(lines: list[str]) -> None:
    """Many lines at once: plain text has no escape codes, under NO_COLOR or not."""
    chunk = 4096
    for i in range(0, len(lines), chunk):
        sys.stdout.write("\n".join(lines[i : i + chunk]) + "\n")


def _inspect_summary(out: Any, result: dict[str, Any], artifact: bool) -> None:
    summary = (
        f"{len(result['tensors'])} tensors shown, {result['parameters']:,} parameters in the file, "
        f"file {fmt_bytes(result['file_bytes'])}"
    )
    if artifact and result["bits_per_weight"]:
        summary += f", {result['bits_per_weight']:.2f} bits per quantized weight"
    out.print(summary, highlight=False)
    if artifact and len(result.get("by_width", [])) > 1:
        q_params = sum(w["parameters"] for w in result["by_width"])
        for w in result["by_width"]:
            out.print(
                f"  {w['bits']}-bit codes: {w['tensors']} tensors, {w['parameters']:,} weights "
                f"({w['parameters'] / q_params:.0%}), {w['bits_per_weight']:.2f} bits per weight",
                highlight=False,
            )


# --- verify and compare --------------------------------------------------------------------


def fmt_metric(t: dict[str, Any], metric: str, gates: list[Any]) -> str:
    """A tensor's value of ``metric`` with the digits that show why it fails its gates (22.47, not
    22.5, against >= 22.5); "-" when unknown (a corrupt tensor), "exact" for an exact SQNR."""
    from qcompress import api

    field, at_least = api.METRICS[metric]
    value = t[field]
    if t["mse"] is None:
        return "-"
    if value is None:
        return "exact"
    limits = [g.limit for g in gates if g.metric == metric and g.applies_to(t["name"])]
    failing = [lim for lim in limits if not (value >= lim if at_least else value <= lim)]
    if failing:  # the tightest failing limit needs the most digits
        return api.shown(value, max(failing) if at_least else min(failing), at_least)
    return f"{value:.1f}" if metric == "min_sqnr" and math.isfinite(value) else f"{value:.3g}"


def worst_first(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failing first, then NaN, then lowest SQNR; exact tensors last."""

    def key(t: dict[str, Any]) -> tuple[int, int, float]:
        sqnr = t["sqnr_db"]
        if sqnr is None:
            return (not t["failed"], 2, 0.0)
        return (not t["failed"], 0 if math.isnan(sqnr) else 1, 0.0 if math.isnan(sqnr) else sqnr)

    return sorted(tensors, key=key)


def gate_result(
    result: dict[str, Any], what: str, gates: list[Any], every_tensor: bool = False
) -> None:
    """The failing tensors (with ``every_tensor``: all of them, worst first) and a verdict."""
    from rich.table import Table

    out = stderr_console()
    failing = [t for t in result["tensors"] if t["failed"]]
    rows = worst_first(result["tensors"]) if every_tensor else failing
    if rows:
        title = "per-tensor error, worst first" if every_tensor else "failing tensors"
        table = Table(title=title, title_justify="left")
        for column in ("tensor", "SQNR dB", "max abs error", "MSE", "failed"):
            table.add_column(
                column,
                justify="left" if column in ("tensor", "failed") else "right",
                overflow="fold",
            )
        for t in rows:
            mse = "-" if t["mse"] is None else fmt_metric(t, "max_mse", gates)
            table.add_row(
                t["name"],
                fmt_metric(t, "min_sqnr", gates),
                fmt_metric(t, "max_abs_error", gates),
                mse,
                "; ".join(t["failed"]) or "-",
            )
        out.print(table)
    verdict = "PASSED" if result["passed"] else "FAILED"
    out.print(
        f"{verdict}: {what}, {len(result['tensors'])} tensors, {len(failing)} failing",
        highlight=False,
    )


# --- export --------------------------------------------------------------------------------


def export_summary(result: Any, output: Any) -> None:
    """GGUF: each fallback and the totals; compressed-tensors: where it was written."""
    out = stderr_console()
    if isinstance(result, dict) and result.get("format") == "gguf":
        for f in result["fallbacks"]:
            out.print(
                f"fallback: {f['name']}: {f['wanted']} -> {f['used']} "
                f"(+{f['extra_bits_per_weight']:.2f} bits per weight): {f['reason']}",
                highlight=False,
            )
        t = result["totals"]
        bpw = t["quantized_bits_per_weight"]
        out.print(
            f"wrote {result['output']} (GGUF {result['type']}, {t['tensors']} tensors, "
            f"{fmt_bytes(t['bytes'])}"
            + (f", {bpw:.3f} bits per quantized weight" if bpw is not None else "")
            + f", {t['fallbacks']} fallback(s)); verified with gguf's decoder",
            highlight=False,
        )
    else:
        out.print(f"wrote {output}", highlight=False)
