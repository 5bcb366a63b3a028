"""The HTML report: structure and numbers against the report, 10,000 tensors, hostile names, and
the ``report``/``quantize --html`` commands' outputs and errors."""

from __future__ import annotations

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from samples import SAMPLES, run

from qcompress.html import CHART_ROWS, render_html
from qcompress.layer_kind import KINDS, layer_kind
from qcompress.report import schema

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>"\'&'


class Page(HTMLParser):
    """Every element's tag and attributes, the text of each element by a data-* key, and the
    script blocks (there must be exactly the page's own)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.elements.append((tag, a))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        assert not any(k.startswith("on") for k in a), (tag, a)  # no event handler from data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data

    def with_attr(self, key: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.elements if key in a]

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.elements if t == tag)


def _value(text: str | None) -> float | None:
    assert text is not None
    return None if text == "null" else float(text)


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The sample model under a bit budget (so it has candidates), with --html."""
    tmp = tmp_path_factory.mktemp("sample")
    shutil.copy(SAMPLES / "digits_mlp.npz", tmp / "digits.npz")
    result = run("quantize", tmp / "digits.npz", "--target-bpw", "4", "--html", tmp / "r.html")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp / "digits.qc.json").read_text())
    return report, tmp


def test_sample_page_holds_every_tensor_and_the_report_numbers(sample_report: Any) -> None:
    report, tmp = sample_report
    page = Page((tmp / "r.html").read_text())
    rows = {a["data-name"]: a for a in page.with_attr("data-name")}
    assert set(rows) == {t["name"] for t in report["tensors"]}
    for t in report["tensors"]:
        assert int(rows[t["name"]]["data-stored"] or -1) == t["stored_bytes"]
        assert _value(rows[t["name"]]["data-sqnr"]) == t["sqnr_db"]
    totals = {a["data-total"]: _value(a["data-v"]) for a in page.with_attr("data-total")}
    for key in ("original_bytes", "artifact_bytes", "bits_per_weight", "overall_sqnr_db"):
        assert totals[key] == report["totals"][key], key
    assert totals["quantized"] == report["totals"]["quantized_tensors"]
    assert totals["kept"] == sum(t["action"] == "kept" for t in report["tensors"])
    assert totals["passthrough"] == sum(t["action"] == "passthrough" for t in report["tensors"])
    # every budget-chosen tensor's candidates are listed, the chosen one marked
    listed = {a["data-candidates"] for a in page.with_attr("data-candidates")}
    assert listed == {t["name"] for t in report["tensors"] if t["candidates"]}
    assert len(page.scripts) == 1 and "querySelectorAll('th.sort')" in page.scripts[0]


def test_page_has_no_network_references(sample_report: Any) -> None:
    _, tmp = sample_report
    page = Page((tmp / "r.html").read_text())
    for _, attrs in page.elements:
        for key in ("src", "href"):
            assert key not in attrs, attrs
    assert "http://" not in (tmp / "r.html").read_text().replace("http://www.w3", "")


def _big_report(n: int) -> dict[str, Any]:
    """A schema-valid report of ``n`` tensors over every layer kind, hostile names included."""
    stems = [
        "layers.{i}.self_attn.q_proj.weight",
        "layers.{i}.self_attn.k_proj.weight",
        "layers.{i}.self_attn.v_proj.weight",
        "layers.{i}.self_attn.o_proj.weight",
        "layers.{i}.mlp.up_proj.weight",
        "layers.{i}.input_layernorm.weight",
        "conv{i}.weight",
        "block{i}.depthwise.weight",
        "embed_tokens{i}.weight",
        "misc{i}.table",
    ]
    tensors = []
    for i in range(n):
        name = stems[i % len(stems)].format(i=i) if i % 997 else f"{HOSTILE}{i}"
        quantized = i % 10 != 5
        params = 64 * (1 + i % 7)
        sqnr = None if i % 113 == 0 else 10.0 + (i * 7919 % 400) / 10
        mse = 0.0 if sqnr is None else 1e-3 * (1 + i % 3)
        tensors.append(
            {
                "name": name,
                "shape": [params // 64, 64],
                "dtype": "float32",
                "action": "quantized" if quantized else "kept",
                "reason": f"because {HOSTILE}",
                "bits": 4 if quantized else None,
                "scheme": "affine" if quantized else None,
                "granularity": "group" if quantized else None,
                "axis": 0 if quantized else None,
                "group_size": 32 if quantized else None,
                "range": "mse" if quantized else None,
                "scale_bits": None,
                "original_min": -1.0,
                "original_max": 1.0,
                "clip_min": -1.0 if quantized else None,
                "clip_max": 1.0 if quantized else None,
                "scale": [0.1] if quantized else None,
                "zero_point": [8.0] if quantized else None,
                "mse": mse if quantized else 0.0,
                "max_abs_error": 0.05 if quantized else 0.0,
                "sqnr_db": sqnr if quantized else None,
                "original_bytes": 4 * params,
                "stored_bytes": params // 2 + 8 if quantized else 4 * params,
            }
        )
    original = sum(t["original_bytes"] for t in tensors)
    stored = sum(t["stored_bytes"] for t in tensors)
    q = [t for t in tensors if t["action"] == "quantized"]
    qp = sum(math.prod(t["shape"]) for t in q)
    return {
        "tool": "qcompress",
        "version": "0.1.0",
        "input": {"path": f"in/{HOSTILE}.npz", "format": "npz", "sha256": "0" * 64, "bytes": 1},
        "artifact": {"path": "out.qc.safetensors", "sha256": "1" * 64, "bytes": stored + 4096},
        "options": {},
        "totals": {
            "tensors": n,
            "quantized_tensors": len(q),
            "parameters": sum(math.prod(t["shape"]) for t in tensors),
            "quantized_parameters": qp,
            "original_bytes": original,
            "artifact_bytes": stored + 4096,
            "compression_ratio": original / (stored + 4096),
            "bits_per_weight": 8 * sum(t["stored_bytes"] for t in q) / qp,
            "quantized_original_bytes": sum(t["original_bytes"] for t in q),
            "quantized_stored_bytes": sum(t["stored_bytes"] for t in q),
            "overall_mse": 1e-3,
            "overall_max_abs_error": 0.05,
            "overall_sqnr_db": 30.0,
        },
        "elapsed_seconds": 1.0,
        "warnings": [f"rule {HOSTILE} matches no tensor"],
        "tensors": tensors,
    }


@pytest.fixture(scope="module")
def big() -> tuple[dict[str, Any], str]:
    report = _big_report(10_000)
    jsonschema.validate(report, schema())
    return report, render_html(report)


def test_10000_tensors_every_tensor_present_and_aggregates_equal(big: Any) -> None:
    report, text = big
    page = Page(text)
    names = [a["data-name"] for a in page.with_attr("data-name")]
    assert sorted(names) == sorted(t["name"] for t in report["tensors"])
    kinds = {a["data-kind"]: a for a in page.with_attr("data-kind")}
    # the kind table's cells, in order: tensors, quantized, parameters, original, stored, ...
    cells: dict[str, list[float | None]] = {}
    current = None
    for tag, attrs in page.elements:
        if tag == "tr":
            current = attrs.get("data-kind")
            if current:
                cells[current] = []
        elif tag == "td" and current and "data-v" in attrs:
            cells[current].append(_value(attrs["data-v"]))
    for kind in kinds:
        group = [t for t in report["tensors"] if layer_kind(t["name"]) == kind]
        assert cells[kind][0] == len(group)
        assert cells[kind][1] == sum(t["action"] == "quantized" for t in group)
        assert cells[kind][2] == sum(math.prod(t["shape"]) for t in group)
        assert cells[kind][3] == sum(t["original_bytes"] for t in group)
        assert cells[kind][4] == sum(t["stored_bytes"] for t in group)
        finite = [
            t["sqnr_db"] for t in group if t["action"] == "quantized" and t["sqnr_db"] is not None
        ]
        assert cells[kind][7] == (min(finite) if finite else None)
    assert sum(cells[k][0] or 0 for k in kinds) == 10_000
    assert set(kinds) <= set(KINDS) and len(kinds) >= 8


def test_10000_tensors_stay_readable(big: Any) -> None:
    """Bounded charts (the worst CHART_ROWS per kind), collapsed tables, a bounded page."""
    _, text = big
    page = Page(text)
    assert page.count("rect") <= 2 * CHART_ROWS * (len(KINDS) + 1) + 3 * len(KINDS)
    details = page.with_attr("data-page")
    assert details and all("open" not in a for a in details)  # collapsed for a big model
    assert len(text) < 8_000_000


def test_hostile_names_are_text_not_markup(big: Any) -> None:
    report, text = big
    page = Page(text)
    assert len(page.scripts) == 1  # only the page's own
    assert page.count("img") == 0
    hostile = [a["data-name"] for a in page.with_attr("data-name") if HOSTILE in a["data-name"]]
    assert len(hostile) == sum(HOSTILE in t["name"] for t in report["tensors"]) > 0
    assert "<script>alert" not in text and "&lt;script&gt;alert" in text


def test_worst_tensor_of_each_kind_is_charted_first(big: Any) -> None:
    report, text = big
    # the first title in the per-tensor chart of the q kind is its lowest-SQNR tensor
    q = [
        t
        for t in report["tensors"]
        if layer_kind(t["name"]) == "attention.q" and t["sqnr_db"] is not None
    ]
    worst = min(q, key=lambda t: (t["sqnr_db"], t["name"]))
    chart = text[text.index("<h3>attention.q:") :]
    assert chart.index(f"<title>{worst['name']}</title>") < chart.index("</svg>")


def test_verify_gates_shown(sample_report: Any) -> None:
    _, tmp = sample_report
    result = run("verify", tmp / "digits.qc.safetensors", "--min-sqnr", "30", "--json")
    assert result.exit_code == 1
    verify = json.loads(result.stdout)
    (tmp / "v.json").write_text(result.stdout)
    out = run(
        "report", tmp / "digits.qc.json", "--html", tmp / "v.html", "--verify", tmp / "v.json"
    )
    assert out.exit_code == 0, out.output
    page = Page((tmp / "v.html").read_text())
    assert [a["data-verify"] for a in page.with_attr("data-verify")] == ["failed"]
    failed = {a["data-failed"] for a in page.with_attr("data-failed")}
    assert failed == {t["name"] for t in verify["tensors"] if t["failed"]} != set()
    assert "*:min_sqnr &gt;= 30" in (tmp / "v.html").read_text()


def _one_line_error(result: Any, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_report_refuses_bad_inputs(sample_report: Any, tmp_path: Path) -> None:
    _, tmp = sample_report
    report = tmp / "digits.qc.json"
    out = tmp_path / "o.html"
    _one_line_error(run("report", tmp_path / "nope.json", "--html", out), "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    _one_line_error(run("report", tmp_path / "bad.json", "--html", out), "bad.json", "JSON")
    (tmp_path / "list.json").write_text("[1, 2]")
    _one_line_error(run("report", tmp_path / "list.json", "--html", out), "list.json")
    broken = json.loads(report.read_text())
    broken["tensors"][0]["stored_bytes"] = "many"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    _one_line_error(run("report", tmp_path / "broken.json", "--html", out), "stored_bytes")
    # a verify result of another artifact, and a report given as a verify result
    other = {"passed": True, "tensors": [{"name": "x", "failed": []}]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    _one_line_error(
        run("report", report, "--html", out, "--verify", tmp_path / "other.json"), "'x'"
    )
    _one_line_error(run("report", report, "--html", out, "--verify", report), "verify")
    _one_line_error(run("report", report, "--html", report), "input")
    assert not out.exists() and not list(tmp_path.glob(".o.html*"))


def test_report_never_overwrites_without_force(sample_report: Any, tmp_path: Path) -> None:
    _, tmp = sample_report
    out = tmp_path / "o.html"
    out.write_text("mine")
    _one_line_error(run("report", tmp / "digits.qc.json", "--html", out), "--force")
    assert out.read_text() == "mine"
    assert run("report", tmp / "digits.qc.json", "--html", out, "--force").exit_code == 0
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_quantize_html_checked_before_any_output(tmp_path: Path) -> None:
    shutil.copy(SAMPLES / "digits_mlp.npz", tmp_path / "m.npz")
    (tmp_path / "m.html").write_text("mine")
    _one_line_error(run("quantize", tmp_path / "m.npz", "--html", tmp_path / "m.html"), "--force")
    assert not (tmp_path / "m.qc.safetensors").exists() and not (tmp_path / "m.qc.json").exists()
    _one_line_error(
        run("quantize", tmp_path / "m.npz", "--html", tmp_path / "m.qc.json"), "m.qc.json"
    )
    _one_line_error(
        run("quantize", tmp_path / "m.npz", "--html", tmp_path / "x.html", "--shard", "1/2"),
        "--merge",
    )
    assert (tmp_path / "m.html").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.html", "m.npz"]
