"""The bundled sample models and their scorer, shared by the tests."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

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
