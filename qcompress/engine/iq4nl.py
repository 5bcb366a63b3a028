"""GGUF IQ4_NL blocks (llama.cpp's ``block_iq4_nl``): 32 values as a float16 scale ``d`` and 16
bytes of 4-bit indices into ``kvalues_iq4nl``, value j = d * kvalues[nibble j]; byte j holds value
j in its low nibble and value j + 16 in its high nibble (ggml-common.h, gguf-py ``quants.IQ4_NL``).

Two ways in: from the codes of a qcompress ``iq4nl`` codebook tensor (``blocks_from_codes``: the
same indices, the scale divided by 127 and rounded to float16, so an artifact exports without
re-quantizing), and from floats (``encode_blocks``: the codebook engine's scale search, scored
under the float16 scale that is stored). ``decode_blocks`` repeats gguf-py's float32 operations.
"""

from __future__ import annotations

import numpy as np

from qcompress.engine.codebook import FIXED_TABLES, IQ4NL_INT8, _assign, _best_scales, minmax_start

BLOCK, NBYTES = 32, 18
_KVALUES = np.asarray(IQ4NL_INT8, np.float32)


def _f16(v: np.ndarray) -> np.ndarray:
    return np.clip(v, -65504.0, 65504.0).astype(np.float16)


def blocks_from_codes(indices: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(n, 18) bytes from (n, 32) table indices (0..15) and each block's float32 scale of the
    normalised table (levels = kvalues / 127): d = float16(scale / 127)."""
    return _pack(indices, _f16(np.asarray(scale, np.float32) / np.float32(127)))


def _pack(indices: np.ndarray, d16: np.ndarray) -> np.ndarray:
    idx = np.ascontiguousarray(indices, np.uint8)
    if idx.size and int(idx.max()) > 15:
        raise ValueError("an IQ4_NL index exceeds 15")
    qs = (idx[:, :16] | (idx[:, 16:] << np.uint8(4))).astype(np.uint8)
    d = np.ascontiguousarray(d16, np.float16).reshape(-1, 1)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), qs], axis=1)


def decode_blocks(b: np.ndarray) -> np.ndarray:
    """float32 (n, 32) values of (n, 18) IQ4_NL bytes, as ``gguf.quants.dequantize`` computes."""
    b = np.ascontiguousarray(b, np.uint8)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    qs = b[:, 2:]
    idx = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)
    return d * _KVALUES[idx]


def encode_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 18) bytes of (n, 32) float32 values: each block's least-squared-error scale among
    the codebook search's and the min-max start's, each rounded to float16 and rescored."""
    x = np.asarray(blocks, np.float64)
    w = np.ones_like(x)
    levels = FIXED_TABLES["iq4nl"]
    best_err = np.full(x.shape[0], np.inf)
    best_d16 = np.zeros(x.shape[0], np.float16)
    for d in (_best_scales(x, w, levels), minmax_start(x, levels)):
        d16 = _f16((d / 127).astype(np.float32))
        dk = d16.astype(np.float32)
        idx = _assign(x, dk.astype(np.float64) * 127, levels)
        err = ((x - (dk[:, None] * _KVALUES[idx]).astype(np.float64)) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_d16 = np.where(better, d16, best_d16)
    idx = _assign(x, best_d16.astype(np.float64) * 127, levels)
    return _pack(idx, best_d16)
