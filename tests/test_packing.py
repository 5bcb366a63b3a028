"""Bit packing is part of the artifact format: exact round trips and pinned bytes per width."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from qcompress import api
from qcompress.artifact.reader import Artifact
from qcompress.config import QuantizeOptions
from qcompress.engine import (
    QuantSpec,
    code_range,
    dequantize,
    pack_codes,
    packed_nbytes,
    quantize,
    unpack_codes,
)
from qcompress.engine.packing import CHUNK_CODES, packing_for
from qcompress.engine.spec import SCHEMES, SUPER_BLOCK

WIDTHS = range(2, 9)

# Unsigned codes (i * 5 + 1) mod 2^b for i in 0..10: 11 codes, so the last byte is ragged.
GOLDEN_UNSIGNED = {
    2: "393939",
    3: "f1509df100",
    4: "610ba54fe903",
    5: "c12c58f527c94d",
    6: "81b14095f691a93b03",
    7: "01c30252d17c4829d70c",
    8: "01060b10151a1f24292e33",
}
# Signed codes [-hi, -1, 0, 1, hi], stored offset by 2^(b-1).
GOLDEN_SIGNED = {
    2: "e503",
    3: "197b",
    4: "71980f",
    5: "e1c1f801",
    6: "c107863f",
    7: "811f30f807",
    8: "017f8081ff",
}


def reference_pack(codes: list[int], bits: int) -> bytes:
    """The documented bit order, spelled with a Python integer: code i at bits [i*b, (i+1)*b)."""
    value = sum(c << (i * bits) for i, c in enumerate(codes))
    return value.to_bytes(packed_nbytes(len(codes), bits), "little")


@pytest.mark.parametrize("bits", WIDTHS)
def test_golden_bytes(bits: int) -> None:
    unsigned = np.array([(i * 5 + 1) % (1 << bits) for i in range(11)], np.uint8)
    assert pack_codes(unsigned, bits).tobytes().hex() == GOLDEN_UNSIGNED[bits]
    hi = code_range(bits, "symmetric")[1]
    signed = np.array([-hi, -1, 0, 1, hi], np.int8)
    assert pack_codes(signed, bits).tobytes().hex() == GOLDEN_SIGNED[bits]
    assert (unpack_codes(pack_codes(signed, bits), bits, 5, signed=True) == signed).all()


def test_four_and_two_bit_layout_in_words() -> None:
    assert pack_codes(np.array([0x1, 0xA], np.uint8), 4).tolist() == [0xA1]
    assert pack_codes(np.array([1, 2, 3, 0], np.uint8), 2).tolist() == [0b00111001]


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(WIDTHS), st.booleans(), st.integers(0, 70))
def test_round_trip_matches_reference(data, bits: int, signed: bool, count: int) -> None:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    values = data.draw(st.lists(st.integers(lo, hi), min_size=count, max_size=count))
    codes = np.array(values, np.int8 if signed else np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == packed_nbytes(count, bits)
    offset = 1 << (bits - 1) if signed else 0
    assert packed.tobytes() == reference_pack([v + offset for v in values], bits)
    out = unpack_codes(packed, bits, count, signed)
    assert out.dtype == codes.dtype
    assert np.array_equal(out, codes)


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_across_chunks(bits: int, signed: bool) -> None:
    rng = np.random.default_rng(bits)
    lo, hi = code_range(bits, "symmetric" if signed else "affine")
    codes = rng.integers(lo, hi + 1, size=2 * CHUNK_CODES + 13).astype(
        np.int8 if signed else np.uint8
    )
    packed = pack_codes(codes.reshape(-1, 1), bits)  # any shape, read in C order
    assert packed.size == packed_nbytes(codes.size, bits)
    assert np.array_equal(unpack_codes(packed, bits, codes.size, signed), codes)


def test_packed_nbytes() -> None:
    assert [packed_nbytes(n, 3) for n in (0, 1, 2, 3, 8, 9)] == [0, 1, 1, 2, 3, 4]
    assert packed_nbytes(7, 8) == 7 and packed_nbytes(3, 4) == 2


def test_code_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not fit in 4 bits"):
        pack_codes(np.array([16], np.uint8), 4)
    with pytest.raises(ValueError, match="does not fit in 4 bits"):
        pack_codes(np.array([-9], np.int8), 4)
    with pytest.raises(ValueError, match="int8 or uint8"):
        pack_codes(np.array([1], np.int32), 4)


def test_short_stream_and_bad_width_are_rejected() -> None:
    with pytest.raises(ValueError, match="need 2 bytes"):
        unpack_codes(np.zeros(1, np.uint8), 3, 5, signed=False)
    with pytest.raises(ValueError, match="bits must be one of"):
        pack_codes(np.zeros(3, np.uint8), 1)


def test_longer_stream_is_read_up_to_count() -> None:
    packed = np.concatenate([pack_codes(np.array([3, 1, 2], np.uint8), 2), [0xFF]]).astype(np.uint8)
    assert unpack_codes(packed, 2, 3, signed=False).tolist() == [3, 1, 2]


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("count", [0, 1, 3, 7, 8, 9, 1001, 70_001])
def test_aligned_widths_match_the_word_packer(bits: int, count: int) -> None:
    """2 and 4 bits take a strided path; it must give the general word packer's bytes."""
    from qcompress.engine.packing import _pack_aligned, _pack_words

    u = np.random.default_rng(count).integers(0, 1 << bits, count, dtype=np.uint8)
    words = _pack_words(u, bits)[: packed_nbytes(count, bits)] if count else np.zeros(0, np.uint8)
    assert np.array_equal(_pack_aligned(u, bits), words)


# --- base 3: 2-bit symmetric codes {-1, 0, 1}, five per byte -----------------------------------


def reference_base3(codes: list[int]) -> bytes:
    """The documented layout: byte j = sum (code[5j + i] + 1) * 3^i, missing codes are 0."""
    padded = codes + [0] * (-len(codes) % 5)
    return bytes(
        sum((c + 1) * 3**i for i, c in enumerate(padded[j : j + 5]))
        for j in range(0, len(padded), 5)
    )


def test_packing_for() -> None:
    assert packing_for(2, "symmetric") == "base3"
    assert packing_for(2, "affine") == "bitstream-le"
    assert all(packing_for(b, s) == "bitstream-le" for b in (3, 4, 5, 6, 7) for s in SCHEMES)


def test_base3_golden_bytes() -> None:
    codes = np.array([-1, 0, 1, 1, -1, 1, 1, 1, 1, 1, 0], np.int8)
    # 0 + 1*3 + 2*9 + 2*27 + 0*81 = 75; all 2s = 242; one code 0 padded with 0s = 121
    assert pack_codes(codes, 2, "base3").tolist() == [75, 242, 121]
    assert pack_codes(np.array([1], np.int8), 2, "base3").tolist() == [122]
    assert pack_codes(np.array([-1, -1, -1, -1, -1], np.int8), 2, "base3").tolist() == [0]
    packed = pack_codes(codes, 2, "base3")
    assert unpack_codes(packed, 2, codes.size, True, "base3").tolist() == codes.tolist()


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(0, 70))
def test_base3_round_trip_matches_reference(data, count: int) -> None:
    values = data.draw(st.lists(st.integers(-1, 1), min_size=count, max_size=count))
    codes = np.array(values, np.int8)
    packed = pack_codes(codes, 2, "base3")
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == packed_nbytes(count, 2, "base3") == -(-count // 5)
    assert packed.tobytes() == reference_base3(values)
    out = unpack_codes(packed, 2, count, True, "base3")
    assert out.dtype == np.int8 and np.array_equal(out, codes)


@pytest.mark.parametrize("count", [0, 1, 4, 5, 6, 9, 10, 2 * CHUNK_CODES + 13])
def test_base3_round_trip_ragged(count: int) -> None:
    codes = np.random.default_rng(count).integers(-1, 2, count).astype(np.int8)
    packed = pack_codes(codes.reshape(-1, 1), 2, "base3")  # any shape, read in C order
    assert packed.size == -(-count // 5) and (packed <= 242).all()
    assert np.array_equal(unpack_codes(packed, 2, count, True, "base3"), codes)


def test_base3_rejects_what_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        pack_codes(np.array([-2], np.int8), 2, "base3")
    with pytest.raises(ValueError, match="signed"):
        pack_codes(np.array([1], np.uint8), 2, "base3")
    with pytest.raises(ValueError, match="2-bit"):
        packed_nbytes(5, 3, "base3")
    with pytest.raises(ValueError, match="packing must be one of"):
        pack_codes(np.zeros(3, np.int8), 2, "base4")
    with pytest.raises(ValueError, match="need 2 bytes"):
        unpack_codes(np.zeros(1, np.uint8), 2, 6, True, "base3")
    with pytest.raises(ValueError, match="exceeds 242"):
        unpack_codes(np.array([243], np.uint8), 2, 5, True, "base3")
    with pytest.raises(ValueError, match="signed"):
        unpack_codes(np.array([0], np.uint8), 2, 5, False, "base3")


def test_base3_artifact_bytes_and_api_round_trip(tmp_path: Path) -> None:
    """2-bit symmetric: the recipe says base3, codes take ceil(count / 5) bytes, the scales their
    6-bit stream and super-scales, and the artifact rebuilds exactly what the engine computed."""
    rng = np.random.default_rng(3)
    x = {"a": rng.standard_normal((37, 101)).astype(np.float32), "b": rng.standard_t(3, (64, 256))}
    x["b"] = x["b"].astype(np.float32)
    src = tmp_path / "m.safetensors"
    save_file(x, str(src))
    opts = QuantizeOptions(
        bits=2,
        scheme="symmetric",
        granularity="group",
        group_size=128,
        scale_bits=6,
        range_method="mse",
        min_elements=0,
        entropy="none",  # the plain layout, whose sizes the recipe fixes
    )
    result = api.quantize_file(src, opts, output=tmp_path / "m.qc.safetensors")
    spec = QuantSpec(2, "symmetric", "group", 0, 128, "mse", "float32", 6)
    total = 0
    with Artifact(result.artifact) as art:
        infos = {i.name: i for i in art._reader.tensor_infos()}
        for entry in art.entries:
            s = entry.quantized
            assert s is not None and s.packing == "base3"
            count, groups = s.rows * s.cols, s.rows * s.n_groups
            expected = {
                s.codes: -(-count // 5),
                s.scale: -(-groups * 6 // 8),
                s.super: 4 * -(-groups // SUPER_BLOCK),
            }
            assert {n: infos[n].nbytes for n in expected} == expected
            assert art.stored_bytes(entry) == sum(expected.values())
            total += sum(expected.values())
            direct = quantize(x[entry.name], spec)
            stored = art.quantized(entry)
            assert np.array_equal(stored.codes, direct.codes)
            assert np.array_equal(dequantize(stored), dequantize(direct))
    n = 37 * 101 + 64 * 256
    assert result.report["totals"]["bits_per_weight"] == pytest.approx(8 * total / n, rel=1e-12)
    assert result.report["totals"]["bits_per_weight"] <= 1.6875
    out = api.dequantize_file(result.artifact, tmp_path / "back.safetensors").output
    with safe_open(str(out), "numpy") as f:
        for name, array in x.items():
            assert np.array_equal(f.get_tensor(name), dequantize(quantize(array, spec)))
