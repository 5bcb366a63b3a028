"""The entropy stage (engine/entropy.py): exact round trips, the size bound vs the order-0
entropy, the same bytes on both paths and for any thread count, and corrupt streams refused."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompress.engine import entropy
from qcompress.engine.entropy import CodedInfo, CorruptStreamError, coded_nbytes, decode, encode

DTYPES = entropy.DTYPES


def roundtrip(x: np.ndarray) -> np.ndarray:
    coded = encode(x)
    assert coded is not None
    assert coded.stream.dtype == np.uint8 and coded.stream.ndim == 1
    assert coded.info == CodedInfo(entropy.CODER, x.dtype.name, x.size)
    return decode(coded.stream, coded.info)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    n=st.integers(1, 3000),
    spread=st.floats(0.01, 2e9),
    centre=st.floats(-1.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_decode_encode_is_identity(dtype: str, n: int, spread: float, centre: float, seed: int):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    mid = (info.max + info.min) / 2 + centre * (info.max - info.min) / 2
    x = np.clip(np.round(mid + spread * rng.standard_t(3, n)), info.min, info.max).astype(dtype)
    coded = encode(x)
    if coded is None:  # nothing to save: the stream would be no smaller than the symbols
        assert coded_nbytes(x) == x.nbytes
        return
    assert coded.stream.size < x.nbytes
    assert coded_nbytes(x) == coded.stream.size
    np.testing.assert_array_equal(decode(coded.stream, coded.info), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extremes_of_each_dtype_round_trip(dtype: str):
    info = np.iinfo(dtype)
    x = np.zeros(5000, dtype=dtype)
    x[::97] = info.max
    x[::101] = info.min
    x[3] = info.min + 1
    np.testing.assert_array_equal(roundtrip(x), x)


def test_a_single_value_costs_only_the_tables():
    x = np.full(100_000, -7, dtype=np.int16)
    coded = encode(x)
    assert coded is not None and coded.stream.size < 200
    np.testing.assert_array_equal(decode(coded.stream, coded.info), x)


def test_incompressible_symbols_are_not_coded():
    x = np.random.default_rng(0).integers(0, 256, 50_000).astype(np.uint8)
    assert encode(x) is None
    assert coded_nbytes(x) == x.nbytes
    assert encode(np.zeros(0, dtype=np.int8)) is None


def gaussian_codes(n: int, step: float, dtype: str, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal(n)
    return np.round(w / step).astype(dtype)


@pytest.mark.parametrize(
    ("dtype", "step", "heavy"),
    [
        ("int8", 0.25, False),  # ~4 bits, the variable-rate 4-bit case
        ("int8", 1.5, False),  # ~1.5 bits: few symbols, a skewed histogram
        ("int16", 2.0**-10, False),  # ~13 bits: thousands of levels, bucketed
        ("int32", 2.0**-13, False),  # a 2^16-level alphabet (+-5 sigma = 80k levels)
        ("int16", 0.05, True),  # Student-t3: most mass in a few levels, long tails escaped
    ],
)
def test_within_three_hundredths_of_a_bit_of_the_entropy(dtype: str, step: float, heavy: bool):
    # enough symbols that the histogram, not its sampling noise, sets the empirical entropy
    n = 1 << (22 if dtype == "int32" else 19)
    rng = np.random.default_rng(1)
    w = rng.standard_t(3, n) if heavy else rng.standard_normal(n)
    x = np.round(w / step).astype(dtype)
    coded = encode(x)
    assert coded is not None
    bits = coded.stream.size * 8 / n
    assert bits <= entropy.entropy_bits(x) + 0.03
    np.testing.assert_array_equal(decode(coded.stream, coded.info), x)


def test_estimate_is_close_to_the_coded_size():
    x = gaussian_codes(300_000, 0.1, "int16")
    est = entropy.estimated_bits(x)
    assert abs(est - coded_nbytes(x) * 8) < 8 * 64


def test_same_bytes_for_any_thread_count_and_on_both_paths(monkeypatch: pytest.MonkeyPatch):
    x = gaussian_codes(entropy.CHUNK * 2 + 12_345, 0.3, "int8", seed=3)
    one = encode(x, threads=1)
    two = encode(x, threads=2)
    assert one is not None and two is not None
    assert one.stream.tobytes() == two.stream.tobytes()
    np.testing.assert_array_equal(decode(one.stream, one.info, threads=2), x)
    small = x[: 3 * entropy.COMPILE_MIN]  # compiled above COMPILE_MIN, interpreted below
    compiled = encode(small)
    monkeypatch.setenv(entropy.DISABLE_ENV, "1")
    interpreted = encode(small)
    assert compiled is not None and interpreted is not None
    assert compiled.stream.tobytes() == interpreted.stream.tobytes()
    np.testing.assert_array_equal(decode(compiled.stream, compiled.info), small)


def test_pinned_bytes():
    """The stream format is part of the artifact format: a change needs a new CODER name."""
    x = (np.arange(5000) * 7919 % 23 - 11).astype(np.int8)
    x[::50] = 100  # a rarer symbol
    coded = encode(x)
    assert coded is not None
    digest = hashlib.sha256(coded.stream.tobytes()).hexdigest()[:16]
    assert digest == PINNED, digest


PINNED = "970bb86beaf4dea5"


def corrupt_cases(stream: np.ndarray) -> list[np.ndarray]:
    flipped = stream.copy()
    flipped[-5] ^= 0x10
    header = stream.copy()
    header[8] ^= 1  # the count
    return [stream[:-2], stream[:30], flipped, header, np.zeros(0, np.uint8)]


def test_corrupt_streams_raise_not_crash():
    x = gaussian_codes(200_000, 0.3, "int8")
    coded = encode(x)
    assert coded is not None
    for bad in corrupt_cases(coded.stream):
        with pytest.raises(CorruptStreamError):
            decode(bad, coded.info)
    with pytest.raises(CorruptStreamError):
        decode(coded.stream, CodedInfo("zstd", "int8", x.size))
    with pytest.raises(CorruptStreamError):
        decode(coded.stream, CodedInfo(entropy.CODER, "int8", x.size + 1))


def test_other_dtypes_are_refused():
    with pytest.raises(ValueError, match="entropy stage codes"):
        encode(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="entropy stage codes"):
        encode(np.zeros(10, dtype=np.int64))
