"""What the tests share: the bundled sample models, their scorer, and a CLI runner."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

from click.testing import CliRunner, Result

from qcompress.cli import cli

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@cache
def score_module() -> ModuleType:
    """``sample_models/score.py``, loaded from its path (sample_models is not a package)."""
    spec = importlib.util.spec_from_file_location("qcompress_sample_score", SAMPLES / "score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accuracy(path: Path) -> float:
    """Test accuracy of the digits model held in any weight file."""
    return score_module().accuracy(path)


def run(*args: object) -> Result:
    """Run the CLI in-process with ``args`` (any objects, passed as strings); exceptions other
    than click's exits propagate, so a traceback fails the test."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
