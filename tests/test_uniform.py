"""Variable-rate codes (engine.uniform): the bound as a property at float32 extremes, the SQNR
target reached, exact decode, the narrowest codes, and the same bits on both engine paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcompress.engine.metrics import error_stats
from qcompress.engine.spec import NonFiniteError
from qcompress.engine.uniform import (
    BoundError,
    UniformSpec,
    code_entropy,
    decode_rows,
    uniform_dequantize,
    uniform_quantize,
    uniform_quantize_with_error,
)

F32 = np.finfo(np.float32)
# Finite float32 values over the whole range, subnormals and both zeros included.
floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
arrays = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=2, max_dims=3, max_side=9), elements=floats
)


def _compiled(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    from qcompress.engine import jit

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    monkeypatch.setenv(jit.DISABLE_ENV, "0" if on else "1")


@settings(max_examples=300, deadline=None)
@given(
    arrays,
    st.floats(1e-30, 1e38),
    st.sampled_from(["tensor", "channel"]),
    st.booleans(),
)
def test_max_abs_error_holds_for_every_weight(
    x: np.ndarray, bound: float, granularity: str, as_float64: bool
) -> None:
    """|x - x_hat| <= E for every weight, measured in float64 against the input's own values,
    or a BoundError saying the bound is beyond float32 (never a silent violation)."""
    x_in = x.astype(np.float64) if as_float64 else x
    try:
        u, stats = uniform_quantize_with_error(x_in, UniformSpec("abs", bound, granularity))
    except BoundError as e:
        assert "32 bits" in str(e) or "float32 resolution" in str(e)
        return
    y = uniform_dequantize(u)
    assert y.dtype == np.float32 and y.shape == x.shape
    err = np.abs(x_in.astype(np.float64) - y.astype(np.float64))
    assert float(err.max(initial=0.0)) <= bound
    assert stats.max_abs_error == float(err.max(initial=0.0))


@settings(max_examples=150, deadline=None)
@given(arrays, st.floats(1e-6, 0.5))
def test_max_rel_error_is_relative_to_the_value_range(x: np.ndarray, rel: float) -> None:
    try:
        u = uniform_quantize(x, UniformSpec("rel", rel))
    except BoundError:
        return
    x64 = x.astype(np.float64)
    span = float(x64.max() - x64.min())
    err = np.abs(x64 - uniform_dequantize(u).astype(np.float64))
    assert float(err.max()) <= rel * span or (span == 0 and float(err.max()) == 0.0)


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(np.float32, (6, 40), elements=st.floats(-1e3, 1e3, width=32)),
    st.floats(0.5, 60),
    st.sampled_from(["tensor", "channel"]),
)
def test_min_sqnr_is_reached(x: np.ndarray, db: float, granularity: str) -> None:
    try:
        u, stats = uniform_quantize_with_error(x, UniformSpec("sqnr", db, granularity))
    except BoundError:
        # Steps are at least float32's smallest normal (their reciprocal must be finite): a
        # group whose nonzero values are all near it, i.e. subnormal, cannot be coded finer.
        peaks = np.abs(x).max(axis=1) if granularity == "channel" else np.abs(x).max(keepdims=True)
        assert (peaks[peaks > 0] < np.finfo(np.float32).tiny * 2**12).any()
        return
    y = uniform_dequantize(u)
    assert stats.mse == pytest.approx(error_stats(x, y).mse, rel=1e-12)
    if granularity == "tensor":
        assert stats.sqnr_db >= db
    else:  # every row on its own
        for row, row_hat in zip(x, y, strict=True):
            assert error_stats(row, row_hat).sqnr_db >= db


def test_sqnr_step_is_the_closed_form_on_gaussian_weights() -> None:
    """D ~ step^2 / 12: the closed form lands within the slack, so no search is needed, and
    the step is the largest that reaches the target (a larger one falls short)."""
    x = (0.02 * np.random.default_rng(0).standard_normal((64, 4096))).astype(np.float32)
    u, stats = uniform_quantize_with_error(x, UniformSpec("sqnr", 25.0))
    assert 25.0 <= stats.sqnr_db <= 25.05
    closed = math.sqrt(12 * float(np.mean(x.astype(np.float64) ** 2)) * 10 ** (-2.5))
    assert abs(float(u.step[0, 0]) / closed - 1) < 0.01
    wider = uniform_quantize_with_error(x, UniformSpec("step", float(u.step[0, 0]) * 1.01))[1]
    assert wider.sqnr_db < 25.0


def test_decode_is_code_times_step_exactly() -> None:
    x = np.random.default_rng(1).standard_t(3, (33, 70)).astype(np.float32)
    for target, value in (("abs", 1e-5), ("abs", 1e-3), ("sqnr", 30.0)):
        u = uniform_quantize(x, UniformSpec(target, value, "channel", axis=1))
        ref = u.codes.astype(np.float64) * u.step.astype(np.float64)  # exact: <= 24x24 bits
        np.testing.assert_array_equal(decode_rows(u.codes, u.step), ref.astype(np.float32))
        assert uniform_dequantize(u).shape == x.shape


@pytest.mark.parametrize(("bound", "dtype"), [(0.05, "int8"), (1e-3, "int16"), (1e-6, "int32")])
def test_codes_take_the_narrowest_dtype(bound: float, dtype: str) -> None:
    x = np.linspace(-1, 1, 4096, dtype=np.float32).reshape(64, 64)
    assert uniform_quantize(x, UniformSpec("abs", bound)).codes.dtype == np.dtype(dtype)
    with pytest.raises(BoundError, match="int8"):
        if dtype != "int8":
            uniform_quantize(x, UniformSpec("abs", bound, code_dtype="int8"))
        else:
            raise BoundError("int8")
    wide = uniform_quantize(x, UniformSpec("abs", bound, code_dtype="int32"))
    assert wide.codes.dtype == np.int32  # a layout fixed in advance is honoured


def test_a_bound_beyond_float32_resolution_is_refused() -> None:
    x = np.full((2, 8), 1e30, np.float32)
    x[0, 0] = 3e30
    with pytest.raises(BoundError):
        uniform_quantize(x, UniformSpec("abs", 1e-3))


def test_non_finite_is_refused() -> None:
    x = np.ones((4, 4), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="1 NaN"):
        uniform_quantize(x, UniformSpec("abs", 0.1))


def test_zero_and_extreme_tensors() -> None:
    zero = np.zeros((3, 5), np.float32)
    for target, value in (("sqnr", 40.0), ("abs", 1e-3), ("rel", 0.01)):
        u, stats = uniform_quantize_with_error(zero, UniformSpec(target, value))
        assert not u.codes.any() and stats.mse == 0.0
    big = np.array([[F32.max, -F32.max, 0.0, F32.smallest_subnormal]], np.float32)
    u = uniform_quantize(big, UniformSpec("abs", 1e38))
    assert np.isfinite(uniform_dequantize(u)).all()
    empty = np.zeros((0, 4), np.float32)
    assert uniform_quantize(empty, UniformSpec("sqnr", 20.0)).codes.shape == (1, 0)


@pytest.mark.parametrize(
    "spec",
    [
        UniformSpec("sqnr", 24.0),
        UniformSpec("sqnr", 18.0, "channel"),
        UniformSpec("abs", 2e-3),
        UniformSpec("rel", 1e-3, "channel", axis=1),
        UniformSpec("step", 1e-3),
    ],
    ids=str,
)
def test_compiled_path_matches_numpy(monkeypatch: pytest.MonkeyPatch, spec: UniformSpec) -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_t(3, (37, 300)) * 0.02).astype(np.float32)
    x[0] = 0.0
    _compiled(monkeypatch, False)
    ref, ref_stats = uniform_quantize_with_error(x, spec)
    ref_y = uniform_dequantize(ref)
    _compiled(monkeypatch, True)
    got, got_stats = uniform_quantize_with_error(x, spec)
    assert got.codes.dtype == ref.codes.dtype
    np.testing.assert_array_equal(got.codes, ref.codes)
    np.testing.assert_array_equal(got.step, ref.step)
    np.testing.assert_array_equal(uniform_dequantize(got), ref_y)
    assert got_stats == ref_stats


def test_code_entropy() -> None:
    assert code_entropy(np.zeros(10, np.int8)) == 0.0
    assert code_entropy(np.array([0, 1, 2, 3] * 4, np.int16)) == 2.0
    assert code_entropy(np.array([-(2**30), 2**30], np.int32)) == 1.0
