"""The package's import layering, read from the source with ``ast`` so it stays true.

Every ``import`` and ``from ... import`` in every module counts, function-level (lazy) ones
included: a lazy import still makes the lower module depend on the higher one. Only imports under
``if TYPE_CHECKING:`` are left out: they name types for annotations and never run. Two rules:
no import cycle between modules, and no import from a higher layer than the importer's, in the
order cli -> api -> (quantize | dequantize | checks | exports | inspect | html) -> (artifact |
formats | report) -> engine. ``config``, ``errors``, ``atomic``, ``malloc`` and ``documents``
are utilities any layer may use; they import only each other and the engine's table
(``engine.spec``). The CLI is stricter: it imports the api and itself, nothing else (no utility
either), so everything it shows comes through the facade Python users call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "qcompress"
PACKAGE = "qcompress"

# Layer of each module, by the longest matching module prefix; higher imports lower only.
LAYERS: dict[str, int] = {
    "qcompress.engine": 1,
    "qcompress.artifact": 2,
    "qcompress.formats": 2,
    "qcompress.report": 2,
    "qcompress.quantize": 3,
    "qcompress.checks": 3,
    "qcompress.exports": 3,
    "qcompress.inspect": 3,
    "qcompress.dequantize": 3,
    "qcompress.histogram": 3,  # inspect-side: per-tensor histograms
    "qcompress.html": 3,
    "qcompress.layer_kind": 3,  # html-side: a tensor's layer kind for the charts
    "qcompress.api": 4,
    "qcompress.cli": 5,
    "qcompress.__main__": 5,
}
UTILITIES: dict[str, tuple[str, ...]] = {
    # utility module -> the only modules it may import
    "qcompress.errors": (),
    "qcompress.documents": (),  # typed results to JSON documents, at the edge
    "qcompress.malloc": (),  # malloc tuning; only the CLI calls it (through api)
    "qcompress.atomic": ("qcompress.errors",),
    "qcompress.config": ("qcompress.errors", "qcompress.engine.spec"),
}
ONLY: dict[str, tuple[str, ...]] = {
    # module prefix -> the only module prefixes it may import, whatever their layer
    "qcompress.cli": ("qcompress.cli", "qcompress.api"),
    "qcompress.__main__": ("qcompress.cli",),
}
# The package root holds ``__version__`` (imported everywhere) and a lazy ``qcompress.api``
# attribute for ``import qcompress``; it is a facade above the graph, not a node in it.
OUTSIDE = ("qcompress",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (``from pkg import mod``
    counts as importing ``pkg.mod`` when that is a module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name and m not in OUTSIDE}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    graph = {n: imports_of(n, p, known) for n, p in modules.items() if n not in OUTSIDE}
    return graph


def layer_of(name: str) -> int | None:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)
    return None if best is None else LAYERS[best]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer, or out of what a utility may import."""
    problems = []
    for name, targets in sorted(graph.items()):
        if name in UTILITIES:
            bad = sorted(t for t in targets if t not in UTILITIES[name])
            problems += [f"{name} (a utility) imports {t}" for t in bad]
            continue
        only = next((v for k, v in ONLY.items() if name == k or name.startswith(k + ".")), None)
        if only is not None:
            bad = sorted(
                t for t in targets if not any(t == o or t.startswith(o + ".") for o in only)
            )
            problems += [f"{name} may import only {', '.join(only)}, not {t}" for t in bad]
        mine = layer_of(name)
        if mine is None:
            problems.append(f"{name} has no layer: add it to LAYERS or UTILITIES")
            continue
        for target in sorted(targets):
            theirs = 0 if target in UTILITIES else layer_of(target)
            if theirs is None or theirs > mine:
                problems.append(f"{name} (layer {mine}) imports {target} (layer {theirs})")
    return problems


def test_no_import_cycles() -> None:
    assert find_cycle(import_graph()) is None


def test_no_upward_imports() -> None:
    assert layering_violations(import_graph()) == []


def test_artifact_imports_only_engine_formats_errors() -> None:
    """The container knows nothing of how tensors were chosen (no policy, no report)."""
    allowed = ("qcompress.artifact", "qcompress.engine", "qcompress.formats", "qcompress.errors")
    graph = import_graph()
    outside = {
        (n, t)
        for n, targets in graph.items()
        if n.startswith("qcompress.artifact")
        for t in targets
        if not t.startswith(allowed) and t != "qcompress.atomic"
    }
    assert outside == set()


def test_the_checks_can_fail() -> None:
    """The checker itself, on synthetic graphs: a cycle, an upward import, a lazy import."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    upward = {"qcompress.engine.codec": {"qcompress.api"}, "qcompress.api": set()}
    assert layering_violations(upward) == [
        "qcompress.engine.codec (layer 1) imports qcompress.api (layer 4)"
    ]
    assert layering_violations({"qcompress.config": {"qcompress.formats"}}) == [
        "qcompress.config (a utility) imports qcompress.formats"
    ]
    # the CLI below the api: a lower layer and a utility are both refused, the api is not
    cli = {"qcompress.cli.render": {"qcompress.report", "qcompress.errors", "qcompress.api"}}
    assert layering_violations(cli) == [
        "qcompress.cli.render may import only qcompress.cli, qcompress.api, not qcompress.errors",
        "qcompress.cli.render may import only qcompress.cli, qcompress.api, not qcompress.report",
    ]


def test_function_level_imports_count(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from qcompress import html\n"
        "def f():\n    from qcompress import api\n    import qcompress.cli\n"
    )
    known = {"qcompress.api", "qcompress.cli", "qcompress.engine", "qcompress.html"}
    assert imports_of("qcompress.engine", source, known) == {"qcompress.api", "qcompress.cli"}


@pytest.mark.parametrize("name", sorted(package_modules()))
def test_every_module_has_a_layer(name: str) -> None:
    assert name in OUTSIDE or name in UTILITIES or layer_of(name) is not None


def api_names_the_cli_uses() -> set[str]:
    """Every ``api.X`` and ``_api().X`` the CLI's source names (the CLI reaches the api lazily,
    by attribute, so neither ruff nor an import can tell a name the api lost)."""
    names = set()
    for path in sorted((ROOT / "cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value
            if (isinstance(base, ast.Name) and base.id == "api") or (
                isinstance(base, ast.Call)
                and isinstance(base.func, ast.Name)
                and base.func.id == "_api"
            ):
                names.add(node.attr)
    return names


def test_every_api_name_the_cli_uses_exists() -> None:
    from qcompress import api

    names = api_names_the_cli_uses()
    assert {"quantize_file", "UsageError", "check_outputs", "dumps"} <= names  # the scan works
    assert sorted(n for n in names if not hasattr(api, n)) == []


def test_tests_import_their_helpers_as_pytest_puts_them_on_the_path() -> None:
    """pytest puts ``tests/`` itself on sys.path (rootdir conftest), not the repository: a
    ``from tests.samples import ...`` works only where the repository happens to be importable
    (PYTHONPATH, an editable checkout) and fails on a fresh clone's ``make test``."""
    here = Path(__file__).resolve().parent
    offenders = [
        f"{path.name}:{node.lineno}"
        for path in sorted(here.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests"
    ]
    assert not offenders, f"import helpers as `from samples import ...`: {offenders}"
