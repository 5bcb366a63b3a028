"""Mutation fuzzing of the sample files: bit flips, truncations and splices of every format (and of
an artifact), read by every reader and by ``inspect``. Each case must end in success or a
QCompressError whose one-line message names the file: never another exception, a crash or a hang.

The seeded run below is part of CI (a few hundred cases per format, a few seconds). ``make fuzz``
runs the hypothesis test at the bottom with ``QCOMPRESS_FUZZ_EXAMPLES`` examples per format,
where hypothesis also shrinks any failure to a minimal mutation.

HDF5 cases go through the same code as users: the HDF5 structure is parsed in a probe child
first (``qcompress/formats/h5/probe.py``), so a mutation that crashes or hangs the HDF5 C library
becomes a FormatError. The probe timeout is lowered here so a hang costs a second, not thirty.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompress import api
from qcompress.errors import QCompressError
from qcompress.formats import open_weights
from qcompress.formats.npz import NpzReader
from qcompress.formats.safetensors import SafetensorsReader

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SOURCES = {
    "npz": SAMPLES / "digits_mlp.npz",
    "h5": SAMPLES / "digits_mlp.h5",
    "safetensors": SAMPLES / "digits_mlp.safetensors",
    "bf16-safetensors": SAMPLES / "digits_mlp.bf16.safetensors",
}
CASES_PER_FORMAT = {
    "npz": 300,
    "h5": 150,
    "safetensors": 300,
    "bf16-safetensors": 100,
    "artifact": 300,
}
HEAD = 4096  # headers, zip local headers, the HDF5 superblock and root group live near the ends


@pytest.fixture(autouse=True)
def _short_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPRESS_H5_PROBE_TIMEOUT", "1")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The bytes of each sample file, plus an artifact quantized from the npz sample."""
    data = {fmt: path.read_bytes() for fmt, path in SOURCES.items()}
    art = tmp_path_factory.mktemp("fuzz-artifact") / "digits.qc.safetensors"
    api.quantize_file(SOURCES["npz"], api.QuantizeOptions(bits=4), output=art)
    data["artifact"] = art.read_bytes()
    return data


def _position(rng: random.Random, size: int) -> int:
    """Half the mutations hit the first 4 KB, a quarter the last 8 KB (zip directory, HDF5
    heaps, checksum table), the rest anywhere."""
    r = rng.random()
    if r < 0.5:
        return rng.randrange(min(HEAD, size))
    if r < 0.75:
        return rng.randrange(max(0, size - 2 * HEAD), size)
    return rng.randrange(size)


def mutate(rng: random.Random, original: bytes) -> tuple[str, bytes]:
    """One seeded mutation: flip 1-4 bits, truncate, or splice a run of bytes from elsewhere
    in the file (so lengths and offsets are plausible values, not noise)."""
    data = bytearray(original)
    kind = rng.choice(["flip", "flip", "truncate", "splice", "splice-random"])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            data[_position(rng, len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[_position(rng, len(data)) :]
    elif kind == "splice":
        at, src, n = _position(rng, len(data)), _position(rng, len(data)), rng.randint(1, 64)
        data[at : at + n] = original[src : src + n]
    else:
        at, n = _position(rng, len(data)), rng.randint(1, 16)
        data[at : at + n] = rng.randbytes(n)
    return kind, bytes(data)


def _read_all(reader_factory: Callable[[Path], object], path: Path) -> None:
    with reader_factory(path) as reader:  # type: ignore[attr-defined]
        for info in reader.tensor_infos():
            np.asarray(reader.read(info.name)).tobytes()
        reader.metadata()


def exercise(path: Path, artifact: bool = False) -> list[str]:
    """Every way in: detection plus the detected reader, the npz and safetensors readers forced
    on whatever the bytes are, ``inspect``, and for artifacts ``verify``. Returns the outcome
    of each ("ok" or the error class); any exception that is not a QCompressError propagates."""
    attempts: list[Callable[[], object]] = [
        lambda: _read_all(open_weights, path),
        lambda: _read_all(NpzReader, path),
        lambda: _read_all(SafetensorsReader, path),
        lambda: api.inspect(path),
    ]
    if artifact:
        attempts.append(lambda: api.verify(path))
    outcomes = []
    for attempt in attempts:
        try:
            attempt()
            outcomes.append("ok")
        except QCompressError as exc:
            message = str(exc)
            assert path.name in message, message
            assert "\n" not in message, message
            outcomes.append(type(exc).__name__)
    return outcomes


@pytest.mark.parametrize("fmt", list(CASES_PER_FORMAT))
def test_seeded_mutations_end_in_success_or_a_clean_error(
    tmp_path: Path, sources: dict[str, bytes], fmt: str
) -> None:
    rng = random.Random(f"qcompress-fuzz-{fmt}")
    path = tmp_path / f"fuzz-{fmt}.bin"
    refused = 0
    for i in range(CASES_PER_FORMAT[fmt]):
        kind, data = mutate(rng, sources[fmt])
        path.write_bytes(data)
        try:
            outcomes = exercise(path, artifact=fmt == "artifact")
        except Exception as exc:  # report the case so it can be replayed
            raise AssertionError(f"{fmt} case {i} ({kind}): {type(exc).__name__}: {exc}") from exc
        refused += outcomes[0] != "ok"
    # The mutations must reach the parsers, not only the tensor data.
    assert refused >= CASES_PER_FORMAT[fmt] // 5, refused


_MUTATION = st.tuples(
    st.sampled_from(["flip", "truncate", "splice", "overwrite"]),
    st.integers(0, 1 << 30),
    st.integers(0, 1 << 30),
    st.binary(min_size=1, max_size=16),
)


def apply(original: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    data = bytearray(original)
    for kind, a, b, payload in mutations:
        if not data:
            break
        at = a % len(data)
        if kind == "flip":
            data[at] ^= 1 << (b % 8)
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            src = b % len(original)
            data[at : at + len(payload)] = original[src : src + len(payload)]
        else:
            data[at : at + len(payload)] = payload
    return bytes(data)


FUZZ_EXAMPLES = int(os.environ.get("QCOMPRESS_FUZZ_EXAMPLES", "10"))


@pytest.mark.parametrize("fmt", list(CASES_PER_FORMAT))
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=6))
def test_hypothesis_mutations(
    tmp_path: Path,
    sources: dict[str, bytes],
    fmt: str,
    mutations: list[tuple[str, int, int, bytes]],
) -> None:
    """``make fuzz`` runs this with many examples; CI runs a few so it keeps working."""
    path = tmp_path / f"hyp-{fmt}.bin"
    path.write_bytes(apply(sources[fmt], mutations))
    exercise(path, artifact=fmt == "artifact")
