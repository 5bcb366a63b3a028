"""The numpy-only engine: choose grids, quantize, pack, dequantize, and measure the error.

Pure functions over numpy arrays; no file I/O and no imports from the rest of qcompress.
Names load on first use, so that reading the tables in ``spec`` (as the CLI does to build its
--help) does not import numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "combine_error_stats": "metrics",
    "error_stats": "metrics",
    "pack_codes": "packing",
    "packed_nbytes": "packing",
    "unpack_codes": "packing",
    "code_range": "params",
    "decode_level2": "level2",
    "dequantize": "codec",
    "quantize": "codec",
    "quantize_with_error": "codec",
    "MSE_SHRINKS": "ranges",
    "PERCENTILE": "ranges",
    "from_rows": "rows",
    "n_groups": "rows",
    "to_rows": "rows",
    "ErrorStats": "spec",
    "Level2": "spec",
    "NonFiniteError": "spec",
    "QuantizedTensor": "spec",
    "QuantSpec": "spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qcompress.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"qcompress.engine.{module}"), name)
    globals()[name] = value
    return value
