"""What verify and compare return: frozen results, one line per tensor, whose ``as_dict`` is
the JSON document ``qcompress verify --json`` / ``compare --json`` prints (fields in this order).

A tensor line carries its error (``mse``, ``max_abs_error``, ``sqnr_db``: None where unknown,
as for a tensor whose checksum failed; ``sqnr_db`` None also for an exact reconstruction) and
the gates and checksums it failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcompress.documents import OMIT_NONE, as_document


@dataclass(frozen=True)
class VerifiedTensor:
    name: str
    action: str
    bits: int | None
    mse: float | None
    max_abs_error: float | None
    sqnr_db: float | None
    failed: tuple[str, ...]


@dataclass(frozen=True)
class Checksums:
    checked: int
    failed: tuple[str, ...]  # stored tensors whose checksum failed


@dataclass(frozen=True)
class VerifyResult:
    artifact: Path
    against: Path | None
    passed: bool
    checksums: Checksums
    gates: tuple[str, ...]
    failures: tuple[str, ...]
    tensors: tuple[VerifiedTensor, ...]

    def as_dict(self) -> dict[str, Any]:
        return as_document(self)


@dataclass(frozen=True)
class ComparedTensor:
    name: str
    shape: tuple[int, ...]
    mse: float | None
    max_abs_error: float | None
    sqnr_db: float | None
    failed: tuple[str, ...]
    b_name: str | None = field(default=None, metadata=OMIT_NONE)  # paired under another name


@dataclass(frozen=True)
class UnpairedTensor:
    name: str
    reason: str


@dataclass(frozen=True)
class Unpaired:
    """Tensors of either side that could not be paired (a GGUF side only)."""

    a_only: tuple[UnpairedTensor, ...]
    b_only: tuple[UnpairedTensor, ...]


@dataclass(frozen=True)
class CompareResult:
    a: Path
    b: Path
    passed: bool
    gates: tuple[str, ...]
    failures: tuple[str, ...]
    tensors: tuple[ComparedTensor, ...]
    unpaired: Unpaired | None = field(default=None, metadata=OMIT_NONE)

    def as_dict(self) -> dict[str, Any]:
        return as_document(self)
