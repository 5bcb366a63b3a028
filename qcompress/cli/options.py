"""Option stacks the commands share, as decorators (``@output_options(...)``, ``@gate_options``,
``@quantize_options``), so an option is declared once however many commands take it.

Choices and defaults come from the api (the engine's tables, the policy's defaults), read only
when a command's options are parsed or its own ``--help`` is shown: building the command group
for ``qcompress --help`` imports nothing heavy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

F = Callable[..., Any]


def _api() -> Any:
    from qcompress import api

    return api


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose choices load on first use (parsing, or this command's help)."""

    def __init__(self, load: Callable[[], Sequence[Any]]) -> None:
        self._load = load
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(str(c) for c in self._load())


class Deferred:
    """A default loaded on first use; ``--help`` shows its value, as for a plain default."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load

    def __call__(self) -> Any:
        return self._load()

    def __str__(self) -> str:
        return str(self._load())


def _stack(*decorators: F) -> Callable[[F], F]:
    """Apply ``decorators`` so the options appear in --help in the order given."""

    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def output_options(
    json_help: str | None = None, quiet: bool = False, force_help: str | None = None
) -> Callable[[F], F]:
    """``--json`` (``as_json``), ``--quiet/-q`` and ``--force``, each only if the command takes it;
    the help texts say what the command prints or overwrites."""
    decorators: list[F] = []
    if json_help is not None:
        decorators.append(click.option("--json", "as_json", is_flag=True, help=json_help))
    if quiet:
        decorators.append(
            click.option("--quiet", "-q", is_flag=True, help="Print no summary on stderr.")
        )
    if force_help is not None:
        decorators.append(click.option("--force", is_flag=True, help=force_help))
    return _stack(*decorators)


_gate_stack = _stack(
    click.option(
        "--min-sqnr", type=float, metavar="DB", help="Fail if any tensor's SQNR is below DB."
    ),
    click.option(
        "--max-abs-error", type=float, metavar="E", help="Fail if any tensor's max abs error > E."
    ),
    click.option(
        "--gate",
        "gate_specs",
        multiple=True,
        metavar="GLOB:METRIC:VALUE",
        help="A gate for tensors matching GLOB; METRIC is min_sqnr, max_abs_error or max_mse "
        "(repeatable).",
    ),
)


def gate_options(command: F) -> F:
    """--min-sqnr, --max-abs-error and --gate, shared by verify and compare; the command gets
    them as one ``gates`` list, as the api checks them."""

    @functools.wraps(command)
    def with_gates(
        *args: Any,
        min_sqnr: float | None,
        max_abs_error: float | None,
        gate_specs: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        gates = _api().build_gates(min_sqnr, max_abs_error, gate_specs)
        return command(*args, gates=gates, **kwargs)

    return _gate_stack(with_gates)


QUANTIZE_SETTINGS = (
    "bits",
    "scheme",
    "granularity",
    "group_size",
    "axis",
    "range_method",
    "scale_dtype",
    "scale_bits",
    "keep",
    "drop",
    "min_elements",
    "plan_path",
    "target_bpw",
    "min_sqnr",
)
"""The parameters ``quantize_options`` adds, which ``quantize_settings`` turns into options."""

quantize_options = _stack(
    click.option(
        "--bits",
        type=LazyChoice(lambda: _api().BITS),
        default=Deferred(lambda: str(_api().DEFAULT_BITS)),
        show_default=True,
        help="Bits per code.",
    ),
    click.option(
        "--scheme",
        type=LazyChoice(lambda: _api().SCHEMES),
        help="symmetric (zero-point 0) or affine (scale and zero-point) "
        "[default: symmetric at 8 bits, affine below].",
    ),
    click.option(
        "--granularity",
        type=LazyChoice(lambda: _api().GRANULARITIES),
        help="One scale per tensor, output channel or group "
        "[default: channel at 8 bits, group below].",
    ),
    click.option(
        "--group-size",
        type=int,
        help="Elements per group along the input dimension [default: 32 below 8 bits, else 64].",
    ),
    click.option(
        "--axis",
        type=int,
        help="Output-channel axis [default: 0 for npz/safetensors; last for h5, 2 for depthwise].",
    ),
    click.option(
        "--range",
        "range_method",
        type=LazyChoice(lambda: _api().RANGE_METHODS),
        help="How the clipping range is chosen [default: minmax at 8 bits, mse below].",
    ),
    click.option(
        "--scale-dtype",
        type=LazyChoice(lambda: _api().SCALE_DTYPES),
        default="float32",
        show_default=True,
        help="Dtype of stored float scales and zero-points.",
    ),
    click.option(
        "--scale-bits",
        type=LazyChoice(lambda: (0, *_api().SCALE_BITS)),
        help="Store group scales (and mins) as N-bit codes under float32 super-scales, 0 for "
        "float scales [default: 6 below 8 bits, 0 at 8].",
    ),
    click.option(
        "--keep",
        multiple=True,
        metavar="GLOB",
        help="Keep tensors whose name matches GLOB in float (repeatable).",
    ),
    click.option(
        "--drop",
        multiple=True,
        metavar="GLOB",
        help="Leave tensors whose name matches GLOB out of the artifact (repeatable).",
    ),
    click.option(
        "--drop-optimizer",
        is_flag=True,
        help="Leave optimizer state out (Keras 2 optimizer_weights/*, Keras 3 optimizer/*).",
    ),
    click.option(
        "--min-elements",
        type=int,
        default=Deferred(lambda: _api().DEFAULT_MIN_ELEMENTS),
        show_default=True,
        help="Tensors with fewer elements stay in float.",
    ),
    click.option(
        "--plan",
        "plan_path",
        type=click.Path(path_type=Path),
        metavar="PLAN.toml",
        help="Per-tensor recipes: a [default] and ordered [[rule]]s by name glob (see README).",
    ),
    click.option(
        "--target-bpw",
        type=float,
        metavar="X",
        help="Choose bits per tensor: least total error at <= X bits per quantized weight.",
    ),
    click.option(
        "--min-sqnr",
        type=float,
        metavar="DB",
        help="Choose bits per tensor: the fewest reaching DB; tensors that cannot stay float.",
    ),
)
"""What to quantize and how: every field of ``api.QuantizeOptions``, in --help order."""


def quantize_settings(ctx: click.Context, params: dict[str, Any]) -> Any:
    """``api.QuantizeOptions`` from the parameters ``quantize_options`` parsed (which it pops
    from ``params``). An explicit --bits beside a budget is a UsageError: the budget chooses."""
    api = _api()
    from qcompress.errors import UsageError

    p = {name: params.pop(name) for name in QUANTIZE_SETTINGS}
    if params.pop("drop_optimizer"):
        p["drop"] = (*p["drop"], *api.OPTIMIZER_GLOBS)
    budget = p["target_bpw"] is not None or p["min_sqnr"] is not None
    if budget and ctx.get_parameter_source("bits") == click.core.ParameterSource.COMMANDLINE:
        raise UsageError("--bits: a budget (--target-bpw, --min-sqnr) chooses bits per tensor")
    plan_path = p.pop("plan_path")
    return api.QuantizeOptions(
        **{
            **p,
            "bits": int(p["bits"]),
            "scale_bits": None if p["scale_bits"] is None else int(p["scale_bits"]),
            "plan": None if plan_path is None else api.load_plan(plan_path),
        }
    )
