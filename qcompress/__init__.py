"""qcompress: integer quantization of saved neural-network weights, with an honest error report.

The public functions live in :mod:`qcompress.api`; they are imported lazily so that importing the
package (and ``qcompress --help``) stays instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = ("quantize_file", "dequantize_file", "inspect", "verify", "compare", "QuantizeOptions")


def __getattr__(name: str):
    if name in _API:
        from qcompress import api

        return getattr(api, name)
    raise AttributeError(f"module 'qcompress' has no attribute {name!r}")
