"""benchmarks/frontier.py scores every method by the same two numbers; these tests pin them on
tiny data against values computed by hand, so a wrong frontier cannot come from the harness.

bpw = every stored byte x 8 / weights; SQNR = 10 log10(sum w^2 / sum (w - w_hat)^2). No timing.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from samples import make_docs_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import _peers
import _qcmodes
import frontier

TINY = [("w", np.linspace(-1, 1, 64 * 256, dtype=np.float32).reshape(64, 256) ** 3)]


def test_sqnr_and_max_error_by_hand() -> None:
    x = np.array([1.0, 2.0, 2.0], np.float32)  # sum w^2 = 9
    xhat = np.array([1.0, 2.0, 1.0], np.float32)  # sum (w - w_hat)^2 = 1, max |.| = 1
    signal, noise, worst = _peers.error_sums([(x, xhat)])
    assert (signal, noise, worst) == (9.0, 1.0, 1.0)
    assert _peers.sqnr_db(signal, noise) == pytest.approx(10 * math.log10(9))
    assert _peers.sqnr_db(9.0, 0.0) == math.inf
    assert _peers.bits_per_weight(3, 6) == 4.0


def test_run_codec_counts_stored_bytes_and_scores_the_decode() -> None:
    """A codec that keeps one byte per weight (round to steps of 1/4) and a 2-byte header:
    bpw = 8 + 16/n, SQNR over both tensors together, from the rounding errors by hand."""
    a = np.array([[0.1, 0.3], [0.6, -0.9]], np.float32)
    b = np.array([[0.5, 0.2, 0.0, 1.0]], np.float32)

    def codec(x: np.ndarray):
        codes = np.round(x * 4).astype(np.int8)
        return codes.nbytes + 2, lambda: codes.astype(np.float32) / 4

    p = _peers.run_codec("t", "toy", "toy q", [("a", a), ("b", b)], codec)
    n = a.size + b.size
    assert p.bpw == pytest.approx(8 * (n + 4) / n)
    xs = np.concatenate([a.ravel(), b.ravel()]).astype(np.float64)
    err = np.round(xs * 4) / 4 - xs
    assert p.sqnr_db == pytest.approx(10 * math.log10((xs @ xs) / (err @ err)))
    assert p.max_abs_error == pytest.approx(np.abs(err).max())


def test_bfloat16_rounding_is_nearest_even() -> None:
    ulp = 2.0**-7  # bfloat16 keeps 7 mantissa bits
    x = np.array([1.0, 1 + ulp / 2, 1 + 1.5 * ulp, 1 + 0.6 * ulp, -2.0], np.float32)
    assert _peers.to_bfloat16_bits(x).tolist() == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC000]


def test_written_data_set_reads_back_and_bookkeeping_is_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    _qcmodes.write_safetensors(path, TINY)
    back = _qcmodes.read_safetensors(path)
    assert back["w"][:2] == ("F32", (64, 256))
    assert back["w"][2] == TINY[0][1].tobytes()
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0  # data 8-byte aligned
    # a stored tensor counts, a __qcompress__ one does not
    header = {
        "c": {"dtype": "U8", "shape": [10], "data_offsets": [0, 10]},
        "__qcompress__/stats": {"dtype": "U8", "shape": [16], "data_offsets": [10, 26]},
    }
    text = json.dumps(header).encode()
    art = tmp_path / "a.safetensors"
    art.write_bytes(struct.pack("<Q", len(text)) + text + bytes(26))
    assert _qcmodes.stored_tensor_bytes(art) == 10


def test_qcompress_point_matches_hand_count_and_the_report(tmp_path: Path) -> None:
    """``--bits 8 --entropy none`` on a [64, 256] tensor: int8 codes plus one float32 scale
    per row, so 8 + 32/256 bits per weight; the SQNR the harness measures from the decoded file
    is the one the product's own report states."""
    qc = _qcmodes.QCompress()
    mode = _qcmodes.Mode("--bits 8", ("--bits", "8", "--entropy", "none"))
    point = qc.quantize("tiny", TINY, mode, tmp_path)
    assert point is not None, qc.notes
    assert point.bpw == pytest.approx(8 + 32 / 256)
    assert point.file_bpw > point.bpw  # the header and bookkeeping are in the file
    report = json.loads((tmp_path / "a.qc.json").read_text())
    assert point.sqnr_db == pytest.approx(report["totals"]["overall_sqnr_db"], abs=1e-6)
    assert point.max_abs_error == pytest.approx(report["totals"]["overall_max_abs_error"])


def test_a_mode_the_cli_lacks_is_skipped_with_a_note(tmp_path: Path) -> None:
    qc = _qcmodes.QCompress()
    mode = _qcmodes.Mode("--no-such", ("--no-such-option",), needs=("--no-such-option",))
    assert qc.quantize("tiny", TINY, mode, tmp_path) is None
    assert qc.notes == ["qcompress: no --no-such-option in this CLI: its modes skipped"]


def test_gguf_q8_0_is_8_5_bits_per_weight() -> None:
    pytest.importorskip("gguf")
    points, _ = _peers.gguf_numpy("tiny", TINY)
    q8 = next(p for p in points if p.label == "gguf Q8_0")
    assert q8.bpw == 8.5  # 32 int8 codes + one float16 scale per block: 34 bytes / 32
    assert q8.sqnr_db > 40


def test_max_abs_error_verdict_compares_bits_at_each_bound() -> None:
    def pt(method: str, bpw: float, bound: float, err: float) -> _peers.Point:
        return _peers.Point("gauss", method, method, bpw, bpw, 20.0, err, None, None, bound)

    pts = [pt("SZ3", 4.0, 0.01, 0.01), pt("qcompress", 3.6, 0.01, 0.009)]
    v = frontier._max_abs_verdict("gauss", pts)
    assert v.met is True and "+10.0%" in v.measured
    v = frontier._max_abs_verdict("gauss", [*pts[:1], pt("qcompress", 3.6, 0.01, 0.011)])
    assert v.met is False and "EXCEEDED" in v.measured
    assert frontier._max_abs_verdict("gauss", pts[:1]).met is None


def test_plot_frontier_is_the_pareto_set() -> None:
    pareto = make_docs_module().pareto
    pts = [
        {"bpw": 4.0, "sqnr_db": 20.0},
        {"bpw": 4.5, "sqnr_db": 19.0},  # beaten by the first
        {"bpw": 3.0, "sqnr_db": 14.0},
        {"bpw": 5.0, "sqnr_db": 26.0},
    ]
    assert [p["bpw"] for p in pareto(pts)] == [3.0, 4.0, 5.0]
