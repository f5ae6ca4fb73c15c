"""The package's house rules, drawn from its imports (issue 14, 'the house'): no import circles, and
io/ grouped by role with every module depending only downward.

Every import counts, including the lazy ones inside functions: a circle broken only by deferring an
import is still a circle in the design (a module that needs another at run time depends on it).
"""
import ast
from pathlib import Path

import deltaspec

PKG = Path(deltaspec.__file__).parent
# io/'s layers, bottom to top: a module may import its own layer or a lower one, never a higher one.
IO_LAYERS = ["files", "model", "algebra", "write", "formats", "<top>"]


def _module(path: Path) -> str:
    parts = ["deltaspec", *path.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [src] + [f"{src}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in mods and t != mod:
                    graph[mod].add(t)
    # a package's __init__ importing its own submodules is the package, not a dependency of them
    return graph


def _cycles(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop(); on.discard(w); comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _without_package_inits(graph):
    """Edges into a package's own __init__ from its submodules (`from . import x`) are kept; edges from an
    __init__ to its submodules are the package's public face and are dropped, so that `deltaspec/__init__`
    re-exporting `deltaspec.analysis` does not make every module that imports `deltaspec` a circle."""
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}


def test_no_import_circles():
    cycles = _cycles(_without_package_inits(_graph()))
    assert not cycles, "import circles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def _io_layer(mod: str):
    parts = mod.split(".")
    if parts[:2] != ["deltaspec", "io"]:
        return None
    return parts[2] if len(parts) > 2 and parts[2] in IO_LAYERS else "<top>"


def test_io_depends_only_downward():
    bad = []
    for mod, targets in _graph().items():
        lm = _io_layer(mod)
        if lm is None:
            continue
        for t in targets:
            lt = _io_layer(t)
            if lt is not None and IO_LAYERS.index(lt) > IO_LAYERS.index(lm):
                bad.append(f"{mod} → {t}")
    assert not bad, "io/ imports upward: " + ", ".join(sorted(bad))


def test_io_is_grouped_by_role():
    loose = sorted(p.name for p in (PKG / "io").glob("*.py") if p.name not in ("__init__.py", "detect.py"))
    assert not loose, f"modules outside io/'s role folders: {loose}"
