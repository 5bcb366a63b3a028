"""The CLI's rendering for people: long tables laid out in one pass (no per-cell measuring), the
same folding and widths as the rich table, and rich loaded only when something is drawn."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from samples import run
from test_recipe_validation import save

from qcompress import api
from qcompress.cli import render

ESC = "\x1b"
LONG = "model.encoder.layers.0." + "very_long_attention_projection_" * 3 + "weight"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A weight file of five tensors, one with a long name, and its artifact."""
    rng = np.random.default_rng(0)
    arrays = {f"w{i}": rng.standard_normal((32, 64)).astype(np.float32) for i in range(4)}
    arrays[LONG] = rng.standard_normal((32, 64)).astype(np.float32)
    src = save(tmp_path / "long.npz", arrays)
    return src, api.quantize_file(src, api.QuantizeOptions(min_elements=16)).artifact


def _name_cells(stdout: str) -> list[str]:
    """The name column of a plain table, from the header's layout (two spaces between columns)."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("tensor "))
    width = lines[header].index("shape") - 2
    rows = lines[header + 2 :]
    return [line[:width].strip() for line in rows if line and not line.startswith(" ")]


@pytest.mark.parametrize("kind", ["weights", "artifact"])
@pytest.mark.parametrize("no_color", ["", "1"])
def test_long_inspect_table_is_plain_folds_names_and_honours_columns(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, kind: str, no_color: str
) -> None:
    monkeypatch.setattr(render, "RICH_ROWS_MAX", 2)  # five rows: the one-pass layout
    path, width = (files[0], 80) if kind == "weights" else (files[1], 120)
    result = run("inspect", path, env={"COLUMNS": str(width), "NO_COLOR": no_color})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= width for line in lines), result.stdout
    assert "…" not in result.stdout and ESC not in result.stdout
    assert "│" not in result.stdout  # not rich's table
    cells = _name_cells(result.stdout)
    assert LONG in "".join(cells), result.stdout  # folded over lines, never cut
    assert {"w0", "w1", "w2", "w3"} <= set(cells)
    row = next(line for line in lines if line.startswith("w0 "))
    assert re.search(r"32x64 +float32 +2,048 +8\.0 KB", row), row
    if kind == "artifact":
        assert re.search(r"8\.0 KB +[\d.]+ KB +8 +symmetric +channel +\d+\.\d$", row), row
        assert any(len(line) > 80 for line in lines)  # COLUMNS, not a fixed 80, sets the width
    assert lines[-1].startswith("5 tensors shown")


def test_long_inspect_too_narrow_gives_blocks_folded_at_columns(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "RICH_ROWS_MAX", 2)
    result = run("inspect", files[1], env={"COLUMNS": "30", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 30 for line in lines), result.stdout
    names = [line for line in lines if not line.startswith(" ")]
    assert LONG in "".join(names), result.stdout
    assert "  shape 32x64, dtype float32," in result.stdout


def test_short_and_long_tables_show_the_same_cells(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-pass layout is the rich table's content: same cells per tensor."""
    rich = run("inspect", files[1], env={"COLUMNS": "200", "NO_COLOR": "1"}).stdout
    monkeypatch.setattr(render, "RICH_ROWS_MAX", 2)
    plain = run("inspect", files[1], env={"COLUMNS": "200", "NO_COLOR": "1"}).stdout
    rich_rows = {
        cells[0]: cells
        for line in rich.splitlines()
        if "│" in line and (cells := [c.strip() for c in line.split("│")[1:-1]])[0]
    }
    plain_rows = {
        (cells := re.split(r"  +", line.strip()))[0]: cells for line in plain.splitlines()
    }
    short = ["w0", "w1", "w2", "w3"]
    assert [rich_rows[n] for n in short] == [plain_rows[n] for n in short]
    assert len(rich_rows["w0"]) == 10
    assert rich.splitlines()[-1] == plain.splitlines()[-1]


def _loads_rich(*args: object) -> bool:
    code = (
        "import sys\nfrom qcompress.cli import main\n"
        "sys.argv = ['qcompress', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('rich' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.strip().splitlines()[-1] == "True"


def test_rich_loads_only_to_draw_for_a_person(files: tuple[Path, Path], tmp_path: Path) -> None:
    src, art = files
    assert not _loads_rich("inspect", src, "--json")
    assert not _loads_rich("inspect", art, "--errors", "--json")
    assert not _loads_rich("quantize", src, "-o", tmp_path / "q.safetensors", "-q", "--json")
    assert not _loads_rich("dequantize", art, "-o", tmp_path / "d.npz", "-q", "--json")
    assert not _loads_rich("quantize", "--help")
    assert _loads_rich("inspect", src)  # the check can fail: a table is drawn with rich
