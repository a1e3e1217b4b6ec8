"""The package layout holds: every module imports, and no two packages import each other (directly or round a loop).

Nodes are `aftertune`'s subpackages and top-level modules (`engines`, `suites`, `pipeline`, ...); an
edge A → B is any import of B anywhere in A, function-local and TYPE_CHECKING imports included, read
from the source with `ast`, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import aftertune

SRC = Path(aftertune.__file__).parent
OPTIONAL = {"vllm", "openai", "llama_cpp"}  # extras whose absence a module may report on import


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _unit(module: str) -> str | None:
    """The package-level node of `module`: aftertune.engines.hf → engines; None for `aftertune` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out.update(n for n in names if n == "aftertune" or n.startswith("aftertune."))
    return out


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in _modules().items():
        a = _unit(module)
        if a is None:
            continue
        graph.setdefault(a, set())
        for imported in _imports(path):
            b = _unit(imported)
            if b is not None and b != a:
                graph[a].add(b)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_loop_and_accepts_a_layering():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_package_import_graph_has_no_cycles():
    graph = package_graph()
    assert {"engines", "suites", "recipes", "trainsets", "variants", "sources"} <= set(graph)
    found = cycles(graph)
    detail = "; ".join(" ↔ ".join(c) for c in found)
    assert not found, f"import cycles between packages: {detail}"


def test_the_plain_engines_lean_on_nothing_above_them():
    allowed = {"engines", "errors", "fileio", "paths", "quiet", "registry", "sources"}
    assert package_graph()["engines"] <= allowed


def test_every_module_imports():
    failed = []
    for info in pkgutil.walk_packages(aftertune.__path__, "aftertune."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if exc.name not in OPTIONAL:
                failed.append(f"{info.name}: {exc}")
        except Exception as exc:  # report every broken module at once
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
    assert not failed, "\n".join(failed)


def _is_submodule(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent is a module, not a package
        return False


def test_every_name_imported_from_aftertune_exists():
    """`from aftertune.x import name` resolves everywhere, function-local imports included (ruff cannot see those)."""
    missing = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.startswith("aftertune")):
                continue
            try:
                target = importlib.import_module(node.module)
            except ModuleNotFoundError as exc:
                if exc.name in OPTIONAL:
                    continue
                raise
            for alias in node.names:
                if hasattr(target, alias.name) or _is_submodule(f"{node.module}.{alias.name}"):
                    continue
                missing.append(f"{module}:{node.lineno}: {node.module}.{alias.name}")
    assert not missing, "\n".join(missing)
