"""Extreme finite values: float32's limits, denormals and mixed magnitudes.

Every bits/scheme/granularity (float, float16 and second-level scales), on the numpy and the
compiled path: decoded values are finite, and the reported error is the true error of the
decoded values (a grid that could not reach a value says so in max_abs_error, never 0).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompress.engine import dequantize, quantize_with_error
from qcompress.engine.spec import BITS, GRANULARITIES, SCHEMES, QuantSpec

F32 = np.finfo(np.float32)
EXTREMES = (
    float(F32.max),
    -float(F32.max),
    float(F32.smallest_subnormal),
    -float(F32.smallest_subnormal),
    float(F32.tiny),
    1e30,
    -1e-30,
    0.0,
    1.0,
)

TINYISH = float(np.float32(1e-37))

SPECS = [
    QuantSpec(bits, scheme, granularity, 0, 32, rng, scale_dtype, scale_bits)
    for bits in BITS
    for scheme in SCHEMES
    for granularity in GRANULARITIES
    for rng in ("minmax", "mse")
    for scale_dtype, scale_bits in (("float32", None), ("float16", None), ("float32", 6))
    if scale_bits is None or granularity == "group"
]


def _path(monkeypatch: pytest.MonkeyPatch, compiled: bool) -> None:
    from qcompress.engine import jit

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    monkeypatch.setenv(jit.DISABLE_ENV, "0" if compiled else "1")


def _check(x: np.ndarray, spec: QuantSpec) -> None:
    q, stats = quantize_with_error(x, spec)
    xhat = dequantize(q)
    assert np.isfinite(xhat).all(), f"{spec}: {np.count_nonzero(~np.isfinite(xhat))} non-finite"
    d = xhat.astype(np.float64) - x.astype(np.float64)
    assert stats.max_abs_error == float(np.max(np.abs(d)))
    assert stats.mse == pytest.approx(float(np.mean(d * d)), rel=1e-9, abs=0)


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "compiled"])
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_float32_limits_decode_finite_and_report_the_true_error(
    monkeypatch: pytest.MonkeyPatch, spec: QuantSpec, compiled: bool
) -> None:
    """The issue's case: ±FLT_MAX at 4 bits decoded to Inf while reporting max_abs_error 0."""
    _path(monkeypatch, compiled)
    x = np.tile(np.array(EXTREMES, np.float32), (4, 8))  # (4, 72): a ragged group per row
    _check(x, spec)
    _check(np.full((3, 64), F32.max, np.float32), spec)
    _check(np.where(np.arange(192).reshape(3, 64) % 2, F32.max, -F32.max).astype(np.float32), spec)


@settings(max_examples=60, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    compiled=st.booleans(),
    values=st.lists(
        st.one_of(
            st.sampled_from(EXTREMES),
            st.floats(-F32.max, F32.max, width=32),
            st.floats(-TINYISH, TINYISH, width=32),
        ),
        min_size=64,
        max_size=64,
    ),
)
def test_mixed_magnitudes_decode_finite_and_report_the_true_error(
    spec: QuantSpec, compiled: bool, values: list[float]
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        _path(mp, compiled)
        _check(np.array(values, np.float32).reshape(2, 32), spec)
