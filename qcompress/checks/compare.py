"""``compare``: the per-tensor error of one file against another, in any formats (artifacts
dequantized), paired by name or, for GGUF, through the architecture's name tables."""

from __future__ import annotations

from pathlib import Path

from qcompress.checks.gates import Gate, check_gates_match, failed_gates
from qcompress.checks.results import ComparedTensor, CompareResult, Unpaired, UnpairedTensor
from qcompress.checks.tensors import FloatTensors, check_same_tensors, tensor_errors
from qcompress.formats.base import TensorInfo


def compare(a: str | Path, b: str | Path, *, gates: list[Gate] | None = None) -> CompareResult:
    """Per-tensor error of B against A (any formats, artifacts dequantized), checked by gates."""
    a, b = Path(a), Path(b)
    gates = gates or []
    unpaired: Unpaired | None = None
    with FloatTensors(a) as ref, FloatTensors(b) as other:
        if ref.is_gguf or other.is_gguf:
            pairs, unpaired = _pair_gguf(ref, other)
        else:
            check_same_tensors(ref, b, [(i.name, i) for i in other.infos()])
            pairs = [(i, i.name) for i in ref.infos()]
        check_gates_match(gates, (i.name for i, _ in pairs), a)
        tensors = []
        for info, other_name in pairs:
            errors = tensor_errors(ref.read(info.name), other.read(other_name))
            failed = tuple(failed_gates(info.name, errors, gates))
            b_name = None if other_name == info.name else other_name
            tensors.append(
                ComparedTensor(info.name, info.shape, **errors, failed=failed, b_name=b_name)
            )
    failures = tuple(t.name for t in tensors if t.failed)
    return CompareResult(
        a=a,
        b=b,
        passed=not failures,
        gates=tuple(g.describe() for g in gates),
        failures=failures,
        tensors=tuple(tensors),
        unpaired=unpaired,
    )


def _pair_gguf(
    ref: FloatTensors, other: FloatTensors
) -> tuple[list[tuple[TensorInfo, str]], Unpaired]:
    """Pair tensors when one side is GGUF: by name, else through the gguf package's tensor-name
    tables for the architecture the GGUF file names. Tensors that cannot be paired (or whose
    shapes differ) are listed, not an error: llama.cpp files often add or merge tensors."""
    ref_infos = {i.name: i for i in ref.infos()}
    other_infos = {i.name: i for i in other.infos()}
    to_ref: dict[str, str] = {}  # other name -> ref name, through the tables
    for side, names, target in ((other, other_infos, ref_infos), (ref, ref_infos, other_infos)):
        for gguf_name, sources in side.gguf_source_names().items():
            src = next((n for n in sources if n in target), None)
            if gguf_name in names and src is not None and gguf_name not in target:
                if side is other:
                    to_ref[gguf_name] = src
                else:
                    to_ref[src] = gguf_name
    pairs: list[tuple[TensorInfo, str]] = []
    used: set[str] = set()
    a_only: list[UnpairedTensor] = []
    by_ref = {r: o for o, r in to_ref.items()}
    for name, info in ref_infos.items():
        other_name = name if name in other_infos else by_ref.get(name)
        if other_name is None:
            a_only.append(UnpairedTensor(name, "no tensor of this name in B"))
            continue
        if other_infos[other_name].shape != info.shape:
            a_only.append(
                UnpairedTensor(
                    name,
                    f"B's {other_name!r} has shape {list(other_infos[other_name].shape)}"
                    f", not {list(info.shape)}",
                )
            )
            used.add(other_name)
            continue
        pairs.append((info, other_name))
        used.add(other_name)
    b_only = tuple(
        UnpairedTensor(n, "no tensor of this name in A") for n in other_infos if n not in used
    )
    return pairs, Unpaired(tuple(a_only), b_only)
