"""The numpy-only engine: choose grids, quantize, pack, dequantize, and measure the error.

Pure functions over numpy arrays; no file I/O and no imports from the rest of qcompress.
"""

from __future__ import annotations

from qcompress.engine.metrics import combine_error_stats, error_stats
from qcompress.engine.packing import pack_codes, packed_nbytes, unpack_codes
from qcompress.engine.params import code_range
from qcompress.engine.quantize import dequantize, quantize
from qcompress.engine.ranges import MSE_SHRINKS, PERCENTILE
from qcompress.engine.rows import from_rows, n_groups, to_rows
from qcompress.engine.spec import ErrorStats, NonFiniteError, QuantizedTensor, QuantSpec

__all__ = [
    "MSE_SHRINKS",
    "PERCENTILE",
    "ErrorStats",
    "NonFiniteError",
    "QuantSpec",
    "QuantizedTensor",
    "code_range",
    "combine_error_stats",
    "dequantize",
    "error_stats",
    "from_rows",
    "n_groups",
    "pack_codes",
    "packed_nbytes",
    "quantize",
    "to_rows",
    "unpack_codes",
]
