"""quantize and dequantize: a float tensor to integer codes plus per-group grids, and back.

Arithmetic is float32 whatever the input dtype: float16 and bfloat16 widen to it exactly, and for
float64 input the float32 rounding of x (relative 6e-8) is far below any quantization step (at
least 1/255 of a group's range), while scales, zero-points and dequantized values are float32 or
narrower anyway. Finite float64 values beyond float32's range are reported as overflowing.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from qcompress.engine import jit, level2, ranges, refine
from qcompress.engine.elementwise import decode, encode
from qcompress.engine.metrics import from_sums, row_error_stats
from qcompress.engine.params import Grid, code_dtype, code_range, grid_for_range, validate_spec
from qcompress.engine.ranges import choose_range, group_minmax
from qcompress.engine.rows import (
    TILE_ELEMENTS,
    from_rows,
    group_len,
    iter_col_tiles,
    iter_row_chunks,
    n_groups,
    tile_view,
    to_rows,
)
from qcompress.engine.spec import ErrorStats, NonFiniteError, QuantizedTensor, QuantSpec


def quantize(x: np.ndarray, spec: QuantSpec) -> QuantizedTensor:
    """Quantize ``x`` (any float dtype, any shape, 0-d and empty included) as ``spec`` says.

    Per (row, group): choose the range to cover (``spec.range_method``), build the grid that
    covers it in ``spec.scale_dtype``, and encode with exactly those stored values. For values
    inside [clip_min, clip_max], |x - dequantize(q)| <= scale / 2.

    Raises NonFiniteError if x holds NaN or Inf, ValueError for a bad spec or a non-float x.
    """
    return _quantize(x, spec, want_stats=False, threads=1)[0]


def quantize_with_error(
    x: np.ndarray, spec: QuantSpec, *, threads: int = 1
) -> tuple[QuantizedTensor, ErrorStats]:
    """``quantize`` plus the error of its reconstruction, ``error_stats(x, dequantize(q))``.

    The sums are taken row by row of the row view, each in the fixed order of
    ``constants.SUM_LANES``: on the compiled path (large float32/16 tensors, see ``jit.use_fast``)
    while each tile's codes are still in cache, so no dequantized copy of the tensor is made; on
    the numpy path by ``metrics.row_error_stats``. Both give the same bits. ``threads`` > 1
    splits a large tensor's rows over that many threads; rows are summed independently and
    combined by ``math.fsum``, so the result is identical for any value.
    """
    q, stats = _quantize(x, spec, want_stats=True, threads=threads)
    if stats is None:
        x = np.asarray(x)
        rows = to_rows(x if x.dtype == np.float64 else _as_float32(x), spec)
        stats = row_error_stats(rows, to_rows(dequantize(q), spec))
    return q, stats


def _quantize(
    x: np.ndarray, spec: QuantSpec, *, want_stats: bool, threads: int
) -> tuple[QuantizedTensor, ErrorStats | None]:
    validate_spec(spec)
    if spec.codebook is not None:
        from qcompress.engine.codebook import quantize_codebook

        return quantize_codebook(x, spec), None
    xf = _as_float32(x)
    rows = to_rows(xf, spec)
    n_rows, cols = rows.shape
    glen = group_len(cols, spec)
    # float64 input is measured against its own values by error_stats, so it stays on numpy.
    compiled = cols > 0 and np.asarray(x).dtype != np.float64 and jit.use_fast(rows.size)
    if compiled and spec.granularity == "group" and glen <= FAST_MINMAX_MAX_GROUP:
        lo = np.empty((n_rows, n_groups(cols, spec)), np.float32)
        hi = np.empty_like(lo)
        finite = jit.kernels()["group_minmax"](rows, glen, lo, hi) == 0
    else:
        lo, hi = group_minmax(rows, spec)
        finite = bool(np.isfinite(lo).all() and np.isfinite(hi).all())
    if not finite:
        raise NonFiniteError(_non_finite_message(x, xf))
    lo += np.float32(0)  # -0.0 + 0.0 = +0.0: a zero bound's sign must not depend on the order
    hi += np.float32(0)  # in which either path's reduction met +0.0 and -0.0

    qlo, qhi = code_range(spec.bits, spec.scheme)
    shape = (n_rows, n_groups(cols, spec))
    two = spec.scale_bits is not None
    param_dtype = np.float32 if two else spec.scale_dtype
    scale = np.zeros(shape, param_dtype)
    zero_point = None if spec.scheme == "symmetric" else np.zeros(shape, param_dtype)
    supers = level2.choose_supers(lo, hi, spec, compiled) if two else None
    sc = np.zeros(shape, np.uint8)
    mc = np.zeros(shape, np.uint8) if two and zero_point is not None else None
    clip_min = np.zeros(shape, np.float32)
    clip_max = np.zeros(shape, np.float32)
    codes = np.empty((n_rows, cols), code_dtype(spec.scheme))
    sums = np.zeros((3, n_rows), np.float64) if compiled and want_stats else None
    search = compiled and spec.range_method == "mse" and two and glen <= FAST_SEARCH_MAX_GROUP
    refine_on = two and refine.applies(spec)

    def chunk(rs: slice) -> None:
        if supers is None:
            grid = grid_for_range(*choose_range(rows[rs], lo[rs], hi[rs], spec), spec)
        else:
            step, smin = supers.rows(rs)
            part = level2.Chunk(rows[rs], glen, lo[rs], hi[rs], step, smin)
            chunk_mc = None if mc is None else mc[rs]
            if refine_on and search:  # the kernels give the codes and parameters of the grids
                grid = _l2_kernel("refine_l2", part, spec, _refine_tuning(), sc[rs], chunk_mc)
            elif refine_on:
                assert chunk_mc is not None
                grid, sc[rs], chunk_mc[...] = refine.refine_affine(part, spec)
            elif search:
                grid = _l2_kernel(
                    "mse_search_l2", part, spec, _search_tuning(spec), sc[rs], chunk_mc
                )
            else:

                def grid_fn(a: np.ndarray, b: np.ndarray) -> Grid:
                    return level2.encode_params(a, b, step, smin, spec)[0]

                bounds = choose_range(rows[rs], lo[rs], hi[rs], spec, grid_fn)
                grid, sc[rs], found_mc = level2.encode_params(*bounds, step, smin, spec)
                if chunk_mc is not None:
                    chunk_mc[...] = found_mc
        scale[rs], clip_min[rs], clip_max[rs] = grid.scale, grid.cover_lo, grid.cover_hi
        if zero_point is not None:
            zero_point[rs] = grid.zero_point
        s32, inv, zp = grid.float32()
        if compiled:
            _encode_compiled(rows[rs], glen, s32, inv, zp, qlo, qhi, codes[rs], sums, rs)
        else:
            for t in iter_col_tiles(cols, glen) if cols else ():
                gs = slice(t.g0, t.g0 + t.k)
                z = None if zp is None else zp[:, gs]
                t_codes = encode(tile_view(rows, rs, t), inv[:, gs], z, qlo, qhi)
                np.copyto(tile_view(codes, rs, t), t_codes, casting="unsafe")
        if _keep_finite(codes[rs], glen, s32, zp, qlo, qhi):
            clamped.append(rs)

    clamped: list[slice] = []  # chunks where codes were kept from decoding to Inf
    target = FAST_CHUNK_ELEMENTS if compiled else TILE_ELEMENTS
    chunks = list(iter_row_chunks(n_rows, cols, target))
    if threads > 1 and compiled and len(chunks) > 1:
        with ThreadPoolExecutor(min(threads, len(chunks)), "qcompress-chunk") as pool:
            list(pool.map(chunk, chunks))  # list(): re-raise any worker's exception here
    else:
        for rs in chunks:
            chunk(rs)
    second = None if supers is None else level2.level2_of(sc, mc, supers)
    q = QuantizedTensor(codes, scale, zero_point, clip_min, clip_max, spec, tuple(xf.shape), second)
    if sums is None or clamped:  # the kernel's sums are of the codes before clamping
        return q, None
    max_abs = float(sums[2].view(np.int64).view(np.float64).max()) if n_rows else 0.0
    return q, from_sums(math.fsum(sums[0]), math.fsum(sums[1]), max_abs, rows.size)


def _keep_finite(
    codes: np.ndarray,
    glen: int,
    s32: np.ndarray,
    zp: np.ndarray | None,
    qlo: int,
    qhi: int,
) -> bool:
    """Clip the codes of any group whose extreme codes decode to ±Inf in float32 (a group with
    values near ±3.4e38, whose grid rounded outwards past float32's range) to the codes that
    decode to finite values, so that no decoded value is Inf; its largest values then decode
    one step short, which the error metrics report. Returns whether any group needed it."""
    zf = np.zeros_like(s32) if zp is None else zp
    with np.errstate(over="ignore", invalid="ignore"):  # decode's own float32 operations
        top = np.subtract(np.float32(qhi), zf, dtype=np.float32) * s32
        bottom = np.subtract(np.float32(qlo), zf, dtype=np.float32) * s32
    bad = ~(np.isfinite(top) & np.isfinite(bottom))
    if not bad.any():
        return False
    levels = np.arange(qlo, qhi + 1, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.isfinite((levels - zf[bad][:, None]) * s32[bad][:, None])
    low = np.full(s32.shape, qlo, np.int64)
    high = np.full(s32.shape, qhi, np.int64)
    any_ok = ok.any(axis=1)
    low[bad] = np.where(any_ok, qlo + ok.argmax(axis=1), 0)
    high[bad] = np.where(any_ok, qhi - ok[:, ::-1].argmax(axis=1), 0)
    cols = codes.shape[1]
    per_col = np.repeat(np.arange(s32.shape[1]), glen)[:cols]  # each column's group
    np.clip(codes, low[:, per_col], high[:, per_col], out=codes, casting="unsafe")
    return True


FAST_CHUNK_ELEMENTS = 1 << 20
"""Rows per chunk on the compiled path (4 MB of float32): the kernels tile internally, so chunks
only need to amortise the per-chunk numpy work on parameters and give threads units of work."""

FAST_MINMAX_MAX_GROUP = 256
"""Groups up to this length get their min/max from a kernel; numpy's reductions win on longer
rows (and per-channel rows), where its SIMD loop runs long enough."""

FAST_SEARCH_MAX_GROUP = 1 << 16
"""The compiled MSE search keeps one group's errors in a buffer: groups up to this length."""


def _encode_compiled(
    rows: np.ndarray,
    glen: int,
    s32: np.ndarray,
    inv: np.ndarray,
    zp: np.ndarray | None,
    qlo: int,
    qhi: int,
    codes: np.ndarray,
    sums: np.ndarray | None,
    rs: slice,
) -> None:
    """Encode a chunk of rows with the fused kernel, filling its rows' error sums if wanted."""
    n = rows.shape[0]
    zp = np.zeros_like(inv) if zp is None else zp  # + 0.0 leaves x * inv unchanged
    if sums is None:
        sse, sig, mab = np.empty(n), np.empty(n), np.empty(n, np.int64)
    else:
        sse, sig, mab = sums[0, rs], sums[1, rs], sums[2, rs].view(np.int64)
    jit.kernels()["encode_stats"](rows, glen, inv, zp, s32, qlo, qhi, codes, sse, sig, mab)


def _l2_kernel(
    name: str,
    c: level2.Chunk,
    spec: QuantSpec,
    tuning: tuple,
    sc: np.ndarray,
    mc: np.ndarray | None,
) -> Grid:
    """A compiled range search under second-level scales over the chunk ``c``: ``mse_search_l2``
    (ranges' MSE search; ``tuning`` its shrinks, stride and whether codes are affine) or
    ``refine_l2`` (refine.refine_affine; its rounds and offsets). Fills the chunk's scale codes
    ``sc`` and (affine) min codes ``mc`` and returns its grid, as ``level2.encode_params`` of
    the chosen ranges would give it. Both kernels take the chunk, then (k, qlo, qhi), then their
    tuning, then (min gain, outputs): one call serves both."""
    assert spec.scale_bits is not None
    qlo, qhi = code_range(spec.bits, spec.scheme)
    s32 = np.empty(c.lo.shape, np.float32)
    z32 = np.empty(c.lo.shape, np.float32)
    jit.kernels()[name](
        c.rows,
        c.glen,
        np.ascontiguousarray(c.lo),
        np.ascontiguousarray(c.hi),
        np.ascontiguousarray(c.step),
        np.ascontiguousarray(c.step if c.smin is None else c.smin),
        float(2**spec.scale_bits - 1),
        qlo,
        qhi,
        *tuning,
        ranges.MSE_MIN_GAIN,
        sc,
        np.empty(c.lo.shape, np.uint8) if mc is None else mc,
        s32,
        z32,
    )
    return level2._grid(s32, z32 if spec.scheme == "affine" else None, spec)


def _search_tuning(spec: QuantSpec) -> tuple:
    """``mse_search_l2``'s tuning, read at call time as the numpy search reads it."""
    shrinks = np.asarray(ranges.mse_shrinks(spec), np.float64)
    return shrinks, ranges.MSE_STRIDE, spec.scheme == "affine"


def _refine_tuning() -> tuple:
    """``refine_l2``'s tuning, read at call time as the numpy path reads it."""
    return refine.ROUNDS, np.asarray(refine.OFFSETS, np.float64)


def dequantize(q: QuantizedTensor) -> np.ndarray:
    """(codes - zero_point) * scale as a C-contiguous float32 array of the original shape."""
    spec = q.spec
    if spec.codebook is not None:
        from qcompress.engine.codebook import dequantize_codebook

        return dequantize_codebook(q)
    n_rows, cols = q.codes.shape
    expected = (n_rows, n_groups(cols, spec))
    if q.scale.shape != expected or (q.zero_point is not None and q.zero_point.shape != expected):
        raise ValueError(f"scale/zero_point must be {expected} for codes of shape {q.codes.shape}")
    out = np.empty((n_rows, cols), np.float32)
    s32 = q.scale.astype(np.float32)
    zp = None if q.zero_point is None else q.zero_point.astype(np.float32)
    glen = group_len(cols, spec)
    for rs in iter_row_chunks(n_rows, cols):
        for t in iter_col_tiles(cols, glen) if cols else ():
            gs = slice(t.g0, t.g0 + t.k)
            decode(
                tile_view(q.codes, rs, t),
                s32[rs, gs],
                None if zp is None else zp[rs, gs],
                out=tile_view(out, rs, t),
            )
    x = from_rows(out, q.shape, spec)
    return x if x.flags.c_contiguous else x.copy()


def _as_float32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind in "biuOSUMmc" or (x.dtype.kind == "V" and x.dtype.names is not None):
        raise ValueError(f"can only quantize floating-point tensors, not {x.dtype}")
    with np.errstate(over="ignore"):
        return x.astype(np.float32, copy=False)


def _non_finite_message(x: np.ndarray, xf: np.ndarray) -> str:
    n_nan = int(np.count_nonzero(np.isnan(xf)))
    n_inf = int(np.count_nonzero(np.isinf(xf)))
    msg = f"tensor holds {n_nan} NaN and {n_inf} Inf of {xf.size} values"
    if n_inf and np.isfinite(np.asarray(x, dtype=np.float64)).sum() > xf.size - n_nan - n_inf:
        msg += " (finite values beyond float32's range count as Inf)"
    return msg + "; no integer grid can represent them"
