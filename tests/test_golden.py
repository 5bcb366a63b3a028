"""Golden hashes: the SHA-256 of whole artifacts, pinned.

DESIGN promises that the same input and options give a byte-identical artifact on any CPU, with
or without the compiled kernels, with a cold or a warm cache, for any ``--jobs``. Each setting
below is run on the numpy path (``QCOMPRESS_NO_NUMBA=1``) and on the compiled one (for the
generated tensors, which are big enough to take it, with ``--jobs 1`` and ``--jobs 2``); every
run must give the pinned hash. A change to these bytes is a format change: make it deliberately,
say so in the commit, and regenerate the values with

    PYTHONPATH=. python -m tests.test_golden --print

(it prints the dict below; paste it over ``GOLDEN``).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qcompress.cli import cli
from qcompress.engine import jit
from qcompress.engine.constants import SUM_LANES
from qcompress.engine.elementwise import combine_lanes, lane_sums

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "digits_mlp.npz"
SETTINGS: dict[str, tuple[str, ...]] = {
    "bits8": ("--bits", "8"),
    "bits4": ("--bits", "4"),
    "bits2": ("--bits", "2"),
    "bpw3": ("--target-bpw", "3"),
    "bits4-plain": ("--bits", "4", "--entropy", "none"),  # the bytes from before the stage
    "abs": ("--max-abs-error", "0.01"),  # variable-rate codes, a proven bound
    "sqnr": ("--min-sqnr", "25"),  # variable-rate codes, a step from the power
}

# model/setting -> SHA-256 of the artifact. Regenerate: see the module docstring.
GOLDEN: dict[str, str] = {
    "sample/bits8": "573e2c883005fea4ee2a3634115e99a5d397000b4c565cf3d7c690eba620d56c",
    "sample/bits4": "2363f0e996bee5a7816ddbf7f2eeb75b0cf8934907994e7c979b3fffbcb12d1c",
    "sample/bits2": "6e29ddc98bc9fe500eb5878671dfd3456dab00b729de27a782120d32b9d8842a",
    "sample/bpw3": "306dfd1d606bc491f8fd52e8ac57dcb4c7c7c056bb719462cb79b7cd45de3077",
    "sample/bits4-plain": "5108ca0a190473eb3b074d742dcacaa8b43bd592bd651f99e2c559cf4456886b",
    "sample/abs": "30135c9ebcf4416ffc7fcf453a6d066b240603f8ab7fd6f491ec8323d1cc5c32",
    "sample/sqnr": "3f5ae5eb19193d3b749b19f4c80157d3efb7b112441ccf5f5768b1e5e9442d88",
    "generated/bits8": "0cf425cc1292a9f12d846f533c3e93b41af8df6ec088ab488fa70d7f62ea49a3",
    "generated/bits4": "b9b7be24ea95b2fa989279fa937b1c1ccb406fcad715f3d336d1c46049ccfaf5",
    "generated/bits2": "819fc654174f3fed063975ed0b4fcc14edcff109c137fbbb21803c8d4febc4eb",
    "generated/bpw3": "4f38dab1ed00025cfede197085b7aeb6b7347bc586189abf5a5041f93c56d7ca",
    "generated/bits4-plain": "0345a69bde7b422197cb4ce2d0e89776f3e07cc7b2cde3212fddf7ac26d9970c",
    "generated/abs": "4b6f57b78aff61b2d994b07fe7896d1e9b333ccb83f65d78138c03e1b86042a5",
    "generated/sqnr": "467dfc30b155d77994fdbe16dbb23d2331619bebd6195979352ec3f4f452ca3b",
}


def make_generated(path: Path) -> Path:
    """Seeded tensors just big enough for the compiled path (``jit.MIN_ELEMENTS`` = 2^18): a
    Gaussian 520x512, a heavy-tailed 600x700 (ragged last groups of 32) and a bias."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file(
        {
            "dense.weight": rng.standard_normal((520, 512), dtype=np.float32),
            "heavy.weight": rng.standard_t(2.5, size=(600, 700)).astype(np.float32),
            "heavy.bias": rng.standard_normal(600, dtype=np.float32),
        },
        str(path),
    )
    return path


def artifact_hash(model: Path, out: Path, setting: str, jobs: int, numba: bool) -> str:
    """Quantize ``model`` with ``setting`` in-process and return the artifact's SHA-256."""
    mp = pytest.MonkeyPatch()
    mp.setenv(jit.DISABLE_ENV, "0" if numba else "1")
    try:
        args = ["quantize", str(model), "-o", str(out), "--force", "-q", "--jobs", str(jobs)]
        result = CliRunner().invoke(cli, [*args, *SETTINGS[setting]], catch_exceptions=False)
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _models(tmp: Path) -> dict[str, Path]:
    return {"sample": SAMPLE, "generated": make_generated(tmp / "generated.safetensors")}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _models(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_sample_model_artifact_bytes_are_pinned(
    models: dict[str, Path], tmp_path: Path, setting: str
) -> None:
    """The sample model's tensors are below MIN_ELEMENTS: both runs take the numpy path, and
    the numba flag must not change anything either."""
    out = tmp_path / "a.qc.safetensors"
    got = {artifact_hash(models["sample"], out, setting, 1, numba) for numba in (False, True)}
    assert got == {GOLDEN[f"sample/{setting}"]}


# A budget prices some fifty candidates through the entropy coder; interpreted (no numba) that
# takes minutes on the generated tensors, so that run is in the `slow` group (`make test-extra`).
SLOW_ON_NUMPY = ("bpw3",)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_generated_artifact_bytes_are_pinned_on_both_paths_and_any_jobs(
    models: dict[str, Path], tmp_path: Path, setting: str
) -> None:
    if jit._kernels() is None:
        pytest.skip("numba is not installed")
    out = tmp_path / "g.qc.safetensors"
    runs = {
        "compiled --jobs 1": artifact_hash(models["generated"], out, setting, 1, True),
        "compiled --jobs 2": artifact_hash(models["generated"], out, setting, 2, True),
    }
    if setting not in SLOW_ON_NUMPY:
        runs["numpy"] = artifact_hash(models["generated"], out, setting, 1, False)
    assert runs == dict.fromkeys(runs, GOLDEN[f"generated/{setting}"])


@pytest.mark.slow
@pytest.mark.parametrize("setting", SLOW_ON_NUMPY)
def test_generated_artifact_bytes_are_pinned_on_the_numpy_path_under_a_budget(
    models: dict[str, Path], tmp_path: Path, setting: str
) -> None:
    out = tmp_path / "g.qc.safetensors"
    got = artifact_hash(models["generated"], out, setting, 1, False)
    assert got == GOLDEN[f"generated/{setting}"]


def test_numpy_lane_sums_follow_the_documented_order() -> None:
    """np.add.reduce over a non-last axis must add rows in order (what ``lane_sums`` relies
    on): compare with the order spelled out in Python floats, on terms where order matters."""
    rng = np.random.default_rng(3)
    n = 16 * 37 + 5
    terms = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)).astype(np.float32)
    lanes = [np.float32(0)] * SUM_LANES
    for j, t in enumerate(terms):
        lanes[j % SUM_LANES] = np.float32(lanes[j % SUM_LANES] + t)
    total = lanes[0]
    for v in lanes[1:]:
        total = np.float32(total + v)
    assert lane_sums(terms).tolist() == [float(v) for v in lanes]
    assert combine_lanes(lane_sums(terms)) == total
    # Carried over pieces of whole lanes, the order is that of one pass.
    carry = lane_sums(terms[: 16 * 20])
    assert lane_sums(terms[16 * 20 :], carry).tolist() == lane_sums(terms).tolist()


@pytest.mark.slow  # compiles every kernel afresh to read its machine code: half a minute
def test_compiled_kernels_contract_no_multiply_add(tmp_path: Path) -> None:
    """Every kernel is compiled without fast-math, so LLVM may not fuse a multiply and an add
    (an FMA rounds once where numpy rounds twice). Checked on the machine code of every kernel,
    compiled cold in a subprocess (numba shows no machine code for cached kernels)."""
    if jit._kernels() is None:
        pytest.skip("numba is not installed")
    import os
    import subprocess

    script = (
        "import re, numpy as np\n"
        "from qcompress.engine import jit, QuantSpec, quantize_with_error\n"
        "jit.MIN_ELEMENTS = 0\n"
        "x = np.random.default_rng(1).standard_normal((64, 96), dtype=np.float32)\n"
        "for s in (QuantSpec(8), QuantSpec(4, 'affine', 'group', 0, 32, 'mse', 'float32', 6),\n"
        "          QuantSpec(2, 'symmetric', 'group', 0, 32, 'mse', 'float32', 6)):\n"
        "    quantize_with_error(x, s)\n"
        "from qcompress.engine import numba_kernels as compiled\n"
        "n = 0\n"
        "for name, k in vars(compiled).items():\n"
        "    if hasattr(k, 'inspect_asm') and k.signatures:\n"
        "        for asm in k.inspect_asm().values():\n"
        "            n += 1\n"
        "            assert 'ret' in asm, name\n"
        "            assert not re.search(r'\\bv?f(n)?m(add|sub)', asm), name\n"
        "print(n)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cold")}
    env.pop(jit.DISABLE_ENV, None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 10  # every kernel the three paths use was inspected


def _print_golden() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        models = _models(Path(tmp))
        print("GOLDEN: dict[str, str] = {")
        for name, model in models.items():
            for setting in SETTINGS:
                out = Path(tmp) / "a.qc.safetensors"
                h = artifact_hash(model, out, setting, 1, False)
                print(f'    "{name}/{setting}": "{h}",')
        print("}")


if __name__ == "__main__" and "--print" in sys.argv:
    _print_golden()
