"""Every command and every option the CLI accepts is documented in README.md."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from qcompress.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _options() -> list[tuple[str, str]]:
    found = []
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                flag = max(param.opts, key=len)  # the long form
                found.append((name, flag))
    return found


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_command_is_documented(command: str) -> None:
    assert f"qcompress {command}" in README


@pytest.mark.parametrize(("command", "flag"), _options())
def test_option_is_documented(command: str, flag: str) -> None:
    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", README), f"{command} {flag}"
