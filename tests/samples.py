"""What the tests share: the bundled sample models, their scorer, and a CLI runner."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

from click.testing import CliRunner, Result

from qcompress.cli import cli

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _load(name: str, path: Path) -> ModuleType:
    """A script loaded from its path (its folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def score_module() -> ModuleType:
    """``sample_models/score.py``."""
    return _load("qcompress_sample_score", SAMPLES / "score.py")


@cache
def make_docs_module() -> ModuleType:
    """``scripts/make_docs.py``: the one Chromium command line the docs and the tests use."""
    return _load("qcompress_make_docs", SAMPLES.parent / "scripts" / "make_docs.py")


def accuracy(path: Path) -> float:
    """Test accuracy of the digits model held in any weight file."""
    return score_module().accuracy(path)


def run(*args: object, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process with ``args`` (any objects, passed as strings) and extra ``env``;
    exceptions other than click's exits propagate, so a traceback fails the test."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def assert_clean_error(result: Result, *fragments: str) -> None:
    """Exit 2, one line on stderr naming what went wrong, no traceback, nothing on stdout."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
