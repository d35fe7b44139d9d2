"""The import graph of the installed ``sparkzoo`` package: no cycles, and stages do not import each other.

A circle of imports works only as long as nobody reorders a module's top (whichever module Python
enters first sees the other half-initialised), and a stage that imports another stage drags that
stage's whole world into its own; both make a module impossible to read or move alone. So every module
of the package is parsed (never imported: a module that fails to import still has its edges checked)
and every import statement counts, the ones inside functions too: a lazy import that closes a circle
only postpones the half-initialised module to the call.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import pytest

PACKAGE = "sparkzoo"
# The wheel lays these out under sparkzoo/ from top-level folders (pyproject's package-dir), so an editable
# install's sparkzoo/ folder does not hold them and pkgutil cannot list them from sparkzoo.__path__.
SUBPACKAGES = ("pipelines", "models", "jobs")
# One per ``sparkzoo`` command that does a step of the pipeline (a package stage means all its modules).
# drift, monitoring, scoring and inference_path are libraries those stages share, not stages.
STAGES = tuple(f"{PACKAGE}.pipelines.{s}" for s in ("prepare", "train", "score", "promote", "baselines", "lineage"))
# What runs the stages in sequence is allowed to import them: the command line and the zoo runner.
RUNNERS = (f"{PACKAGE}.jobs", f"{PACKAGE}.pipelines.zoo")


def _walk(name: str, folder: Path, found: dict[str, tuple[Path, bool]]) -> None:
    """``pkgutil.walk_packages`` without importing anything: every module and package under ``folder``."""
    found[name] = (folder / "__init__.py", True)
    for info in pkgutil.iter_modules([str(folder)]):
        child = f"{name}.{info.name}"
        if info.ispkg:
            _walk(child, folder / info.name, found)
        else:
            found[child] = (folder / f"{info.name}.py", False)


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (its file, whether it is a package), for the installed package."""
    top = importlib.util.find_spec(PACKAGE)
    found: dict[str, tuple[Path, bool]] = {}
    _walk(PACKAGE, Path(top.origin).parent, found)
    for sub in SUBPACKAGES:
        spec = importlib.util.find_spec(f"{PACKAGE}.{sub}")
        assert spec is not None and spec.submodule_search_locations, f"{PACKAGE}.{sub} is not installed as a package"
        _walk(f"{PACKAGE}.{sub}", Path(list(spec.submodule_search_locations)[0]), found)
    return {name: where for name, where in found.items() if where[0].exists()}


def _base(module: str, is_package: bool, level: int) -> str:
    """The package a relative import of ``level`` dots starts from."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(parts) - 1:
        raise ImportError(f"{module}: relative import beyond the top-level package")
    return ".".join(parts[: len(parts) - (level - 1)])


def imports_of(module: str, file: Path, is_package: bool, known: set[str]) -> set[str]:
    """The package modules ``module`` imports, at the top or inside functions. ``from pkg import name`` is
    an import of ``pkg.name`` when that is a module of the package, else of ``pkg`` itself."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = _base(module, is_package, node.level)
                source = f"{base}.{source}" if source else base
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != module)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imports_of(name, file, is_pkg, known) for name, (file, is_pkg) in modules.items()}


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each sorted: the modules that
    import each other, directly or around a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:   # recursion depth is bounded by the module count (a few hundred)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected set: a shortest way from its first module back to itself."""
    return [_circle(graph, set(members)) for members in components(graph)]


def _circle(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """One shortest path back to the start from the component's first member: a circle to read."""
    start = min(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return sorted(members)


def _short(name: str) -> str:
    return name.removeprefix(f"{PACKAGE}.")


def _stage_of(module: str) -> str | None:
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), None)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_walks_the_whole_package(graph):
    """The walk finds the package's modules, relative imports included (a walker that found nothing
    would pass every other test here)."""
    assert f"{PACKAGE}.pipelines.scoring" in graph and f"{PACKAGE}.models.tasks.base" in graph
    assert f"{PACKAGE}.pipelines.scoring" in graph[f"{PACKAGE}.pipelines.score"]
    assert len(graph) > 60


def test_walks_every_package_the_wheel_declares(graph):
    """A new subpackage outside ``SUBPACKAGES`` would otherwise go unchecked in an editable install."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    setup = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    roots = setup["package-dir"]

    def folder(package: str) -> Path:
        root = max((r for r in roots if package == r or package.startswith(r + ".")), key=len)
        return pyproject.parent / roots[root] / package[len(root):].lstrip(".").replace(".", "/")

    with_code = {p for p in setup["packages"] if (folder(p) / "__init__.py").exists()}
    assert with_code and sorted(with_code - set(graph)) == []


def test_relative_imports_resolve():
    assert _base("sparkzoo.pipelines.score", False, 1) == "sparkzoo.pipelines"
    assert _base("sparkzoo.pipelines.score", False, 2) == "sparkzoo"
    assert _base("sparkzoo.pipelines.prepare", True, 1) == "sparkzoo.pipelines.prepare"
    assert _base("sparkzoo.pipelines.prepare", True, 2) == "sparkzoo.pipelines"


def test_cycle_finder_reports_lazy_circles(tmp_path):
    """A circle closed by an import inside a function is a circle; ``from pkg import mod`` is the module."""
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("from p import a\nimport p\n")
    (pkg / "d.py").write_text("from .a import thing\n")
    found: dict[str, tuple[Path, bool]] = {}
    _walk("p", pkg, found)
    g = {n: imports_of(n, f, is_pkg, set(found)) for n, (f, is_pkg) in found.items()}
    assert g["p.c"] == {"p.a", "p"} and g["p.d"] == {"p.a"}
    assert cycles(g) == [["p.a", "p.b", "p.c", "p.a"]]


def test_no_import_cycles(graph):
    found = components(graph)
    assert not found, "import cycles (a circle, then every module of its strongly connected set):\n" + "\n".join(
        f"  {' -> '.join(_short(m) for m in _circle(graph, set(members)))}\n"
        f"    ({', '.join(_short(m) for m in members)})" for members in found)


def test_stages_do_not_import_each_other(graph):
    """A stage shares code with another through a library (scoring, drift, monitoring, dataset, ...), never
    by importing it; only the runners (command line, zoo) import stages, and no library does."""
    wrong = sorted(f"{_short(src)} -> {_short(dst)}" for src, targets in graph.items() for dst in targets
                   if _stage_of(dst) is not None and _stage_of(dst) != _stage_of(src)
                   and not any(src == r or src.startswith(r + ".") for r in RUNNERS))
    assert not wrong, "imports of a stage from outside it:\n" + "\n".join("  " + w for w in wrong)
