"""The ``qcompress`` command: parse options, call one :mod:`qcompress.api` function, render.

Results go to stdout (exactly one JSON document with ``--json``); people-facing summaries go to
stderr. Errors are converted once, in ``_Group.invoke``, to a one-line message and an exit code.

The package: this module is the group and the one error boundary; ``commands`` holds the
commands (parse, one api call, render), ``options`` the option stacks they share, ``render`` the
tables and summaries, ``progress`` the progress bar and ``plots`` the terminal plots. Heavy
modules (numpy, h5py, rich, the api itself) are imported inside the commands, so ``--help``
stays instant.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from qcompress import __version__
from qcompress.cli import commands

EXIT_CODES_HELP = """\b
Exit status:
  0  success
  1  a quality gate failed (verify, compare)
  2  usage error or bad input (unreadable, corrupt, unsupported, NaN/Inf)"""


class _Failure(click.ClickException):
    """A QCompressError as click shows it: ``Error: message`` on stderr, the error's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Group(click.Group):
    """Converts every error a user can cause, once, into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return result
        except BrokenPipeError:
            # The reader of our stdout went away (``qcompress inspect F | head -3``): what it
            # wanted was printed, so this is a success, and nothing more may be written.
            _silence_stdout()
            raise click.exceptions.Exit(0) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; no output was written.", err=True)
            raise click.exceptions.Exit(130) from None
        except BaseException as e:
            if _from_api(e, "QCompressError"):
                raise _Failure(_one_line(str(e)), e.exit_code) from None  # type: ignore[attr-defined]
            if isinstance(e, OSError):
                where = f"{e.filename}: " if e.filename else ""
                raise _Failure(_one_line(f"{where}{e.strerror or e}"), 2) from None
            if _from_api(e, "Terminated"):  # SIGTERM, as the output writer raises it
                raise click.exceptions.Exit(143) from None
            raise


def _from_api(exc: BaseException, kind: str) -> bool:
    """Whether ``exc`` is the api's ``kind`` (``QCompressError``: an error a user can cause;
    ``Terminated``: SIGTERM). Only a command that imported the api can have raised either, so
    nothing is imported to find out otherwise."""
    if "qcompress.api" not in sys.modules:
        return False
    from qcompress import api

    return isinstance(exc, getattr(api, kind))


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


for _command in commands.COMMANDS:
    cli.add_command(_command)

main = cli  # the console-script entry point

__all__ = ["cli", "main"]
