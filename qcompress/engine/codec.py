"""quantize and dequantize: a float tensor to integer codes plus per-group grids, and back.

Arithmetic is float32 whatever the input dtype: float16 and bfloat16 widen to it exactly, and for
float64 input the float32 rounding of x (relative 6e-8) is far below any quantization step (at
least 1/255 of a group's range), while scales, zero-points and dequantized values are float32 or
narrower anyway. Finite float64 values beyond float32's range are reported as overflowing.
"""

from __future__ import annotations

import numpy as np

from qcompress.engine import level2
from qcompress.engine.kernels import decode, encode
from qcompress.engine.params import Grid, code_dtype, code_range, grid_for_range, validate_spec
from qcompress.engine.ranges import choose_range, group_minmax
from qcompress.engine.rows import (
    from_rows,
    group_len,
    iter_col_tiles,
    iter_row_chunks,
    n_groups,
    tile_view,
    to_rows,
)
from qcompress.engine.spec import NonFiniteError, QuantizedTensor, QuantSpec


def quantize(x: np.ndarray, spec: QuantSpec) -> QuantizedTensor:
    """Quantize ``x`` (any float dtype, any shape, 0-d and empty included) as ``spec`` says.

    Per (row, group): choose the range to cover (``spec.range_method``), build the grid that
    covers it in ``spec.scale_dtype``, and encode with exactly those stored values. For values
    inside [clip_min, clip_max], |x - dequantize(q)| <= scale / 2.

    Raises NonFiniteError if x holds NaN or Inf, ValueError for a bad spec or a non-float x.
    """
    validate_spec(spec)
    xf = _as_float32(x)
    rows = to_rows(xf, spec)
    n_rows, cols = rows.shape
    lo, hi = group_minmax(rows, spec)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise NonFiniteError(_non_finite_message(x, xf))

    qlo, qhi = code_range(spec.bits, spec.scheme)
    shape = (n_rows, n_groups(cols, spec))
    two = spec.scale_bits is not None
    param_dtype = np.float32 if two else spec.scale_dtype
    scale = np.zeros(shape, param_dtype)
    zero_point = None if spec.scheme == "symmetric" else np.zeros(shape, param_dtype)
    supers = level2.choose_supers(lo, hi, spec) if two else None
    sc = np.zeros(shape, np.uint8)
    mc = np.zeros(shape, np.uint8) if two and zero_point is not None else None
    clip_min = np.zeros(shape, np.float32)
    clip_max = np.zeros(shape, np.float32)
    codes = np.zeros((n_rows, cols), code_dtype(spec.scheme))
    glen = group_len(cols, spec)
    for rs in iter_row_chunks(n_rows, cols):
        if supers is None:
            grid = grid_for_range(*choose_range(rows[rs], lo[rs], hi[rs], spec), spec)
        else:
            step, smin = supers.rows(rs)

            def grid_fn(a: np.ndarray, b: np.ndarray) -> Grid:
                return level2.encode_params(a, b, step, smin, spec)[0]  # noqa: B023

            bounds = choose_range(rows[rs], lo[rs], hi[rs], spec, grid_fn)
            grid, sc[rs], chunk_mc = level2.encode_params(*bounds, step, smin, spec)
            if mc is not None:
                mc[rs] = chunk_mc
        scale[rs], clip_min[rs], clip_max[rs] = grid.scale, grid.cover_lo, grid.cover_hi
        if zero_point is not None:
            zero_point[rs] = grid.zero_point
        _, inv, zp = grid.float32()
        for t in iter_col_tiles(cols, glen) if cols else ():
            gs = slice(t.g0, t.g0 + t.k)
            t_codes = encode(
                tile_view(rows, rs, t), inv[:, gs], None if zp is None else zp[:, gs], qlo, qhi
            )
            np.copyto(tile_view(codes, rs, t), t_codes, casting="unsafe")
    second = None if supers is None else level2.level2_of(sc, mc, supers)
    return QuantizedTensor(
        codes, scale, zero_point, clip_min, clip_max, spec, tuple(xf.shape), second
    )


def dequantize(q: QuantizedTensor) -> np.ndarray:
    """(codes - zero_point) * scale as a C-contiguous float32 array of the original shape."""
    spec = q.spec
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
