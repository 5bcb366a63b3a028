"""The measuring pass of variable-rate codes: each such tensor's code dtype, before the header.

Why a pass: the artifact's header (every stored tensor's dtype and shape) is written before the
first tensor is quantized, and the narrowest code dtype (int8, int16 or int32) of a uniform step
depends on the values. So each variable-rate tensor is read and quantized once here, keeping only
its dtype; the streaming pass re-quantizes it (deterministic: the same codes) and writes them.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from qcompress.engine.metrics import error_stats
from qcompress.engine.spec import NonFiniteError
from qcompress.engine.uniform import (
    BoundError,
    UniformSpec,
    exp10,
    uniform_quantize,
    uniform_quantize_with_error,
)
from qcompress.errors import UsageError
from qcompress.formats.base import WeightReader
from qcompress.quantize.policy import TensorDecision, non_finite_error

LADDER_DB = tuple(range(8, 49))
"""SQNR (dB) of the variable-rate steps a --target-bpw budget measures per tensor: 1 dB apart,
so the allocation across tensors can land within a fraction of a dB of any budget."""


def resolve_code_dtypes(
    reader: WeightReader, plans: list[TensorDecision], *, jobs: int = 1
) -> list[TensorDecision]:
    """``plans`` with every variable-rate spec's ``code_dtype`` found by quantizing the tensor;
    UsageError (naming the file, tensor and what to do) when its target cannot be met."""
    todo = [
        i
        for i, p in enumerate(plans)
        if isinstance(p.spec, UniformSpec) and p.spec.code_dtype is None
    ]
    if not todo:
        return plans
    out = list(plans)

    def one(i: int) -> TensorDecision:
        plan = plans[i]
        spec = plan.spec
        assert isinstance(spec, UniformSpec)
        x = reader.read(plan.info.name)
        try:
            codes = uniform_quantize(x, spec).codes
        except NonFiniteError as e:
            raise non_finite_error(reader.path, plan.info.name, e) from None
        except BoundError as e:
            raise UsageError(
                f"{reader.path}: tensor {plan.info.name!r}: {e}; loosen the target or keep the "
                f"tensor in float with --keep '{plan.info.name}'"
            ) from None
        finally:
            reader.release(plan.info.name)
        return dataclasses.replace(
            plan, spec=dataclasses.replace(spec, code_dtype=codes.dtype.name)
        )

    with ThreadPoolExecutor(max_workers=max(jobs, 1), thread_name_prefix="qc-varrate") as pool:
        for i, plan in zip(todo, pool.map(one, todo), strict=True):
            out[i] = plan
    return out


def step_ladder(x: np.ndarray, axis: int, granularity: str = "tensor") -> list[UniformSpec]:
    """One variable-rate candidate per :data:`LADDER_DB`: the step that gives about that SQNR
    (D ~ step^2 / 12, from the tensor's power summed in the engine's fixed order). With
    ``granularity`` "channel" (set by the options or a plan), one step per output channel,
    each reaching that SQNR in its own row."""
    if granularity == "channel":
        return [UniformSpec("sqnr", db, "channel", axis) for db in LADDER_DB]
    power = error_stats(x, np.zeros_like(x)).mse if x.size else 0.0
    if not math.isfinite(power):
        from qcompress.engine.codec import _as_float32, _non_finite_message

        raise NonFiniteError(_non_finite_message(x, _as_float32(x)))
    if power == 0:
        return [UniformSpec("step", 1.0, "tensor", axis)]
    return [
        UniformSpec("step", math.sqrt(12.0 * power) * exp10(-db / 20.0), "tensor", axis)
        for db in LADDER_DB
    ]


def measure_uniform(
    x: np.ndarray, spec: UniformSpec, entropy: bool
) -> tuple[UniformSpec, float, int] | None:
    """A budget's candidate: the spec with its code dtype resolved, the step's relative error,
    and the bytes the artifact stores for it (codes and step priced by :func:`priced_nbytes`);
    None where the step needs codes wider than 32 bits."""
    try:
        u, stats = uniform_quantize_with_error(x, spec)
    except BoundError:
        return None
    rel = stats.mse / stats.signal_power if stats.signal_power > 0 else 0.0
    resolved = dataclasses.replace(spec, code_dtype=u.codes.dtype.name)
    return resolved, rel, priced_nbytes([u.codes, u.step], entropy)


def priced_nbytes(arrays: list[np.ndarray], entropy: bool) -> int:
    """Exactly the bytes the artifact stores for these stored tensors: each one through the
    entropy stage (``artifact.coding.code``, the writer's own rule) when ``entropy``, else plain."""
    if not entropy:
        return sum(int(a.nbytes) for a in arrays)
    from qcompress.artifact import coding

    return sum(int(coding.code(a)[0].nbytes) for a in arrays)
