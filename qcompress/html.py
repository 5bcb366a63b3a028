"""The report as one self-contained HTML page: what compression cost, where the bits went.

Why a page and not a notebook: it opens anywhere, offline, and can be attached to a CI run. So it
is one file with inline CSS and SVG, no network, and only a few lines of plain JavaScript (column
sorting) that the page does not need to be readable.

It must stay readable for 10,000 tensors and print well, so everything is aggregated by layer kind
(:func:`qcompress.layer_kind.layer_kind`) first; per-tensor charts show the worst tensors of each
kind (at most ``CHART_ROWS``), and the per-tensor tables are collapsed per kind (and paged in
chunks of ``TABLE_PAGE`` rows) yet hold every tensor. SVG element counts are bounded whatever the
model's size.

Every string from the report is escaped: tensor names come from the weight file, which is input
the user may not control. Exact numbers ride along in ``data-*`` attributes (``repr`` of the
report's value) so tools and tests can read the page without parsing formatted text.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qcompress.atomic import atomic_outputs, check_outputs
from qcompress.errors import InputError
from qcompress.layer_kind import KINDS, layer_kind

CHART_ROWS = 30  # worst tensors per layer kind in the per-tensor chart
CANDIDATE_TENSORS = 40  # budget-chosen tensors whose candidates are listed one by one
TABLE_PAGE = 500  # rows per collapsed page of the per-tensor table
OPEN_TABLES_UP_TO = 200  # a model with at most this many tensors shows its tables open
LIST_CAP = 100  # failures and checksum names listed from a verify result

COLORS = {
    "attention.q": "#4e79a7",
    "attention.k": "#76b7b2",
    "attention.v": "#59a14f",
    "attention.o": "#9c755f",
    "attention": "#86bcb6",
    "ffn": "#f28e2b",
    "embedding": "#b07aa1",
    "depthwise": "#ff9da7",
    "conv": "#e15759",
    "norm": "#bab0ac",
    "head": "#edc948",
    "other": "#8c8c8c",
}
ACTION_COLORS = {"quantized": "#4e79a7", "kept": "#d4a6c8", "passthrough": "#bab0ac"}

_TENSOR_KEYS = {
    "name": str,
    "shape": list,
    "action": str,
    "original_bytes": int,
    "stored_bytes": int,
    "mse": (int, float),
}


def esc(value: object) -> str:
    """Any value as text safe inside HTML content and quoted attributes."""
    return html.escape(str(value), quote=True)


def _num(value: float | int | None) -> str:
    """The exact value for a data-* attribute (``null`` for None)."""
    return "null" if value is None else repr(value)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def fmt_sqnr(value: float | None) -> str:
    return "exact" if value is None else f"{value:.1f} dB"


def fmt_float(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _params(t: dict[str, Any]) -> int:
    return math.prod(t["shape"])


def _bpw(t: dict[str, Any]) -> float | None:
    n = _params(t)
    return 8 * t["stored_bytes"] / n if n else None


def _signal(t: dict[str, Any]) -> float | None:
    """Mean square of the tensor, recovered from its MSE and SQNR (None when exact)."""
    if t.get("sqnr_db") is None or not t["mse"]:
        return None
    return t["mse"] * 10 ** (t["sqnr_db"] / 10)


def pooled_sqnr(tensors: Iterable[dict[str, Any]]) -> float | None:
    """SQNR over the tensors taken together (signal and noise summed over elements). Exact
    tensors add no noise but their signal is unknown from the report, so they are left out;
    None when no tensor has an error."""
    signal = noise = 0.0
    for t in tensors:
        s = _signal(t)
        if s is None:
            continue
        n = _params(t)
        signal += s * n
        noise += t["mse"] * n
    return 10 * math.log10(signal / noise) if noise > 0 and signal > 0 else None


def kind_summary(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer kind (in :data:`KINDS` order, kinds with no tensor left out): counts, sizes,
    bits per quantized weight, pooled and worst SQNR."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for t in tensors:
        by_kind.setdefault(layer_kind(t["name"]), []).append(t)
    out = []
    for kind in KINDS:
        group = by_kind.get(kind)
        if not group:
            continue
        quantized = [t for t in group if t["action"] == "quantized"]
        q_params = sum(_params(t) for t in quantized)
        finite = [t["sqnr_db"] for t in quantized if t.get("sqnr_db") is not None]
        out.append(
            {
                "kind": kind,
                "tensors": len(group),
                "quantized": len(quantized),
                "parameters": sum(_params(t) for t in group),
                "original_bytes": sum(t["original_bytes"] for t in group),
                "stored_bytes": sum(t["stored_bytes"] for t in group),
                "bits_per_weight": (
                    8 * sum(t["stored_bytes"] for t in quantized) / q_params if q_params else None
                ),
                "sqnr_db": pooled_sqnr(quantized),
                "worst_sqnr_db": min(finite) if finite else None,
            }
        )
    return out


def _worst_first(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Quantized tensors first, lowest SQNR first (exact last), then the rest by name."""

    def key(t: dict[str, Any]) -> tuple:
        quantized = t["action"] == "quantized"
        sqnr = t.get("sqnr_db")
        return (not quantized, sqnr is None, sqnr if sqnr is not None else 0.0, t["name"])

    return sorted(tensors, key=key)


# ----------------------------------------------------------------------------- loading


def load_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or an InputError naming the file and what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a {what} (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not a {what}: invalid JSON at line {e.lineno}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a {what} (expected a JSON object)")
    return data


def check_report(report: dict[str, Any], path: Path | str) -> None:
    """Enough of the report's shape for the page; a one-line InputError otherwise."""
    hint = "give the .qc.json that qcompress quantize wrote"
    if report.get("tool") != "qcompress" or not isinstance(report.get("tensors"), list):
        raise InputError(f"{path}: not a qcompress report; {hint}")
    if not isinstance(report.get("totals"), dict):
        raise InputError(f"{path}: report has no totals; {hint}")
    for i, t in enumerate(report["tensors"]):
        if not isinstance(t, dict):
            raise InputError(f"{path}: tensor entry {i} is not an object; {hint}")
        for key, kind in _TENSOR_KEYS.items():
            if not isinstance(t.get(key), kind) or isinstance(t.get(key), bool):
                name = t.get("name", i)
                raise InputError(f"{path}: tensor {name!r} lacks a valid {key!r}; {hint}")
        if not all(isinstance(d, int) and d >= 0 for d in t["shape"]):
            raise InputError(f"{path}: tensor {t['name']!r} has an invalid shape; {hint}")
        sqnr = t.get("sqnr_db")
        if sqnr is not None and not isinstance(sqnr, (int, float)):
            raise InputError(f"{path}: tensor {t['name']!r} has an invalid 'sqnr_db'; {hint}")


def check_verify(verify: dict[str, Any], report: dict[str, Any], path: Path | str) -> None:
    """A ``verify --json`` result that belongs to the report's artifact (same tensor names)."""
    hint = "give the output of qcompress verify ARTIFACT --json"
    if not isinstance(verify.get("tensors"), list) or not isinstance(verify.get("passed"), bool):
        raise InputError(f"{path}: not a qcompress verify result; {hint}")
    names = []
    for t in verify["tensors"]:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise InputError(f"{path}: a tensor entry has no name; {hint}")
        if not isinstance(t.get("failed", []), list):
            raise InputError(f"{path}: tensor {t['name']!r} has an invalid 'failed'; {hint}")
        names.append(t["name"])
    ours = {t["name"] for t in report["tensors"]}
    extra = [n for n in names if n not in ours]
    missing = [n for n in ours if n not in set(names)]
    if extra or missing:
        example = (extra or missing)[0]
        raise InputError(
            f"{path}: is not the verify result of this report's artifact (tensor {example!r} "
            f"{'is not in' if extra else 'is missing from'} it); verify the artifact the "
            "report describes"
        )


def write_html_report(
    report_path: str | Path,
    output: str | Path,
    *,
    verify_path: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Render the report at ``report_path`` (and a verify result) into ``output``, atomically;
    an existing output is replaced only with ``force``."""
    report_path, output = Path(report_path), Path(output)
    inputs = [report_path] + ([Path(verify_path)] if verify_path is not None else [])
    check_outputs([output], inputs, force)
    report = load_json(report_path, "qcompress report")
    check_report(report, report_path)
    verify = None
    if verify_path is not None:
        verify = load_json(Path(verify_path), "qcompress verify result")
        check_verify(verify, report, verify_path)
    write_html(report, output, verify=verify, force=True)
    return output


def write_html(
    report: dict[str, Any],
    output: str | Path,
    *,
    verify: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write :func:`render_html` of ``report`` to ``output`` atomically."""
    output = Path(output)
    check_outputs([output], [], force)
    page = render_html(report, verify)
    with atomic_outputs([output]) as (tmp,):
        tmp.write_text(page, encoding="utf-8")
    return output


# ----------------------------------------------------------------------------- rendering

CSS = """
:root { --fg:#1d1d1f; --muted:#666; --line:#ddd; --bad:#c0392b; --good:#1e8449; }
* { box-sizing:border-box; }
body { font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif; color:var(--fg);
  margin:0 auto; padding:24px; max-width:1150px; background:#fff; }
h1 { font-size:22px; margin:0 0 4px; } h2 { font-size:17px; margin:28px 0 8px;
  border-bottom:1px solid var(--line); padding-bottom:4px; }
.meta { color:var(--muted); word-break:break-all; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(170px,1fr)); gap:10px; }
.card { border:1px solid var(--line); border-radius:6px; padding:10px 12px; }
.card .v { font-size:20px; font-weight:600; } .card .k { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { padding:3px 8px; border-bottom:1px solid #eee; text-align:right; white-space:nowrap; }
th:first-child, td:first-child { text-align:left; white-space:normal; word-break:break-all; }
th { background:#f6f6f6; position:sticky; top:0; }
th.sort { cursor:pointer; } th.sort:after { content:" \\2195"; color:#aaa; }
.legend span { display:inline-block; margin-right:12px; }
.sw { display:inline-block; width:10px; height:10px; margin-right:4px; vertical-align:middle; }
svg text { font:12px system-ui,sans-serif; fill:var(--fg); }
svg .name { fill:#333; } svg .val { fill:#333; font-size:11px; }
.pass { color:var(--good); font-weight:600; } .fail { color:var(--bad); font-weight:600; }
details { margin:6px 0; } summary { cursor:pointer; font-weight:600; }
.chosen td { background:#eaf4ea; font-weight:600; }
.note { color:var(--muted); font-size:12px; }
@media print {
  body { padding:0; max-width:none; font-size:11px; }
  th { position:static; } th.sort:after { content:""; }
  .card, svg, table.kinds, .chart { break-inside:avoid; }
  h2 { break-after:avoid; } details:not([open]) { display:none; }
  * { -webkit-print-color-adjust:exact; print-color-adjust:exact; }
  .noprint { display:none; }
}
"""

# Sort a table by the clicked column (numbers from data-v, else text); nothing else needs JS.
JS = """
document.querySelectorAll('th.sort').forEach(function (th) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], i = th.cellIndex, up = th.dataset.up !== '1';
    th.dataset.up = up ? '1' : '0';
    var rows = Array.prototype.slice.call(body.rows);
    function v(r) { var c = r.cells[i], d = c.dataset.v;
      return d === undefined ? c.textContent : (d === 'null' ? Infinity : parseFloat(d)); }
    rows.sort(function (a, b) { var x = v(a), y = v(b);
      return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def render_html(report: dict[str, Any], verify: dict[str, Any] | None = None) -> str:
    """The whole page for a quantize report (and optionally a ``verify --json`` result)."""
    tensors = report["tensors"]
    kinds = kind_summary(tensors)
    sections = [
        _header(report),
        _totals(report, kinds),
        _bytes_chart(report, kinds),
        _kind_section(kinds),
        _tensor_charts(tensors),
        _candidates(tensors),
        _verify_section(verify) if verify is not None else "",
        _tensor_tables(tensors),
    ]
    title = f"qcompress report: {report.get('input', {}).get('path', '')}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(s for s in sections if s)
        + f"\n<script>{JS}</script>\n</body></html>\n"
    )


def _header(report: dict[str, Any]) -> str:
    src, art = report.get("input", {}), report.get("artifact", {})
    warnings = "".join(
        f'<p class="note">warning: {esc(w)}</p>' for w in report.get("warnings", [])[:LIST_CAP]
    )
    return (
        f"<h1>What compression cost</h1>"
        f'<p class="meta">{esc(src.get("path", "?"))} ({esc(src.get("format", "?"))}) &rarr; '
        f"{esc(art.get('path', '?'))}<br>qcompress {esc(report.get('version', '?'))}, "
        f"input sha256 {esc(src.get('sha256', '?'))}</p>{warnings}"
    )


def _card(label: str, text: str, key: str, value: object) -> str:
    return (
        f'<div class="card" data-total="{esc(key)}" data-v="{esc(_num(value))}">'
        f'<div class="v">{esc(text)}</div><div class="k">{esc(label)}</div></div>'
    )


def _totals(report: dict[str, Any], kinds: list[dict[str, Any]]) -> str:
    t = report["totals"]
    tensors = report["tensors"]
    counts = {a: sum(1 for e in tensors if e["action"] == a) for a in ACTION_COLORS}
    dropped = report.get("dropped")
    n_dropped = len(dropped) if isinstance(dropped, list) else 0
    n_dropped += sum(1 for e in tensors if e["action"] == "dropped")
    ratio = t.get("compression_ratio")
    bpw = t.get("bits_per_weight")
    cards = [
        _card(
            "original size",
            fmt_bytes(t.get("original_bytes", 0)),
            "original_bytes",
            t.get("original_bytes"),
        ),
        _card(
            "artifact size",
            fmt_bytes(t.get("artifact_bytes", 0)),
            "artifact_bytes",
            t.get("artifact_bytes"),
        ),
        _card("compression", f"{ratio:.2f}x" if ratio else "-", "compression_ratio", ratio),
        _card("bits per quantized weight", f"{bpw:.3f}" if bpw else "-", "bits_per_weight", bpw),
        _card(
            "overall SQNR",
            fmt_sqnr(t.get("overall_sqnr_db")),
            "overall_sqnr_db",
            t.get("overall_sqnr_db"),
        ),
        _card(
            "overall max abs error",
            fmt_float(t.get("overall_max_abs_error")),
            "overall_max_abs_error",
            t.get("overall_max_abs_error"),
        ),
        _card("parameters", f"{t.get('parameters', 0):,}", "parameters", t.get("parameters")),
        _card("quantized tensors", f"{counts['quantized']:,}", "quantized", counts["quantized"]),
        _card("kept in float", f"{counts['kept']:,}", "kept", counts["kept"]),
        _card("passed through", f"{counts['passthrough']:,}", "passthrough", counts["passthrough"]),
        _card("dropped", f"{n_dropped:,}", "dropped", n_dropped),
    ]
    listed = ""
    if isinstance(dropped, list) and dropped:
        names = [d.get("name", d) if isinstance(d, dict) else d for d in dropped[:LIST_CAP]]
        listed = '<p class="note">dropped: ' + ", ".join(esc(n) for n in names)
        listed += f" and {len(dropped) - LIST_CAP} more" if len(dropped) > LIST_CAP else ""
        listed += "</p>"
    return f'<h2>Totals</h2><div class="cards">{"".join(cards)}</div>{listed}'


def _stacked(y: int, label: str, parts: list[tuple[str, int, str]], scale: float) -> list[str]:
    """One horizontal stacked bar: (key, bytes, color) parts, ``scale`` pixels per byte."""
    out = [f'<text x="0" y="{y + 15}">{esc(label)}</text>']
    x = 130.0
    for key, n, color in parts:
        w = n * scale
        if w <= 0:
            continue
        out.append(
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="22" fill="{color}">'
            f"<title>{esc(key)}: {esc(fmt_bytes(n))}</title></rect>"
        )
        x += w
    out.append(
        f'<text class="val" x="{x + 6:.1f}" y="{y + 15}">'
        f"{esc(fmt_bytes(sum(p[1] for p in parts)))}</text>"
    )
    return out


def _bytes_chart(report: dict[str, Any], kinds: list[dict[str, Any]]) -> str:
    """Where the bytes went: before and after, stacked by layer kind, then by action."""
    tensors = report["tensors"]
    original = sum(k["original_bytes"] for k in kinds)
    artifact = report["totals"].get("artifact_bytes") or 0
    stored = sum(k["stored_bytes"] for k in kinds)
    widest = max(original, artifact, stored, 1)
    scale = 820 / widest
    by_action = [
        (a, sum(t["stored_bytes"] for t in tensors if t["action"] == a), c)
        for a, c in ACTION_COLORS.items()
    ]
    overhead = max(artifact - stored, 0)
    rows = _stacked(
        0, "original", [(k["kind"], k["original_bytes"], COLORS[k["kind"]]) for k in kinds], scale
    )
    rows += _stacked(
        30,
        "stored, by kind",
        [(k["kind"], k["stored_bytes"], COLORS[k["kind"]]) for k in kinds],
        scale,
    )
    rows += _stacked(
        60, "artifact, by action", [*by_action, ("header and checksums", overhead, "#333")], scale
    )
    legend = "".join(
        f'<span><i class="sw" style="background:{COLORS[k["kind"]]}"></i>{esc(k["kind"])}</span>'
        for k in kinds
    ) + "".join(
        f'<span><i class="sw" style="background:{c}"></i>{esc(a)}</span>'
        for a, c in [*ACTION_COLORS.items(), ("header and checksums", "#333")]
    )
    return (
        '<h2>Where the bytes went</h2><svg class="chart" role="img" width="100%" '
        'viewBox="0 0 1040 86" aria-label="bytes by layer kind">'
        + "".join(rows)
        + f'</svg><p class="legend">{legend}</p>'
    )


def _kind_section(kinds: list[dict[str, Any]]) -> str:
    """One row per layer kind: the table, and bars of bits per weight and of error."""
    rows = []
    for k in kinds:
        rows.append(
            f'<tr data-kind="{esc(k["kind"])}"><td><i class="sw" style="background:'
            f'{COLORS[k["kind"]]}"></i>{esc(k["kind"])}</td>'
            f'<td data-v="{k["tensors"]}">{k["tensors"]:,}</td>'
            f'<td data-v="{k["quantized"]}">{k["quantized"]:,}</td>'
            f'<td data-v="{k["parameters"]}">{k["parameters"]:,}</td>'
            f'<td data-v="{k["original_bytes"]}">{esc(fmt_bytes(k["original_bytes"]))}</td>'
            f'<td data-v="{k["stored_bytes"]}">{esc(fmt_bytes(k["stored_bytes"]))}</td>'
            f'<td data-v="{_num(k["bits_per_weight"])}">{fmt_float(k["bits_per_weight"], 4)}</td>'
            f'<td data-v="{_num(k["sqnr_db"])}">{esc(fmt_sqnr(k["sqnr_db"]))}</td>'
            f'<td data-v="{_num(k["worst_sqnr_db"])}">{esc(fmt_sqnr(k["worst_sqnr_db"]))}</td></tr>'
        )
    head = "".join(
        f'<th class="sort">{h}</th>'
        for h in (
            "layer kind",
            "tensors",
            "quantized",
            "parameters",
            "original",
            "stored",
            "bits/weight",
            "SQNR (pooled)",
            "worst SQNR",
        )
    )
    bars = _bar_chart(
        [
            (
                k["kind"],
                k["bits_per_weight"],
                k["worst_sqnr_db"],
                COLORS[k["kind"]],
                k["quantized"] > 0,
            )
            for k in kinds
        ],
        "layer kinds",
    )
    return (
        f'<h2>By layer kind</h2><table class="kinds"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{bars}"
    )


def _bar_chart(rows: list[tuple[str, float | None, float | None, str, bool]], what: str) -> str:
    """Two bars per row: bits per weight (left) and error as -SQNR (right, longer is worse).

    ``rows``: (label, bits per weight, SQNR dB or None when exact, color, quantized)."""
    if not rows:
        return ""
    finite = [s for _, _, s, _, q in rows if q and s is not None]
    top = max(finite, default=0.0) + 3.0  # SQNR at which the error bar is empty
    span = max(top - min(finite, default=0.0), 1.0)
    max_bits = max([b for _, b, _, _, _ in rows if b is not None] + [8.0])
    height = 18 * len(rows) + 26
    out = [
        f'<text x="380" y="12">bits per weight (0 to {max_bits:g})</text>',
        '<text x="720" y="12">error: lower SQNR, longer bar</text>',
    ]
    for i, (label, bits, sqnr, color, quantized) in enumerate(rows):
        y = 22 + 18 * i
        short = label if len(label) <= 55 else "\u2026" + label[-54:]
        out.append(
            f'<text class="name" x="0" y="{y + 11}"><title>{esc(label)}</title>{esc(short)}</text>'
        )
        if bits is not None:
            w = 250 * bits / max_bits
            out.append(f'<rect x="380" y="{y}" width="{w:.1f}" height="13" fill="{color}"/>')
            out.append(f'<text class="val" x="{384 + w:.1f}" y="{y + 11}">{bits:.2f}</text>')
        if quantized:
            w = 0.0 if sqnr is None else 250 * (top - sqnr) / span
            out.append(f'<rect x="720" y="{y}" width="{w:.1f}" height="13" fill="#c0392b"/>')
            out.append(
                f'<text class="val" x="{724 + w:.1f}" y="{y + 11}">{esc(fmt_sqnr(sqnr))}</text>'
            )
    return (
        f'<svg class="chart" role="img" aria-label="{esc(what)}" width="100%" '
        f'viewBox="0 0 1040 {height}">' + "".join(out) + "</svg>"
    )


def _tensor_charts(tensors: list[dict[str, Any]]) -> str:
    """Per layer kind, the worst ``CHART_ROWS`` quantized tensors: bits and error side by side."""
    parts = ["<h2>Per tensor, worst first</h2>"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for t in tensors:
        if t["action"] == "quantized":
            by_kind.setdefault(layer_kind(t["name"]), []).append(t)
    if not by_kind:
        return parts[0] + '<p class="note">No tensor was quantized.</p>'
    for kind in KINDS:
        group = by_kind.get(kind)
        if not group:
            continue
        worst = _worst_first(group)[:CHART_ROWS]
        more = len(group) - len(worst)
        parts.append(
            f"<h3>{esc(kind)}: {len(group):,} quantized tensors"
            + (f", the {len(worst)} worst shown" if more else "")
            + "</h3>"
        )
        parts.append(
            _bar_chart(
                [(t["name"], _bpw(t), t.get("sqnr_db"), COLORS[kind], True) for t in worst], kind
            )
        )
    return "".join(parts)


def _candidate_row(c: dict[str, Any]) -> str:
    group = "" if c.get("group_size") is None else f" g{c['group_size']}"
    setting = f"{c.get('bits')}-bit {c.get('granularity')}{group}"
    bpw, sqnr, stored = c.get("bits_per_weight"), c.get("sqnr_db"), c.get("stored_bytes")
    return (
        f'<tr class="{"chosen" if c.get("chosen") else ""}">'
        f"<td>{esc(setting)}{' (chosen)' if c.get('chosen') else ''}</td>"
        f'<td data-v="{esc(_num(bpw))}">{esc(fmt_float(bpw, 4))}</td>'
        f'<td data-v="{esc(_num(sqnr))}">{esc(fmt_sqnr(sqnr))}</td>'
        f'<td data-v="{esc(_num(stored))}">{esc(fmt_bytes(stored or 0))}</td></tr>'
    )


def _candidates(tensors: list[dict[str, Any]]) -> str:
    """For budget-chosen tensors: every setting measured and the one chosen."""
    chosen = [t for t in tensors if isinstance(t.get("candidates"), list) and t["candidates"]]
    if not chosen:
        return ""
    widths: dict[str, list[int]] = {}
    for t in chosen:
        pick = next((c for c in t["candidates"] if c.get("chosen")), None)
        key = f"{pick['bits']}-bit {pick['granularity']}" if pick else "kept in float"
        widths.setdefault(key, [0, 0])
        widths[key][0] += 1
        widths[key][1] += _params(t)
    summary = "".join(
        f'<tr data-choice="{esc(k)}"><td>{esc(k)}</td><td data-v="{n}">{n:,}</td>'
        f'<td data-v="{p}">{p:,}</td></tr>'
        for k, (n, p) in sorted(widths.items())
    )
    shown = _worst_first(chosen)[:CANDIDATE_TENSORS]
    blocks = []
    for t in shown:
        rows = "".join(_candidate_row(c) for c in t["candidates"])
        blocks.append(
            f'<details data-candidates="{esc(t["name"])}"><summary>{esc(t["name"])}: '
            f"{esc(t.get('reason', ''))}</summary><table><thead><tr><th>setting</th>"
            f"<th>bits/weight</th><th>SQNR</th><th>stored</th></tr></thead><tbody>{rows}"
            "</tbody></table></details>"
        )
    more = len(chosen) - len(shown)
    return (
        f"<h2>Budget choices</h2><p>{len(chosen):,} tensors had their bits chosen by the budget."
        "</p><table><thead><tr><th>chosen</th><th>tensors</th><th>parameters</th></tr></thead>"
        f"<tbody>{summary}</tbody></table><h3>Candidates of the {len(shown)} worst</h3>"
        + "".join(blocks)
        + (f'<p class="note">{more:,} more in the JSON report.</p>' if more else "")
    )


def _verify_section(verify: dict[str, Any]) -> str:
    passed = verify.get("passed")
    gates = verify.get("gates") or []
    checks = verify.get("checksums") or {}
    failing = [t for t in verify["tensors"] if t.get("failed")]
    gate_list = "".join(f"<li><code>{esc(g)}</code></li>" for g in gates[:LIST_CAP])
    rows = "".join(
        f'<tr data-failed="{esc(t["name"])}"><td>{esc(t["name"])}</td>'
        f'<td data-v="{_num(t.get("sqnr_db"))}">{esc(fmt_sqnr(t.get("sqnr_db")))}</td>'
        f"<td>{esc(fmt_float(t.get('max_abs_error')))}</td>"
        f"<td>{esc('; '.join(map(str, t['failed'])))}</td></tr>"
        for t in failing[:LIST_CAP]
    )
    table = (
        "<table><thead><tr><th>failing tensor</th><th>SQNR</th><th>max abs error</th>"
        f"<th>failed</th></tr></thead><tbody>{rows}</tbody></table>"
        if failing
        else ""
    )
    more = len(failing) - LIST_CAP
    checksum_failed = checks.get("failed") or []
    return (
        f'<h2>Verify</h2><p data-verify="{"passed" if passed else "failed"}" class="'
        f'{"pass" if passed else "fail"}">{"PASSED" if passed else "FAILED"}: '
        f"{len(verify['tensors']):,} tensors, {len(failing):,} failing, "
        f"{len(checksum_failed):,} checksum failures of {esc(checks.get('checked', '?'))} "
        f"checked{esc(', against ' + str(verify['against']) if verify.get('against') else '')}"
        f"</p><p>Gates:</p><ul>{gate_list or '<li>none (structure and checksums only)</li>'}</ul>"
        + table
        + (f'<p class="note">{more:,} more failing tensors in the JSON.</p>' if more > 0 else "")
    )


def _tensor_row(t: dict[str, Any]) -> str:
    bpw = _bpw(t)
    sqnr = fmt_sqnr(t.get("sqnr_db")) if t["action"] == "quantized" else "-"
    return (
        f'<tr data-name="{esc(t["name"])}" data-stored="{t["stored_bytes"]}" '
        f'data-sqnr="{esc(_num(t.get("sqnr_db")))}">'
        f"<td>{esc(t['name'])}</td><td>{esc('x'.join(map(str, t['shape'])) or 'scalar')}</td>"
        f"<td>{esc(t['action'])}</td><td>{esc(t.get('bits') or '-')}</td>"
        f'<td data-v="{_num(bpw)}">{fmt_float(bpw, 4)}</td>'
        f'<td data-v="{_num(t.get("sqnr_db"))}">{esc(sqnr)}</td>'
        f'<td data-v="{_num(t.get("max_abs_error"))}">{esc(fmt_float(t.get("max_abs_error")))}</td>'
        f'<td data-v="{t["original_bytes"]}">{esc(fmt_bytes(t["original_bytes"]))}</td>'
        f'<td data-v="{t["stored_bytes"]}">{esc(fmt_bytes(t["stored_bytes"]))}</td></tr>'
    )


def _tensor_tables(tensors: list[dict[str, Any]]) -> str:
    """Every tensor, per layer kind, worst first; collapsed for large models, paged by
    ``TABLE_PAGE`` rows so a page stays quick to open and to sort."""
    head = "".join(
        f'<th class="sort">{h}</th>'
        for h in (
            "tensor",
            "shape",
            "action",
            "bits",
            "bits/weight",
            "SQNR",
            "max abs error",
            "original",
            "stored",
        )
    )
    open_attr = " open" if len(tensors) <= OPEN_TABLES_UP_TO else ""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for t in tensors:
        by_kind.setdefault(layer_kind(t["name"]), []).append(t)
    parts = [
        f'<h2>Every tensor</h2><p class="note noprint">{len(tensors):,} tensors; click a '
        "heading to sort.</p>"
    ]
    for kind in KINDS:
        group = by_kind.get(kind)
        if not group:
            continue
        ordered = _worst_first(group)
        pages = [ordered[i : i + TABLE_PAGE] for i in range(0, len(ordered), TABLE_PAGE)]
        for n, page in enumerate(pages):
            label = f"{kind}: {len(group):,} tensors"
            if len(pages) > 1:
                label += f", rows {n * TABLE_PAGE + 1:,} to {n * TABLE_PAGE + len(page):,}"
            parts.append(
                f'<details data-page="{esc(kind)}"{open_attr if n == 0 else ""}>'
                f"<summary>{esc(label)}</summary><table><thead><tr>{head}</tr></thead><tbody>"
                + "".join(_tensor_row(t) for t in page)
                + "</tbody></table></details>"
            )
    return "".join(parts)
