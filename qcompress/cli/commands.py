"""The commands: each parses its options, makes one :mod:`qcompress.api` call and renders the
result (``render``). Errors are not handled here; the group's boundary converts them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qcompress.cli import render
from qcompress.cli.options import (
    LazyChoice,
    gate_options,
    output_options,
    quantize_options,
    quantize_settings,
)
from qcompress.cli.progress import progress


def _api() -> Any:
    from qcompress import api

    return api


def _path(**kwargs: Any) -> click.Path:
    return click.Path(path_type=Path, **kwargs)


@click.command()
@click.argument("input_path", metavar="INPUT", type=_path())
@click.option(
    "-o", "--output", type=_path(), help="Artifact path [default: INPUT with .qc.safetensors]."
)
@quantize_options
@click.option(
    "--report", "report_path", type=_path(), help="Report path [default: artifact path with .json]."
)
@click.option(
    "--html",
    "html_path",
    type=_path(),
    metavar="OUT.html",
    help="Also write the report as one self-contained HTML page.",
)
@output_options("Print the report as JSON on stdout.", True, "Overwrite existing outputs.")
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
@click.pass_context
def quantize(
    ctx: click.Context,
    input_path: Path,
    html_path: Path | None,
    as_json: bool,
    quiet: bool,
    **params: Any,
) -> None:
    """Quantize INPUT into an artifact and a JSON report.

    INPUT is a .npz, Keras .h5/.weights.h5/.keras (zip or folder), .safetensors or .onnx file,
    or a sharded safetensors checkpoint (its *.safetensors.index.json or the folder holding it;
    then -o names the output folder).
    """
    api = _api()
    api.keep_freed_memory()
    options = quantize_settings(ctx, params)
    params["report"] = params.pop("report_path")  # left: api.quantize_file's run options
    if html_path is not None:
        _check_html_output(html_path, input_path, params)
    with progress(not (quiet or as_json)) as bar:
        result = api.quantize_file(input_path, options, progress=bar, **params)
    if html_path is not None:
        api.write_html(result.report, html_path, force=True)  # checked before quantizing
    if as_json:
        render.echo_json(result.report)
    reports = result.report["shards"] if result.report_path is None else [result.report]
    render.warn(w for r in reports for w in r.get("warnings", []))
    if quiet:
        return
    if result.report_path is None:  # a share of a sharded checkpoint: one line per shard
        for shard_report in result.report["shards"]:
            render.totals(shard_report, f"artifact: {shard_report['artifact']['path']}")
    else:
        render.quantize_summary(result)


def _check_html_output(html_path: Path, input_path: Path, run: dict[str, Any]) -> None:
    """Refuse --html before quantizing, as the other outputs are: not over an input or another
    output, not over an existing file without --force, and only where there is a whole report."""
    api = _api()
    if run["shard"] is not None:
        raise api.UsageError(
            f"{html_path}: --html needs the whole report; pass it with --merge, or run "
            "qcompress report REPORT.json --html OUT.html"
        )
    artifact, report = api.default_outputs(input_path, run["output"], run["report"])
    api.check_outputs([html_path], [input_path, artifact, report], run["force"])


@click.command()
@click.argument("artifact", type=_path())
@click.option(
    "-o",
    "--output",
    type=_path(),
    required=True,
    help="Output file: .npz, .h5, .safetensors or .onnx.",
)
@click.option(
    "--dtype",
    type=LazyChoice(lambda: _api().OUTPUT_DTYPES),
    default="original",
    show_default=True,
    help="Dtype of the rebuilt float tensors.",
)
@output_options("Print a JSON summary on stdout.", True, "Overwrite an existing output.")
def dequantize(
    artifact: Path, output: Path, dtype: str, as_json: bool, quiet: bool, force: bool
) -> None:
    """Rebuild a float weight file from ARTIFACT, in the format OUTPUT's suffix names."""
    api = _api()
    api.keep_freed_memory()
    with progress(not (quiet or as_json)) as bar:
        result = api.dequantize_file(artifact, output, dtype=dtype, force=force, progress=bar)
    if as_json:
        render.echo_json(result.as_dict())
    render.warn(result.notes, prefix="note")
    if not quiet:
        render.say(
            f"wrote {result.output} ({result.format}, {result.tensors} tensors, "
            f"{render.fmt_bytes(result.bytes)})"
        )


@click.command()
@click.argument("path", metavar="FILE", type=_path())
@output_options("Print JSON instead of a table.")
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
    if histogram or errors:
        _inspect_plot(path, as_json, tensor_name, histogram, errors)
        return
    result = _api().inspect(path)
    if tensor_name is not None:
        result = result.only(tensor_name)
    if as_json:
        render.echo_json(result.as_dict())
    else:
        render.inspect_table(result)


def _inspect_plot(
    path: Path, as_json: bool, tensor_name: str | None, histogram: bool, errors: bool
) -> None:
    """inspect --histogram / --errors: the data from qcompress.histogram, drawn by ``plots``.
    JSON takes the default number of bins: the document does not depend on the terminal."""
    api = _api()
    if histogram and errors:
        raise api.UsageError("--histogram and --errors: give one of them")
    if histogram and tensor_name is None:
        raise api.UsageError(f"{path}: --histogram needs --tensor NAME")
    if errors and tensor_name is not None:
        raise api.UsageError(f"{path}: --errors shows every tensor; drop --tensor")
    if as_json:
        data = (
            api.tensor_histogram(path, tensor_name).as_dict()
            if histogram
            else api.errors_worst_first(path)
        )
        render.echo_json(data)
        return
    from qcompress.cli import plots

    out = render.stdout_console()
    fancy = plots.is_fancy(out)
    if histogram:
        bins = min(max(out.width - plots.MARGIN - 1, 20), 120) if fancy else None
        h = api.tensor_histogram(path, tensor_name, bins=bins)
        plots.print_lines(out, plots.histogram_lines(h, fancy=fancy))
    else:
        rows = api.errors_worst_first(path)
        plots.print_lines(out, plots.error_lines(rows, fancy=fancy, width=out.width))


@click.command()
@click.argument("report_path", metavar="REPORT.json", type=_path())
@click.option(
    "--html",
    "html_path",
    type=_path(),
    metavar="OUT.html",
    required=True,
    help="Write the report as one self-contained HTML page.",
)
@click.option(
    "--verify",
    "verify_path",
    type=_path(),
    metavar="VERIFY.json",
    help="Show the gates of a `qcompress verify --json` result of the same artifact.",
)
@output_options(force_help="Overwrite an existing OUT.html.")
def report(report_path: Path, html_path: Path, verify_path: Path | None, force: bool) -> None:
    """Render REPORT.json (from quantize) as an HTML page: what compression cost, per tensor."""
    out = _api().write_html_report(report_path, html_path, verify_path=verify_path, force=force)
    render.say(f"wrote {out}")


@click.command()
@click.argument("artifact", type=_path())
@click.option("--against", type=_path(), help="Recompute every error from this original.")
@gate_options
@output_options("Print one JSON document on stdout.")
@click.pass_context
def verify(
    ctx: click.Context,
    artifact: Path,
    against: Path | None,
    gates: list[Any],
    as_json: bool,
) -> None:
    """Check ARTIFACT: structure, checksums and (with gates) each tensor's error; 1 on failure."""
    result = _api().verify(artifact, against=against, gates=gates)
    if as_json:
        render.echo_json(result.as_dict())
    render.gate_result(result, f"{len(result.checksums.failed)} checksum failures", gates)
    if not result.passed:
        ctx.exit(1)


@click.command()
@click.argument("a", type=_path())
@click.argument("b", type=_path())
@gate_options
@output_options("Print one JSON document on stdout.")
@click.pass_context
def compare(
    ctx: click.Context,
    a: Path,
    b: Path,
    gates: list[Any],
    as_json: bool,
) -> None:
    """Per-tensor error of B against A (any formats, artifacts dequantized); exit 1 on failure."""
    result = _api().compare(a, b, gates=gates)
    if as_json:
        render.echo_json(result.as_dict())
    render.gate_result(result, f"{b} against {a}", gates, every_tensor=not as_json)
    if result.unpaired is not None:
        for side, label in ((result.unpaired.a_only, a), (result.unpaired.b_only, b)):
            for t in side:
                click.echo(f"unpaired in {label}: {t.name}: {t.reason}", err=True)
    if not result.passed:
        ctx.exit(1)


@click.command()
@click.argument("input_path", metavar="INPUT", type=_path())
@click.option(
    "--to",
    "to",
    type=LazyChoice(lambda: list(_api().EXPORT_TARGETS)),
    required=True,
    help="Target format: one GGUF file, or a compressed-tensors checkpoint folder.",
)
@click.option("-o", "--output", type=_path(), required=True, help="Output file or folder.")
@click.option(
    "--type",
    "type_",
    metavar="T",
    help="GGUF type: Q4_K (default), Q5_K, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, F16, "
    "F32, auto.",
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
@output_options("Print the result as JSON on stdout.", force_help="Overwrite an existing output.")
def export(
    input_path: Path, output: Path, scheme: str | None, as_json: bool, **params: Any
) -> None:
    """Export INPUT (weight file or artifact) for llama.cpp/ComfyUI (GGUF) or transformers."""
    symmetric = None if scheme is None else scheme == "symmetric"
    result = _api().export(input_path, output, symmetric=symmetric, **params)
    if as_json:
        render.echo_json(result)
    else:
        render.export_summary(result, output)


COMMANDS = (quantize, dequantize, inspect, report, verify, compare, export)
