"""Typed errors. The CLI converts them once, at its boundary, into one line and an exit code.

Every message names the file (and the tensor, if any) and, where it helps, what to do next.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2


class QCompressError(Exception):
    """Base of every error a user can cause; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_BAD_INPUT


class InputError(QCompressError):
    """The input cannot be used: missing, unreadable, corrupt, unsupported, or holds NaN/Inf."""


class FormatError(InputError):
    """The file's bytes are not a well-formed file of the format they claim to be."""


class UsageError(QCompressError):
    """The options do not fit together, or an output would overwrite something it must not."""


class GateFailed(QCompressError):
    """A quality gate of ``verify`` or ``compare`` failed."""

    exit_code = EXIT_GATE_FAILED
