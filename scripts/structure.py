"""Print the package's structure figures: import cycles (imports inside functions
included), imports of another module's private names, modules over 700 lines and
functions over 80 lines.  Exit 1 when a rule of docs/CONTRIBUTING.md is broken.

Usage: python scripts/structure.py [--graph]
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "bigskies_ops"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80
MAX_LONG_FUNCTIONS = 3
# Imports run downward only (DESIGN.md, "the layered target"): a module may import its own
# layer and the layers below it.  Top-level modules (errors, inventory, signals, report, output,
# safety, text) are the bottom layer; dev/ (sample data, sandbox clusters) is for the demo and
# the tests and no product module imports it.
LAYERS = {"": 0, "hosts": 1, "pg": 2, "archives": 3, "jobs": 4, "stack": 5, "dev": 5, "cli": 6}


def layer(mod: str) -> str:
    if mod.endswith(".__main__") or mod == "bigskies_ops.entry":  # entry points: they run the CLI
        return "cli"
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, Path]):
    """Yield (importer, imported module, imported name or None, line)."""
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith(PACKAGE):
                        yield mod, a.name, None, node.lineno
            elif isinstance(node, ast.ImportFrom):
                target = resolve(mod, is_pkg, node)
                if not target.startswith(PACKAGE):
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in mods:
                        yield mod, sub, None, node.lineno
                    else:
                        yield mod, target, a.name, node.lineno


def graph(mods):
    g: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for mod, target, name, line in imports(mods):
        # importing a package runs its __init__ only; count the edge to the module itself
        if target in mods and target != mod:
            g[mod].add(target)
        if name and name.startswith("_") and not name.startswith("__") and target != mod:
            private.append(f"{mod}:{line} imports {target}.{name}")
    return g, private


def cycles(g) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def long_functions(mods):
    found = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    found.append((n, f"{mod}.{node.name}"))
    return sorted(found, reverse=True)


def main(argv: list[str]) -> int:
    mods = modules()
    g, private = graph(mods)
    cyc = cycles(g)
    big = sorted(((len(p.read_text().splitlines()), m) for m, p in mods.items()), reverse=True)
    big = [(n, m) for n, m in big if n > MAX_MODULE_LINES]
    longf = long_functions(mods)
    upward = sorted(f"{m} -> {t}" for m in g for t in g[m]
                    if LAYERS[layer(t)] > LAYERS[layer(m)] or (layer(t) == "dev" and layer(m) != "dev"))
    print(f"modules: {len(mods)}, lines: {sum(len(p.read_text().splitlines()) for p in mods.values())}")
    print(f"import cycles: {len(cyc)}" + "".join(f"\n  {len(c)} modules: {', '.join(c)}" for c in cyc))
    print(f"imports against the layer order: {len(upward)}" + "".join(f"\n  {u}" for u in upward))
    print(f"imports of another module's private names: {len(private)}" + "".join(f"\n  {p}" for p in private))
    print(f"modules over {MAX_MODULE_LINES} lines: {len(big)}" + "".join(f"\n  {m}: {n}" for n, m in big))
    print(f"functions over {MAX_FUNCTION_LINES} lines: {len(longf)} (at most {MAX_LONG_FUNCTIONS})"
          + "".join(f"\n  {m}: {n}" for n, m in longf))
    if "--graph" in argv:
        for m in sorted(g):
            print(f"{m} -> {', '.join(sorted(g[m]))}")
    bad = cyc or upward or private or big or len(longf) > MAX_LONG_FUNCTIONS
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
