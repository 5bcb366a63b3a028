"""The peers of benchmarks/frontier.py, and the two measures every point is scored by.

Why one module: the frontier is only fair if every method is scored by the same code. Each peer
is a function ``tensors -> [Point]`` over a data set (a list of named float32 arrays); every one
counts every byte it stores (block scales, headers of its own stream format included) and
decodes with the peer's own decoder, never with ours:

- ``gguf_numpy``: gguf-py's numpy Q4_0/Q4_1/Q5_0/Q8_0 (``gguf.quants.quantize``/``dequantize``);
- ``llama_cpp``: llama.cpp's own C quantizers through ggml-python (``ggml_quantize_chunk``; the
  type's ``to_float`` decodes), K-quants and i-quants. Types that llama.cpp refuses without an
  importance matrix are run with a flat one (all ones) and labelled so;
- ``sz3`` and ``zfp``: SZ3 (``pysz``) and ZFP (``zfpy``) at absolute error bounds, ZFP also at
  fixed rates;
- ``zipnn``: ZipNN's lossless byte-plane coder on float32 and bfloat16 bytes.

Every peer that is not installed yields no point and one note saying how to install it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

# (name, array) pairs: a data set. Arrays are float32, C-contiguous, rows along the last axis.
Tensors = Sequence[tuple[str, np.ndarray]]
GGUF_NUMPY_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q8_0")
LLAMA_CPP_TYPES = ("Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "IQ4_NL", "IQ3_S", "Q3_K", "Q2_K")
# i-quants llama.cpp refuses to make without an importance matrix are only listed (in a note)
IMATRIX_CANDIDATES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS")
KBLOCK = 256  # the K-quant / i-quant super-block


@dataclasses.dataclass(frozen=True)
class Point:
    """One (method, setting) on one data set. ``sqnr_db`` is None for an exact (lossless) decode;
    ``file_bpw`` counts the whole file where the method writes one (qcompress: header and
    bookkeeping too), else equals ``bpw``; speeds are MB/s of the input's own bytes (float32, or
    bfloat16 for a bfloat16 input) on one thread."""

    dataset: str
    method: str
    label: str
    bpw: float
    file_bpw: float
    sqnr_db: float | None
    max_abs_error: float
    encode_mbs: float | None
    decode_mbs: float | None
    bound: float | None = None
    fixed_rate: bool = False
    lossless: bool = False
    note: str = ""


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(sum w^2 / sum (w - w_hat)^2); +inf for an exact decode."""
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def bits_per_weight(nbytes: int, weights: int) -> float:
    """Every stored byte x 8 / weights."""
    return 8 * nbytes / weights


def error_sums(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float]:
    """(sum w^2, sum (w - w_hat)^2, max |w - w_hat|) over (original, decoded) pairs, in float64."""
    signal = noise = worst = 0.0
    for x, xhat in pairs:
        x64 = np.asarray(x, np.float64).ravel()
        d = np.asarray(xhat, np.float64).ravel() - x64
        signal += float(x64 @ x64)
        noise += float(d @ d)
        worst = max(worst, float(np.abs(d).max()) if d.size else 0.0)
    return signal, noise, worst


def weight_count(tensors: Tensors) -> int:
    return sum(x.size for _, x in tensors)


def megabytes_per_second(tensors: Tensors, seconds: float) -> float | None:
    nbytes = sum(x.size * 4 for _, x in tensors)  # float32 input bytes
    return nbytes / seconds / 1e6 if seconds > 0 else None


# A codec: one tensor -> (stored bytes, decode closure). Encoding is timed by ``run_codec``.
Codec = Callable[[np.ndarray], tuple[int, Callable[[], np.ndarray]]]


def run_codec(
    dataset: str, method: str, label: str, tensors: Tensors, codec: Codec, **extra: object
) -> Point:
    """Encode every tensor (timed), decode every tensor (timed), score the whole set."""
    nbytes, decoders, enc = 0, [], 0.0
    for _, x in tensors:
        t0 = time.perf_counter()
        size, decode = codec(x)
        enc += time.perf_counter() - t0
        nbytes += size
        decoders.append(decode)
    pairs, dec = [], 0.0
    for (_, x), decode in zip(tensors, decoders, strict=True):
        t0 = time.perf_counter()
        xhat = decode()
        dec += time.perf_counter() - t0
        pairs.append((x, np.asarray(xhat).reshape(x.shape)))
    signal, noise, worst = error_sums(pairs)
    bpw = bits_per_weight(nbytes, weight_count(tensors))
    return Point(
        dataset,
        method,
        label,
        bpw,
        bpw,
        sqnr_db(signal, noise),
        worst,
        megabytes_per_second(tensors, enc),
        megabytes_per_second(tensors, dec),
        **extra,  # type: ignore[arg-type]
    )


# --- gguf-py (numpy) ---------------------------------------------------------------------------


def gguf_numpy(dataset: str, tensors: Tensors) -> tuple[list[Point], list[str]]:
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize, quantize
    except ImportError:
        return [], ["gguf not installed (pip install -e .[bench]): no gguf-py points"]

    points = []
    for name in GGUF_NUMPY_TYPES:
        qtype = GGMLQuantizationType[name]

        def codec(x: np.ndarray, qtype: object = qtype) -> tuple[int, Callable[[], np.ndarray]]:
            q = quantize(x, qtype)
            return q.nbytes, lambda: dequantize(q, qtype)

        points.append(
            run_codec(dataset, "gguf-py", f"gguf {name}", tensors, codec, fixed_rate=True)
        )
    return points, []


# --- llama.cpp C quantizers (ggml-python) --------------------------------------------------------


def _blocks_of(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` as rows of whole blocks: its own rows where they are, else flattened to rows of one
    super-block (the sample's 64- and 128-wide rows, MiniLM's 384-wide ones), so the quantizer
    sees the same values; llama.cpp itself would switch such a tensor to another type."""
    if x.shape[-1] % block == 0:
        return np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    return np.ascontiguousarray(x.reshape(-1, block))


def llama_cpp(dataset: str, tensors: Tensors) -> tuple[list[Point], list[str]]:
    try:
        import ggml
    except (ImportError, OSError) as exc:
        return [], [
            f"ggml-python not importable ({type(exc).__name__}): no llama.cpp C points; "
            'CMAKE_ARGS="-DGGML_OPENMP=OFF" pip install ggml-python==0.0.45'
        ]
    if any(x.size % KBLOCK for _, x in tensors):
        return [], [f"{dataset}: a tensor is not whole {KBLOCK}-blocks: no llama.cpp points"]
    fptr = ctypes.POINTER(ctypes.c_float)
    points, notes = [], []
    need = [
        t
        for t in IMATRIX_CANDIDATES
        if hasattr(ggml, f"GGML_TYPE_{t}")
        and ggml.ggml_quantize_requires_imatrix(getattr(ggml, f"GGML_TYPE_{t}"))
    ]
    notes.append(f"llama.cpp types that need an importance matrix (not run): {', '.join(need)}")
    for name in LLAMA_CPP_TYPES:
        qtype = getattr(ggml, f"GGML_TYPE_{name}", None)
        if qtype is None:
            notes.append(f"llama.cpp {name}: not in this ggml build")
            continue
        needs_imatrix = bool(ggml.ggml_quantize_requires_imatrix(qtype))
        if needs_imatrix:
            continue
        traits = ggml.ggml_get_type_traits(qtype).contents
        ggml.ggml_quantize_init(qtype)  # its lookup tables: once, outside the timing

        def codec(
            x: np.ndarray, qtype: int = qtype, to_float: Callable = traits.to_float
        ) -> tuple[int, Callable[[], np.ndarray]]:
            rows = _blocks_of(x, KBLOCK)
            nrows, n = rows.shape
            dst = np.empty(ggml.ggml_row_size(qtype, n) * nrows, np.uint8)
            written = ggml.ggml_quantize_chunk(
                qtype,
                rows.ctypes.data_as(fptr),
                dst.ctypes.data_as(ctypes.c_void_p),
                0,
                nrows,
                n,
                None,  # no importance matrix: data-free, as qcompress is by default
            )
            assert written == dst.nbytes, (qtype, written, dst.nbytes)

            def decode() -> np.ndarray:
                out = np.empty(rows.size, np.float32)
                to_float(dst.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(fptr), rows.size)
                return out

            return dst.nbytes, decode

        points.append(
            run_codec(dataset, "llama.cpp", f"llama.cpp {name}", tensors, codec, fixed_rate=True)
        )
    return points, notes


# --- SZ3 and ZFP -----------------------------------------------------------------------------


def sz3(dataset: str, tensors: Tensors, bounds: Sequence[float]) -> tuple[list[Point], list[str]]:
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        return [], ["pysz not installed (pip install -e .[bench]): no SZ3 points"]
    points = []
    for bound in bounds:

        def codec(x: np.ndarray, bound: float = bound) -> tuple[int, Callable[[], np.ndarray]]:
            config = szConfig()
            config.errorBoundMode = szErrorBoundMode.ABS
            config.absErrorBound = bound
            stream, _ = sz.compress(x, config)
            return stream.nbytes, lambda: sz.decompress(stream, np.float32, x.shape)[0]

        points.append(
            run_codec(dataset, "SZ3", f"SZ3 abs {bound:.3g}", tensors, codec, bound=bound)
        )
    return points, []


def zfp(
    dataset: str, tensors: Tensors, bounds: Sequence[float], rates: Sequence[int]
) -> tuple[list[Point], list[str]]:
    try:
        import zfpy
    except ImportError:
        return [], ["zfpy not installed (pip install -e .[bench]): no ZFP points"]
    points = []
    for bound in bounds:

        def codec(x: np.ndarray, bound: float = bound) -> tuple[int, Callable[[], np.ndarray]]:
            stream = zfpy.compress_numpy(x, tolerance=bound)
            return len(stream), lambda: zfpy.decompress_numpy(stream)

        points.append(
            run_codec(dataset, "ZFP", f"ZFP abs {bound:.3g}", tensors, codec, bound=bound)
        )
    for rate in rates:

        def codec(x: np.ndarray, rate: int = rate) -> tuple[int, Callable[[], np.ndarray]]:
            stream = zfpy.compress_numpy(x, rate=rate)
            return len(stream), lambda: zfpy.decompress_numpy(stream)

        points.append(
            run_codec(dataset, "ZFP", f"ZFP rate {rate}", tensors, codec, fixed_rate=True)
        )
    return points, []


# --- lossless ----------------------------------------------------------------------------------


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even, as torch casts."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def zipnn(dataset: str, tensors: Tensors) -> tuple[list[Point], list[str]]:
    """ZipNN on each tensor's float32 bytes and on its bfloat16 bytes; bits per weight over the
    stored streams, exactness checked byte for byte, speeds per MB of the bytes it is given
    (float32: 4 per weight, bfloat16: 2)."""
    try:
        import zipnn as zn
    except ImportError:
        return [], ["zipnn not installed (pip install -e .[bench]): no ZipNN points"]
    points = []
    for dtype in ("float32", "bfloat16"):
        coder = zn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
        raws = [
            (x.tobytes() if dtype == "float32" else to_bfloat16_bits(x).tobytes())
            for _, x in tensors
        ]
        given = [bytes(bytearray(r)) for r in raws]  # zipnn 0.5.4 overwrites its input buffer
        t0 = time.perf_counter()
        streams = [coder.compress(raw) for raw in given]
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = [bytes(coder.decompress(s)) for s in streams]
        dec = time.perf_counter() - t0
        exact = all(a == b for a, b in zip(raws, back, strict=True))
        raw_bytes = sum(len(r) for r in raws)
        stored = sum(len(s) for s in streams)
        bpw = bits_per_weight(stored, weight_count(tensors))
        points.append(
            Point(
                dataset,
                "ZipNN",
                f"ZipNN lossless {dtype}",
                bpw,
                bpw,
                None if exact else -math.inf,
                0.0,
                raw_bytes / enc / 1e6,
                raw_bytes / dec / 1e6,
                lossless=True,
                note=f"{100 * stored / raw_bytes:.1f}% of the {dtype} bytes"
                + ("" if exact else "; NOT EXACT"),
            )
        )
    return points, []


def cpu_model() -> str:
    """The CPU model name as /proc/cpuinfo gives it, printed beside the benchmarks' numbers."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu
