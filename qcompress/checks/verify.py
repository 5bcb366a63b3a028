"""``verify``: an artifact's structure, checksums and decodability, and each tensor's error
(recorded, or recomputed against the original) checked by the gates."""

from __future__ import annotations

from pathlib import Path

from qcompress.artifact.inputs import open_artifact
from qcompress.artifact.recipe import STATS_COLUMNS, STATS_TENSOR
from qcompress.checks.gates import Gate, check_gates_match, failed_gates
from qcompress.checks.results import Checksums, VerifiedTensor, VerifyResult
from qcompress.checks.tensors import FloatTensors, check_same_tensors, tensor_errors
from qcompress.report import sqnr_or_none


def verify(
    artifact_path: str | Path, *, against: str | Path | None = None, gates: list[Gate] | None = None
) -> VerifyResult:
    """Check an artifact's structure and checksums and, against gates, each tensor's error.

    Without ``against`` the errors are those recorded at quantization; with it they are recomputed
    from the original file. ``result.passed`` is False when a checksum or a gate failed.
    """
    artifact_path = Path(artifact_path)
    gates = gates or []
    with open_artifact(artifact_path) as art:
        check_gates_match(gates, (e.name for e in art.entries), artifact_path)
        bad = set(art.verify())
        art.check_values(skip=bad)  # decodable, not only intact: what dequantize will need
        stats = None if STATS_TENSOR in bad else art.stats()
        original = FloatTensors(Path(against)) if against is not None else None
        try:
            if original is not None:
                check_same_tensors(original, artifact_path, [(e.name, e.info) for e in art.entries])
            tensors = []
            for i, e in enumerate(art.entries):
                corrupt = sorted(bad & set(e.stored_names))
                if corrupt:
                    errors: dict[str, float | None] = dict.fromkeys(STATS_COLUMNS)
                elif original is not None:
                    errors = tensor_errors(original.read(e.name), art.tensor(e))
                elif stats is not None:
                    errors = dict(zip(STATS_COLUMNS, map(float, stats[i]), strict=True))
                    errors["sqnr_db"] = sqnr_or_none(float(stats[i][2]))
                else:
                    errors = dict.fromkeys(STATS_COLUMNS)
                failed = [f"checksum of {n}" for n in corrupt]
                if errors["mse"] is not None:
                    failed += failed_gates(e.name, errors, gates)
                tensors.append(
                    VerifiedTensor(
                        name=e.name,
                        action=e.action,
                        bits=None if e.quantized is None else e.quantized.bits,
                        **errors,
                        failed=tuple(failed),
                    )
                )
        finally:
            if original is not None:
                original.close()
    failures = [t.name for t in tensors if t.failed]
    other_bad = sorted(bad - {n for e in art.entries for n in e.stored_names})
    return VerifyResult(
        artifact=artifact_path,
        against=None if against is None else Path(against),
        passed=not failures and not other_bad,
        checksums=Checksums(len(art.entries), tuple(sorted(bad))),
        gates=tuple(g.describe() for g in gates),
        failures=tuple(failures + [f"checksum of {n}" for n in other_bad]),
        tensors=tuple(tensors),
    )
