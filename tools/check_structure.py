"""Structure targets of keras_tl/ (issue 14), checked from the source alone (ast, no imports):

- no import cycle between keras_tl's modules, counting every ``import keras_tl.x`` and
  ``from keras_tl[.x] import y`` edge, at module level and inside functions alike;
- no function (or method, or nested function) longer than MAX_FUNCTION_LINES lines, ``def`` to last line.

    python tools/check_structure.py [package_dir]     # prints each problem; exit status 1 if any

tests/test_structure.py runs it on keras_tl/ and on small packages of its own that break each rule.
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Dict, List, Set

MAX_FUNCTION_LINES = 80


def _modules(package_dir: str) -> Dict[str, str]:
    """Dotted module name → file, for every .py file below ``package_dir`` (a package named after it)."""
    root = os.path.dirname(os.path.abspath(package_dir))
    out = {}
    for dirpath, _, files in os.walk(package_dir):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = path
    return out


def import_edges(package_dir: str) -> Dict[str, Set[str]]:
    """Module → the package's modules it imports anywhere in its body (``from pkg import name``
    counts as the submodule pkg.name when that is a module, else as pkg itself)."""
    modules = _modules(package_dir)
    top = os.path.basename(os.path.abspath(package_dir))
    edges: Dict[str, Set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
            else:
                continue
            edges[mod].update(t for t in targets if (t == top or t.startswith(top + ".")) and t in modules and t != mod)
    return edges


def find_cycle(edges: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(m: str) -> List[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return []

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def long_functions(package_dir: str, limit: int = MAX_FUNCTION_LINES) -> List[str]:
    """``file:line name (N lines)`` for every function longer than ``limit`` lines."""
    out = []
    for path in sorted(_modules(package_dir).values()):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path}:{node.lineno} {node.name} ({n} lines, limit {limit})")
    return out


def problems(package_dir: str) -> List[str]:
    cycle = find_cycle(import_edges(package_dir))
    return ([f"import cycle: {' -> '.join(cycle)}"] if cycle else []) + long_functions(package_dir)


def main(argv: List[str]) -> int:
    package_dir = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "keras_tl")
    found = problems(package_dir)
    for p in found:
        print(p)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
