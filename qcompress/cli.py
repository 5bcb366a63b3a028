"""The ``qcompress`` command: parse options, call one :mod:`qcompress.api` function, render.

Results go to stdout (exactly one JSON document with ``--json``); people-facing summaries go to
stderr. Errors are converted once, in ``_Group.invoke``, to a one-line message and an exit code.
Heavy modules (numpy, h5py, rich) are imported inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from qcompress import __version__
from qcompress.engine.spec import (
    BITS,
    GRANULARITIES,
    RANGE_METHODS,
    SCALE_BITS,
    SCALE_DTYPES,
    SCHEMES,
)

EXIT_CODES_HELP = """\b
Exit status:
  0  success
  1  a quality gate failed (verify, compare)
  2  usage error or bad input (unreadable, corrupt, unsupported, NaN/Inf)"""

MIN_ELEMENTS_DEFAULT = 1024


class _Failure(click.ClickException):
    """A QCompressError as click shows it: ``Error: message`` on stderr, the error's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Group(click.Group):
    """Converts every error a user can cause, once, into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from qcompress.atomic import Terminated
        from qcompress.errors import QCompressError

        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return result
        except BrokenPipeError:
            # The reader of our stdout went away (``qcompress inspect F | head -3``): what it
            # wanted was printed, so this is a success, and nothing more may be written.
            _silence_stdout()
            raise click.exceptions.Exit(0) from None
        except QCompressError as e:
            raise _Failure(_one_line(str(e)), e.exit_code) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise _Failure(_one_line(f"{where}{e.strerror or e}"), 2) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; no output was written.", err=True)
            raise click.exceptions.Exit(130) from None
        except Terminated:
            raise click.exceptions.Exit(143) from None


def _one_line(message: str) -> str:
    """An error is one line: a newline in a path or a name is shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@click.group(
    cls=_Group, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="qcompress")
def cli() -> None:
    """Shrink neural-network weight files by integer quantization and report what it cost.

    Reads .npz, Keras .h5 and .safetensors files (detected by content) and writes one safetensors
    artifact plus a JSON report of every tensor's scales, ranges and error.
    """


PIPE_WIDTH = 160  # rich's 80 columns would truncate tensor names when output is not a terminal


def _no_color() -> bool:
    """NO_COLOR (https://no-color.org): set and not empty."""
    return bool(os.environ.get("NO_COLOR"))


def _console(stderr: bool) -> Any:
    """A rich console; under NO_COLOR it has no color system at all, so not even bold or italic
    escape codes are written (rich's own NO_COLOR handling drops colors but keeps styles).
    Piped output is PIPE_WIDTH wide unless COLUMNS says otherwise."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
    if _no_color():
        console = Console(stderr=stderr, width=width, color_system=None, no_color=True)
    else:
        console = Console(stderr=stderr, width=width)
    console.on_broken_pipe = _broken_pipe  # rich would exit 1; the CLI boundary exits 0
    return console


def _broken_pipe() -> None:
    raise BrokenPipeError(32, "Broken pipe")


def _stderr_console() -> Any:
    return _console(stderr=True)


def _stdout_console() -> Any:
    return _console(stderr=False)


class _RichProgress:
    """A progress bar on stderr (tensors, bytes per second, time left) that vanishes when done."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=_stderr_console(),
            transient=True,
        )
        self._task: Any = None
        self._total = self._done = 0

    def start(self, tensors: int, total_bytes: int) -> None:
        self._bar.start()
        self._total = tensors
        self._task = self._bar.add_task(f"0/{tensors} tensors", total=total_bytes)

    def advance(self, name: str, nbytes: int) -> None:
        self._done += 1
        self._bar.update(
            self._task, advance=nbytes, description=f"{self._done}/{self._total} tensors"
        )

    def stop(self) -> None:
        self._bar.stop()


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A progress bar only where a person watches: stderr is a terminal and output is not JSON.
    Not under NO_COLOR either: a live bar redraws itself with cursor escape codes."""
    if not enabled or not sys.stderr.isatty() or _no_color():
        yield None
        return
    bar = _RichProgress()
    try:
        yield bar
    finally:
        bar.stop()


def _echo_json(document: Any) -> None:
    """One strict JSON document; NaN/Inf become null plus a "nonfinite" map (report.json_safe),
    pretty-printed in linear time (json's indent= is not)."""
    from qcompress.report import dumps

    click.echo(dumps(document), nl=False)


def _warn(messages: Any) -> None:
    """Warnings and notes on stderr: always, -q and --json included (quiet hides summaries)."""
    for message in messages:
        click.echo(f"warning: {message}", err=True)


def _fmt_sqnr(value: float | None) -> str:
    return "exact" if value is None else f"{value:.1f}"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Artifact path [default: INPUT with .qc.safetensors].",
)
@click.option(
    "--bits",
    type=click.Choice([str(b) for b in BITS]),
    default="8",
    show_default=True,
    help="Bits per code.",
)
@click.option(
    "--scheme",
    type=click.Choice(SCHEMES),
    help="symmetric (zero-point 0) or affine (scale and zero-point) "
    "[default: symmetric at 8 bits, affine below].",
)
@click.option(
    "--granularity",
    type=click.Choice(GRANULARITIES),
    help="One scale per tensor, output channel or group [default: channel at 8 bits, group below].",
)
@click.option(
    "--group-size",
    type=int,
    help="Elements per group along the input dimension [default: 32 below 8 bits, else 64].",
)
@click.option(
    "--axis",
    type=int,
    help="Output-channel axis [default: 0 for npz/safetensors; last for h5, 2 for depthwise].",
)
@click.option(
    "--range",
    "range_method",
    type=click.Choice(RANGE_METHODS),
    help="How the clipping range is chosen [default: minmax at 8 bits, mse below].",
)
@click.option(
    "--scale-dtype",
    type=click.Choice(SCALE_DTYPES),
    default="float32",
    show_default=True,
    help="Dtype of stored float scales and zero-points.",
)
@click.option(
    "--scale-bits",
    type=click.Choice([str(b) for b in (0, *SCALE_BITS)]),
    help="Store group scales (and mins) as N-bit codes under float32 super-scales, 0 for float "
    "scales [default: 6 below 8 bits, 0 at 8].",
)
@click.option(
    "--keep",
    multiple=True,
    metavar="GLOB",
    help="Keep tensors whose name matches GLOB in float (repeatable).",
)
@click.option(
    "--min-elements",
    type=int,
    default=MIN_ELEMENTS_DEFAULT,
    show_default=True,
    help="Tensors with fewer elements stay in float.",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(path_type=Path),
    metavar="PLAN.toml",
    help="Per-tensor recipes: a [default] and ordered [[rule]]s by name glob (see README).",
)
@click.option(
    "--target-bpw",
    type=float,
    metavar="X",
    help="Choose bits per tensor: least total error at <= X bits per quantized weight.",
)
@click.option(
    "--min-sqnr",
    type=float,
    metavar="DB",
    help="Choose bits per tensor: the fewest reaching DB; tensors that cannot stay float.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    help="Report path [default: artifact path with .json].",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path),
    metavar="OUT.html",
    help="Also write the report as one self-contained HTML page.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print no summary on stderr.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    help="Tensors quantized at once [default: all cores]; the artifact is the same for any N.",
)
@click.option(
    "--shard",
    metavar="K/N",
    help="Sharded checkpoint: quantize only shards K, K+N, ... (run --merge once all are done); "
    "'auto' or 'auto/N' takes K (and N) from a Slurm array or a Kubernetes indexed Job.",
)
@click.option(
    "--merge", is_flag=True, help="Sharded checkpoint: write the index and report from the shards."
)
def quantize(
    input_path: Path,
    output: Path | None,
    bits: str,
    scheme: str | None,
    granularity: str | None,
    group_size: int | None,
    axis: int | None,
    range_method: str | None,
    scale_dtype: str,
    scale_bits: str | None,
    keep: tuple[str, ...],
    min_elements: int,
    plan_path: Path | None,
    target_bpw: float | None,
    min_sqnr: float | None,
    report_path: Path | None,
    html_path: Path | None,
    as_json: bool,
    quiet: bool,
    force: bool,
    jobs: int | None,
    shard: str | None,
    merge: bool,
) -> None:
    """Quantize INPUT into an artifact and a JSON report.

    INPUT is a .npz, .h5 or .safetensors file, or a sharded safetensors checkpoint (its
    *.safetensors.index.json or the folder holding it; then -o names the output folder).
    """
    from qcompress import api
    from qcompress.errors import UsageError
    from qcompress.malloc import keep_freed_memory

    keep_freed_memory()
    budget = target_bpw is not None or min_sqnr is not None
    if budget and click.get_current_context().get_parameter_source("bits") == (
        click.core.ParameterSource.COMMANDLINE
    ):
        raise UsageError("--bits: a budget (--target-bpw, --min-sqnr) chooses bits per tensor")
    options = api.QuantizeOptions(
        bits=int(bits),
        scheme=scheme,
        granularity=granularity,
        group_size=group_size,
        axis=axis,
        range_method=range_method,
        scale_dtype=scale_dtype,
        scale_bits=None if scale_bits is None else int(scale_bits),
        keep=keep,
        min_elements=min_elements,
        plan=None if plan_path is None else api.load_plan(plan_path),
        target_bpw=target_bpw,
        min_sqnr=min_sqnr,
    )
    if html_path is not None:
        _check_html_output(html_path, input_path, output, report_path, force, shard)
    with _progress(not (quiet or as_json)) as progress:
        result = api.quantize_file(
            input_path,
            options,
            output=output,
            report=report_path,
            force=force,
            jobs=jobs,
            shard=shard,
            merge=merge,
            progress=progress,
        )
    if html_path is not None:
        from qcompress.html import write_html

        write_html(result.report, html_path, force=True)  # checked before quantizing
    if as_json:
        _echo_json(result.report)
    reports = result.report["shards"] if result.report_path is None else [result.report]
    _warn(w for r in reports for w in r.get("warnings", []))
    if quiet:
        return
    if result.report_path is None:  # a share of a sharded checkpoint: one line per shard
        for shard_report in result.report["shards"]:
            _render_totals(shard_report, f"artifact: {shard_report['artifact']['path']}")
    else:
        _render_quantize_summary(result)


def _check_html_output(
    html_path: Path,
    input_path: Path,
    output: Path | None,
    report_path: Path | None,
    force: bool,
    shard: str | None,
) -> None:
    """Refuse --html before quantizing, as the other outputs are: not over an input or another
    output, not over an existing file without --force, and only where there is a whole report."""
    from qcompress import api
    from qcompress.atomic import check_outputs
    from qcompress.errors import UsageError

    if shard is not None:
        raise UsageError(
            f"{html_path}: --html needs the whole report; pass it with --merge, or run "
            "qcompress report REPORT.json --html OUT.html"
        )
    artifact, report = api.default_outputs(input_path, output, report_path)
    check_outputs([html_path], [input_path, artifact, report], force)


def _render_quantize_summary(result: Any) -> None:
    from rich.table import Table

    report = result.report
    table = Table(title=f"{report['input']['path']} -> {result.artifact}", title_justify="left")
    for column in ("tensor", "shape", "action", "bits", "granularity", "SQNR dB", "bytes"):
        table.add_column(
            column, justify="right" if column in ("bits", "SQNR dB", "bytes") else "left"
        )
    for t in report["tensors"]:
        table.add_row(
            t["name"],
            "x".join(map(str, t["shape"])) or "scalar",
            t["action"],
            str(t["bits"] or "-"),
            t["granularity"] or "-",
            _fmt_sqnr(t["sqnr_db"]) if t["action"] == "quantized" else "-",
            f"{_fmt_bytes(t['original_bytes'])} -> {_fmt_bytes(t['stored_bytes'])}",
        )
    console = _stderr_console()
    console.print(table)
    _render_totals(report, f"report: {result.report_path}")


def _render_totals(report: dict[str, Any], where: str) -> None:
    totals = report["totals"]
    bpw = totals["bits_per_weight"]
    _stderr_console().print(
        f"{_fmt_bytes(totals['original_bytes'])} -> {_fmt_bytes(totals['artifact_bytes'])} "
        f"({totals['compression_ratio']:.2f}x), "
        f"{totals['quantized_tensors']}/{totals['tensors']} tensors quantized"
        + (f" at {bpw:.2f} bits/weight" if bpw else "")
        + f", overall SQNR {_fmt_sqnr(totals['overall_sqnr_db'])} dB; {where}",
        highlight=False,
    )


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Output file: .npz, .h5 or .safetensors.",
)
@click.option(
    "--dtype",
    type=click.Choice(["original", "float32", "float16"]),
    default="original",
    show_default=True,
    help="Dtype of the rebuilt float tensors.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print no summary on stderr.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def dequantize(
    artifact: Path, output: Path, dtype: str, as_json: bool, quiet: bool, force: bool
) -> None:
    """Rebuild a float weight file from ARTIFACT, in the format OUTPUT's suffix names."""
    from qcompress import api
    from qcompress.malloc import keep_freed_memory

    keep_freed_memory()
    with _progress(not (quiet or as_json)) as progress:
        result = api.dequantize_file(artifact, output, dtype=dtype, force=force, progress=progress)
    if as_json:
        _echo_json(result.as_dict())
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if not quiet:
        console = _stderr_console()
        console.print(
            f"wrote {result.output} ({result.format}, {result.tensors} tensors, "
            f"{_fmt_bytes(result.bytes)})",
            highlight=False,
        )


@cli.command()
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--tensor", "tensor_name", metavar="NAME", help="Show only this tensor.")
@click.option(
    "--histogram",
    is_flag=True,
    help="With --tensor: a histogram of its values, the clipping range and the levels.",
)
@click.option("--errors", is_flag=True, help="Artifact: SQNR per tensor as bars, worst first.")
def inspect(
    path: Path, as_json: bool, tensor_name: str | None, histogram: bool, errors: bool
) -> None:
    """List the tensors of FILE: any weight file, or an artifact (with bits and error)."""
    from qcompress import api
    from qcompress.errors import UsageError

    if histogram or errors:
        _inspect_plot(path, as_json, tensor_name, histogram, errors)
        return
    result = api.inspect(path)
    if tensor_name is not None:
        result["tensors"] = [t for t in result["tensors"] if t["name"] == tensor_name]
        if not result["tensors"]:
            raise UsageError(f"{path}: has no tensor named {tensor_name!r}")
    if as_json:
        _echo_json(result)
    else:
        _render_inspect(result)


def _inspect_plot(
    path: Path, as_json: bool, tensor_name: str | None, histogram: bool, errors: bool
) -> None:
    """inspect --histogram / --errors: the data from qcompress.histogram, drawn by textplot."""
    from qcompress import api, textplot
    from qcompress.errors import UsageError
    from qcompress.histogram import DEFAULT_BINS, errors_worst_first, tensor_histogram

    if histogram and errors:
        raise UsageError("--histogram and --errors: give one of them")
    console = _stdout_console()
    if histogram:
        if tensor_name is None:
            raise UsageError(f"{path}: --histogram needs --tensor NAME")
        fancy = textplot.is_fancy(console)
        bins = min(max(console.width - textplot.MARGIN - 1, 20), 120) if fancy else DEFAULT_BINS
        h = tensor_histogram(path, tensor_name, bins=bins)
        if as_json:
            _echo_json(h.as_dict())
        else:
            textplot.print_lines(console, textplot.histogram_lines(h, fancy=fancy))
        return
    if tensor_name is not None:
        raise UsageError(f"{path}: --errors shows every tensor; drop --tensor")
    rows = errors_worst_first(api.inspect(path))
    if as_json:
        _echo_json(rows)
    else:
        lines = textplot.error_lines(rows, fancy=textplot.is_fancy(console), width=console.width)
        textplot.print_lines(console, lines)


NAME_MIN = 16  # narrowest tensor-name column worth drawing a table for


def _render_inspect(result: dict[str, Any]) -> None:
    from rich.table import Table

    artifact = result["kind"] == "artifact"
    title = f"{result['path']} ({result['format']}"
    title += (
        f" artifact from {result['source_format']})"
        if artifact
        else f", {result['layout']} layout)"
    )
    columns = ["tensor", "shape", "dtype", "parameters", "bytes"]
    if artifact:
        columns += ["stored", "bits", "scheme", "granularity", "SQNR dB"]
    rows = []
    for t in result["tensors"]:
        row = [
            t["name"],
            "x".join(map(str, t["shape"])) or "scalar",
            t["dtype"],
            f"{t['parameters']:,}",
            _fmt_bytes(t["bytes"]),
        ]
        if artifact:
            quantized = t["action"] == "quantized"
            row += [
                _fmt_bytes(t["stored_bytes"]),
                str(t["bits"]) if quantized else t["action"],
                t["scheme"] or "-",
                t["granularity"] or "-",
                _fmt_sqnr(t["sqnr_db"]) if quantized else "-",
            ]
        rows.append(row)
    console = _stdout_console()
    # every column but the name at full width, 3 characters of border and padding each, and
    # at least NAME_MIN for the name, which folds onto more lines as needed
    others = sum(max([len(c), *(len(r[i]) for r in rows)]) + 3 for i, c in enumerate(columns) if i)
    if others + NAME_MIN + 4 <= console.width:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(
                column,
                justify="right"
                if column in ("parameters", "bytes", "stored", "bits", "SQNR dB")
                else "left",
                overflow="fold",  # never "tens…": a cut name cannot be found or grepped
                no_wrap=column != "tensor",
                min_width=NAME_MIN if column == "tensor" else None,
            )
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:  # too narrow for the columns: one block per tensor, its name on a line of its own
        console.print(title, highlight=False, overflow="fold")
        for row in rows:
            console.print(row[0], highlight=False, overflow="fold")
            details = ", ".join(f"{c} {v}" for c, v in zip(columns[1:], row[1:], strict=True))
            console.print(f"  {details}", highlight=False, overflow="fold")
    summary = (
        f"{len(result['tensors'])} tensors shown, {result['parameters']:,} parameters in the file, "
        f"file {_fmt_bytes(result['file_bytes'])}"
    )
    if artifact and result["bits_per_weight"]:
        summary += f", {result['bits_per_weight']:.2f} bits per quantized weight"
    console.print(summary, highlight=False)
    if artifact and len(result.get("by_width", [])) > 1:
        q_params = sum(w["parameters"] for w in result["by_width"])
        for w in result["by_width"]:
            console.print(
                f"  {w['bits']}-bit codes: {w['tensors']} tensors, {w['parameters']:,} weights "
                f"({w['parameters'] / q_params:.0%}), {w['bits_per_weight']:.2f} bits per weight",
                highlight=False,
            )


main = cli  # the console-script entry point


@cli.command()
@click.argument("report_path", metavar="REPORT.json", type=click.Path(path_type=Path))
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path),
    metavar="OUT.html",
    required=True,
    help="Write the report as one self-contained HTML page.",
)
@click.option(
    "--verify",
    "verify_path",
    type=click.Path(path_type=Path),
    metavar="VERIFY.json",
    help="Show the gates of a `qcompress verify --json` result of the same artifact.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing OUT.html.")
def report(report_path: Path, html_path: Path, verify_path: Path | None, force: bool) -> None:
    """Render REPORT.json (from quantize) as an HTML page: what compression cost, per tensor."""
    from qcompress.html import write_html_report

    out = write_html_report(report_path, html_path, verify_path=verify_path, force=force)
    _stderr_console().print(f"wrote {out}", highlight=False)


def _gate_options(command: Any) -> Any:
    """--min-sqnr, --max-abs-error and --gate, shared by verify and compare."""
    command = click.option(
        "--gate",
        "gate_specs",
        multiple=True,
        metavar="GLOB:METRIC:VALUE",
        help="A gate for tensors matching GLOB; METRIC is min_sqnr, max_abs_error or max_mse "
        "(repeatable).",
    )(command)
    command = click.option(
        "--max-abs-error", type=float, metavar="E", help="Fail if any tensor's max abs error > E."
    )(command)
    command = click.option(
        "--min-sqnr", type=float, metavar="DB", help="Fail if any tensor's SQNR is below DB."
    )(command)
    return command


def _fmt_metric(t: dict[str, Any], metric: str, gates: list[Any]) -> str:
    """A tensor's value of ``metric`` with the digits that show why it fails its gates (22.47, not
    22.5, against >= 22.5); "-" when unknown (a corrupt tensor), "exact" for an exact SQNR."""
    from qcompress.checks.gates import METRICS, shown

    field, at_least = METRICS[metric]
    value = t[field]
    if t["mse"] is None:
        return "-"
    if value is None:
        return "exact"
    limits = [g.limit for g in gates if g.metric == metric and g.applies_to(t["name"])]
    failing = [lim for lim in limits if not (value >= lim if at_least else value <= lim)]
    if failing:  # the tightest failing limit needs the most digits
        return shown(value, max(failing) if at_least else min(failing), at_least)
    return f"{value:.1f}" if metric == "min_sqnr" and math.isfinite(value) else f"{value:.3g}"


def _worst_first(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failing first, then NaN, then lowest SQNR; exact tensors last."""

    def key(t: dict[str, Any]) -> tuple[int, int, float]:
        sqnr = t["sqnr_db"]
        if sqnr is None:
            return (not t["failed"], 2, 0.0)
        return (not t["failed"], 0 if math.isnan(sqnr) else 1, 0.0 if math.isnan(sqnr) else sqnr)

    return sorted(tensors, key=key)


def _render_gate_result(
    result: dict[str, Any], what: str, gates: list[Any], every_tensor: bool = False
) -> None:
    """The failing tensors (with ``every_tensor``: all of them, worst first) and a verdict."""
    from rich.table import Table

    console = _stderr_console()
    failing = [t for t in result["tensors"] if t["failed"]]
    rows = _worst_first(result["tensors"]) if every_tensor else failing
    if rows:
        title = "per-tensor error, worst first" if every_tensor else "failing tensors"
        table = Table(title=title, title_justify="left")
        for column in ("tensor", "SQNR dB", "max abs error", "MSE", "failed"):
            table.add_column(
                column,
                justify="left" if column in ("tensor", "failed") else "right",
                overflow="fold",
            )
        for t in rows:
            mse = "-" if t["mse"] is None else _fmt_metric(t, "max_mse", gates)
            table.add_row(
                t["name"],
                _fmt_metric(t, "min_sqnr", gates),
                _fmt_metric(t, "max_abs_error", gates),
                mse,
                "; ".join(t["failed"]) or "-",
            )
        console.print(table)
    verdict = "PASSED" if result["passed"] else "FAILED"
    console.print(
        f"{verdict}: {what}, {len(result['tensors'])} tensors, {len(failing)} failing",
        highlight=False,
    )


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--against", type=click.Path(path_type=Path), help="Recompute every error from this original."
)
@_gate_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.pass_context
def verify(
    ctx: click.Context,
    artifact: Path,
    against: Path | None,
    min_sqnr: float | None,
    max_abs_error: float | None,
    gate_specs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check ARTIFACT: structure, checksums and (with gates) each tensor's error; 1 on failure."""
    from qcompress import api
    from qcompress.checks.gates import build_gates

    gates = build_gates(min_sqnr, max_abs_error, gate_specs)
    result = api.verify(artifact, against=against, gates=gates)
    if as_json:
        _echo_json(result)
    _render_gate_result(result, f"{len(result['checksums']['failed'])} checksum failures", gates)
    if not result["passed"]:
        ctx.exit(1)


@cli.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@_gate_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.pass_context
def compare(
    ctx: click.Context,
    a: Path,
    b: Path,
    min_sqnr: float | None,
    max_abs_error: float | None,
    gate_specs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Per-tensor error of B against A (any formats, artifacts dequantized); exit 1 on failure."""
    from qcompress import api
    from qcompress.checks.gates import build_gates

    gates = build_gates(min_sqnr, max_abs_error, gate_specs)
    result = api.compare(a, b, gates=gates)
    if as_json:
        _echo_json(result)
    _render_gate_result(result, f"{b} against {a}", gates, every_tensor=not as_json)
    for side, label in (("a_only", str(a)), ("b_only", str(b))):
        for t in result.get("unpaired", {}).get(side, []):
            click.echo(f"unpaired in {label}: {t['name']}: {t['reason']}", err=True)
    if not result["passed"]:
        ctx.exit(1)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "--to",
    "to",
    type=click.Choice(["gguf", "compressed-tensors"]),
    required=True,
    help="Target format: one GGUF file, or a compressed-tensors checkpoint folder.",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Output file or folder."
)
@click.option(
    "--type",
    "type_",
    metavar="T",
    help="GGUF type: Q4_K (default), Q5_K, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16, F32, auto.",
)
@click.option("--bits", type=int, help="Bits per weight (GGUF: 4/5/6/8 -> Q4_K/Q5_K/Q6_K/Q8_0).")
@click.option("--arch", metavar="A", help="GGUF general.architecture [default: qcompress].")
@click.option(
    "--target-bpw", type=float, metavar="X", help="With --type auto: bits per weight to allocate."
)
@click.option("--group-size", type=int, metavar="G", help="compressed-tensors: group size.")
@click.option(
    "--scheme",
    type=click.Choice(["symmetric", "affine"]),
    help="compressed-tensors: symmetric or asymmetric (affine) weights.",
)
@click.option("--no-fallback", is_flag=True, help="Exit 2 if any tensor would fall back.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def export(
    input_path: Path,
    to: str,
    output: Path,
    type_: str | None,
    bits: int | None,
    arch: str | None,
    target_bpw: float | None,
    group_size: int | None,
    scheme: str | None,
    no_fallback: bool,
    as_json: bool,
    force: bool,
) -> None:
    """Export INPUT (weight file or artifact) for llama.cpp/ComfyUI (GGUF) or transformers."""
    from qcompress import api

    result = api.export(
        input_path,
        output,
        to=to,
        type_=type_,
        bits=bits,
        arch=arch,
        target_bpw=target_bpw,
        no_fallback=no_fallback,
        group_size=group_size,
        symmetric=None if scheme is None else scheme == "symmetric",
        force=force,
    )
    if as_json:
        _echo_json(result)
        return
    console = _stderr_console()
    if isinstance(result, dict) and result.get("format") == "gguf":
        for f in result["fallbacks"]:
            console.print(
                f"fallback: {f['name']}: {f['wanted']} -> {f['used']} "
                f"(+{f['extra_bits_per_weight']:.2f} bits per weight): {f['reason']}",
                highlight=False,
            )
        t = result["totals"]
        bpw = t["quantized_bits_per_weight"]
        console.print(
            f"wrote {result['output']} (GGUF {result['type']}, {t['tensors']} tensors, "
            f"{_fmt_bytes(t['bytes'])}"
            + (f", {bpw:.3f} bits per quantized weight" if bpw is not None else "")
            + f", {t['fallbacks']} fallback(s)); verified with gguf's decoder",
            highlight=False,
        )
    else:
        console.print(f"wrote {output}", highlight=False)
