"""PLAN.toml: a default recipe plus ordered rules that say, per tensor name, how to quantize.

    [default]                 # optional; overrides the command-line options
    bits = 4
    group_size = 128

    [[rule]]                  # rules are tried in order; the first whose glob matches wins
    match = "*embed*"         # a glob on tensor names, or a list of globs
    bits = 8

    [[rule]]
    match = ["*norm*", "lm_head.weight"]
    keep = true               # keep in float (keep = false quantizes even what --keep, 1-D or
                              # --min-elements would keep)

Settings combine as command-line options < ``[default]`` < the matching rule. A rule that matches
no tensor is a warning (returned, for the caller to show), not an error: the same plan serves
several models. Anything malformed is a :class:`UsageError` naming the file and the line.

Why a module of its own: parsing and validating the file is the part users get wrong, so it is
done once, up front, with messages that point at the line; the policy only asks "which rule
matches this name?".
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcompress.config import DEFAULTS, PLAN_DEFAULT_ONLY, PLAN_SETTINGS, check_pattern, name_matches
from qcompress.errors import UsageError

# Plan key -> QuantizeOptions field (the config table's). Rules accept SETTINGS plus "match"
# and "keep"; [default] accepts SETTINGS and DEFAULT_ONLY.
SETTINGS: dict[str, str] = PLAN_SETTINGS
DEFAULT_ONLY: dict[str, str] = PLAN_DEFAULT_ONLY
RULE_ONLY = ("match", "keep")
TOP_LEVEL = ("default", "rule")


@dataclass(frozen=True)
class Rule:
    """One ``[[rule]]``: its globs, the QuantizeOptions fields it sets, and where it is."""

    index: int  # 1-based, in file order
    line: int
    globs: tuple[str, ...]
    settings: tuple[tuple[str, Any], ...] = ()  # (QuantizeOptions field, value), file order
    keep: bool | None = None

    def matches(self, name: str) -> bool:
        return any(name_matches(name, g) for g in self.globs)

    def describe(self) -> str:
        globs = ", ".join(repr(g) for g in self.globs)
        return f"plan rule {self.index} (line {self.line}, match {globs})"


@dataclass(frozen=True)
class Plan:
    """A parsed PLAN.toml. ``default`` holds (QuantizeOptions field, value) pairs."""

    path: str
    default: tuple[tuple[str, Any], ...] = ()
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def rule_for(self, name: str) -> Rule | None:
        """The first rule whose glob matches ``name``, or None."""
        return next((r for r in self.rules if r.matches(name)), None)

    def sets(self, key: str) -> bool:
        """Whether ``[default]`` sets the QuantizeOptions field ``key``."""
        return any(k == key for k, _ in self.default)

    def warnings(self, names: Iterable[str]) -> list[str]:
        """One message per rule that decides no tensor among ``names`` (never matches, or only
        matches tensors an earlier rule already took)."""
        names = list(names)
        winners = {id(r) for n in names if (r := self.rule_for(n)) is not None}
        out = []
        for rule in self.rules:
            if id(rule) in winners:
                continue
            shadow = next((n for n in names if rule.matches(n)), None)
            if shadow is None:
                why = "matches no tensor"
            else:
                first = self.rule_for(shadow)
                assert first is not None
                why = f"matches only tensors an earlier rule takes (rule {first.index})"
            out.append(f"{self.path}: {rule.describe()} {why}")
        return out


def load_plan(path: str | Path) -> Plan:
    """Read and validate PLAN.toml; UsageError naming the file and line if it is invalid."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # a FIFO would block the read forever
            raise UsageError(f"{path}: not a regular file; give a plan .toml file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: plan file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read plan: {e}") from None
    return parse_plan(text, str(path))


def parse_plan(text: str, path: str = "<plan>") -> Plan:
    """Parse the text of a plan (``path`` only names it in messages)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: invalid TOML: {e}") from None
    except RecursionError:
        raise UsageError(
            f"{path}: arrays or tables nested too deeply to parse; a plan needs no nesting "
            "beyond [[rule]] tables"
        ) from None
    except ValueError as e:  # an integer too long to convert (over 4300 digits)
        raise UsageError(f"{path}: invalid value: {e}") from None
    lines = _Lines(text, path)
    for key in data:
        if key not in TOP_LEVEL:
            raise lines.error(
                f"unknown section or key {key!r} (a plan has [default] and [[rule]] entries)",
                lines.header(key) or lines.key_line(key, 1, len(lines.text)),
            )
    default = data.get("default", {})
    if not isinstance(default, dict):
        raise lines.error("'default' must be a table: [default]", lines.key_line("default"))
    start, end = lines.section("default")
    allowed = {**SETTINGS, **DEFAULT_ONLY}
    default_settings = _settings(default, allowed, lines, start, end, "[default]")
    rules_data = data.get("rule", [])
    if not isinstance(rules_data, list) or not all(isinstance(r, dict) for r in rules_data):
        raise lines.error("'rule' must be an array of tables: [[rule]]", lines.key_line("rule"))
    spans = lines.rule_spans(len(rules_data))
    rules = []
    for i, (raw, (start, end)) in enumerate(zip(rules_data, spans, strict=True), 1):
        rules.append(_rule(i, raw, lines, start, end))
    return Plan(path=path, default=default_settings, rules=tuple(rules))


def _rule(index: int, raw: dict[str, Any], lines: _Lines, start: int, end: int) -> Rule:
    where = f"rule {index}"
    if "match" not in raw:
        raise lines.error(f"{where} has no 'match' (a glob on tensor names)", start)
    globs = raw["match"]
    if isinstance(globs, str):
        globs = [globs]
    if not (isinstance(globs, list) and globs and all(isinstance(g, str) and g for g in globs)):
        raise lines.error(
            f"{where}: 'match' must be a glob or a list of globs, not {raw['match']!r}",
            lines.key_line("match", start, end),
        )
    for glob in globs:
        try:
            check_pattern(glob, f"{where}: match")
        except UsageError as exc:
            raise lines.error(str(exc), lines.key_line("match", start, end)) from None
    keep = raw.get("keep")
    if keep is not None and not isinstance(keep, bool):
        raise lines.error(
            f"{where}: 'keep' must be true or false, not {keep!r}",
            lines.key_line("keep", start, end),
        )
    body = {k: v for k, v in raw.items() if k not in RULE_ONLY}
    settings = _settings(body, SETTINGS, lines, start, end, where)
    if keep and settings:
        raise lines.error(
            f"{where}: keep = true leaves the tensor in float, so "
            f"{', '.join(k for k in body)} would have no effect; remove one or the other",
            start,
        )
    return Rule(index, start, tuple(globs), settings, keep)


def _settings(
    raw: dict[str, Any], allowed: dict[str, str], lines: _Lines, start: int, end: int, where: str
) -> tuple[tuple[str, Any], ...]:
    out = []
    for key, value in raw.items():
        line = lines.key_line(key, start, end)
        if key not in allowed:
            known = ", ".join([*allowed, *(RULE_ONLY if where != "[default]" else ())])
            raise lines.error(f"{where}: unknown key {key!r} (known: {known})", line)
        problem = _check_value(key, value)
        if problem:
            raise lines.error(f"{where}: {key} = {value!r}: {problem}", line)
        out.append((allowed[key], value))
    return tuple(out)


def _check_value(key: str, value: Any) -> str | None:
    """Why ``value`` is not valid for ``key``, or None if it is (the config table decides)."""
    return DEFAULTS[key].problem(value)


class _Lines:
    """Line numbers for what tomllib parsed (it reports them only for syntax errors)."""

    _HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_\-\"' .]+?)\s*\]\s*(#.*)?$")
    _ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_\-\"' .]+?)\s*\]\]\s*(#.*)?$")

    def __init__(self, text: str, path: str) -> None:
        self.text = text.splitlines()
        self.path = path

    def error(self, message: str, line: int | None) -> UsageError:
        where = f"line {line}: " if line else ""
        return UsageError(f"{self.path}: {where}{message}")

    def _headers(self) -> list[tuple[int, str, bool]]:
        """(1-based line, name, is [[array]]) of every table header."""
        out = []
        for i, text in enumerate(self.text, 1):
            if m := self._ARRAY_HEADER.match(text):
                out.append((i, m[1].strip("\"' "), True))
            elif m := self._HEADER.match(text):
                out.append((i, m[1].strip("\"' "), False))
        return out

    def header(self, name: str) -> int | None:
        return next((line for line, n, _ in self._headers() if n == name), None)

    def _end(self, line: int) -> int:
        """The last line of the section that starts at ``line``."""
        later = [h for h, _, _ in self._headers() if h > line]
        return later[0] - 1 if later else len(self.text)

    def section(self, name: str) -> tuple[int, int]:
        line = self.header(name)
        return (line, self._end(line)) if line else (1, len(self.text))

    def rule_spans(self, count: int) -> list[tuple[int, int]]:
        """(first, last) line of each [[rule]]; inline forms fall back to the 'rule' key."""
        starts = [line for line, n, array in self._headers() if n == "rule" and array]
        if len(starts) != count:
            line = self.key_line("rule") or 1
            return [(line, len(self.text))] * count
        return [(s, self._end(s)) for s in starts]

    def key_line(self, key: str, start: int = 1, end: int | None = None) -> int | None:
        """The first line in [start, end] that assigns ``key``, else ``start``."""
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        last = len(self.text) if end is None else end
        for i in range(max(start, 1), last + 1):
            if pattern.match(self.text[i - 1]):
                return i
        return start
