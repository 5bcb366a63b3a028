"""The bundled digits MLP: every format holds the same working model.

Why: the samples are the end-to-end check that quantization kept a real model usable, so they
must themselves be correct, small enough to commit, and agree with each other across formats.
Needs only the package's runtime dependencies (no scikit-learn).
"""

from __future__ import annotations

from types import ModuleType

import h5py
import numpy as np
import pytest
from samples import SAMPLES

FLOAT32_MODELS = ("digits_mlp.npz", "digits_mlp.safetensors", "digits_mlp.h5")
BF16_MODEL = "digits_mlp.bf16.safetensors"
MODELS = (*FLOAT32_MODELS, BF16_MODEL)
MAX_BYTES = 1_000_000
MIN_ACCURACY = 0.95


@pytest.mark.parametrize("name", [*MODELS, "digits_test.npz"])
def test_sample_file_exists_and_is_small(name: str) -> None:
    path = SAMPLES / name
    assert path.is_file(), f"{name} missing: run `python sample_models/make_samples.py`"
    assert path.stat().st_size < MAX_BYTES


@pytest.mark.parametrize("name", MODELS)
def test_sample_model_classifies_digits(score: ModuleType, name: str) -> None:
    assert score.accuracy(SAMPLES / name) >= MIN_ACCURACY


def test_float32_formats_predict_identically(score: ModuleType) -> None:
    first, *rest = (score.predictions(SAMPLES / name) for name in FLOAT32_MODELS)
    for other in rest:
        np.testing.assert_array_equal(first, other)


def test_bf16_copy_within_one_point(score: ModuleType) -> None:
    assert (
        abs(score.accuracy(SAMPLES / BF16_MODEL) - score.accuracy(SAMPLES / FLOAT32_MODELS[0]))
        <= 0.01
    )


def test_test_split_shapes(score: ModuleType) -> None:
    x, y = score.load_test_split()
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 64
    assert y.dtype == np.int64 and y.shape == (x.shape[0],)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))


def test_npz_classes_is_int64_passthrough_tensor() -> None:
    with np.load(SAMPLES / "digits_mlp.npz", allow_pickle=False) as data:
        classes = data["classes"]
        assert classes.dtype == np.int64
        np.testing.assert_array_equal(classes, np.arange(10))
        assert data["fc1.weight"].shape == (128, 64) and data["fc1.weight"].dtype == np.float32


def test_h5_has_keras2_layout() -> None:
    with h5py.File(SAMPLES / "digits_mlp.h5", "r") as f:
        assert f.attrs["keras_version"] == "2.15.0" and f.attrs["backend"] == "tensorflow"
        mw = f["model_weights"]
        assert [n.decode() for n in mw.attrs["layer_names"]] == ["dense", "dense_1", "dense_2"]
        assert list(mw["dense_1"].attrs["weight_names"]) == [b"dense_1/kernel:0", b"dense_1/bias:0"]
        assert mw["dense/dense/kernel:0"].shape == (64, 128)
        assert mw["dense_2/dense_2/kernel:0"].shape == (128, 10)
