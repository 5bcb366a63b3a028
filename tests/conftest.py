"""Shared fixtures, and hypothesis's profile: it draws the same examples on every run of
`make test` (and so in CI), so a failure there is a change in the code, never a new random draw.
`make fuzz` searches at random (QCOMPRESS_HYPOTHESIS=random selects that for any run)."""

from __future__ import annotations

import os
from types import ModuleType

import pytest
from hypothesis import settings
from samples import score_module

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("random", derandomize=False)
settings.load_profile(os.environ.get("QCOMPRESS_HYPOTHESIS", "repeatable"))


@pytest.fixture(scope="session")
def score() -> ModuleType:
    """sample_models/score.py as a module."""
    return score_module()
