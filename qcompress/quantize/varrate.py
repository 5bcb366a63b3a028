"""The measuring pass of variable-rate codes: each such tensor's code dtype, before the header.

Why a pass: the artifact's header (every stored tensor's dtype and shape) is written before the
first tensor is quantized, and the narrowest code dtype (int8, int16 or int32) of a uniform step
depends on the values. So each variable-rate tensor is read and quantized once here, keeping only
its dtype; the streaming pass re-quantizes it (deterministic: the same codes) and writes them.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

from qcompress.engine.spec import NonFiniteError
from qcompress.engine.uniform import BoundError, UniformSpec, uniform_quantize
from qcompress.errors import UsageError
from qcompress.formats.base import WeightReader
from qcompress.quantize.policy import TensorDecision, non_finite_error


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
