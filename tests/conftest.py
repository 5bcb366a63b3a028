"""Hypothesis draws the same examples on every run of `make test` (and so in CI): a failure
there is a change in the code, never a new random draw. `make fuzz` searches at random
(QCOMPRESS_HYPOTHESIS=random selects that for any run)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("random", derandomize=False)
settings.load_profile(os.environ.get("QCOMPRESS_HYPOTHESIS", "repeatable"))
