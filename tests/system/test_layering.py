"""The package's layering, read from the source: every import in ``bnnmip/`` (function-level ones
included) goes down or sideways within its own layer, and no two modules import each other in a cycle.

    errors, files, status, timing, validate, version, progress  →  network, threads, float32, fused
    →  io | bounds, box  →  milp  →  backends  →  attacks  →  bench  →  cli (and the package's own
    ``__init__``, ``__main__``)

Imports under ``if TYPE_CHECKING:`` are annotations only (never executed) and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "bnnmip"

# (rank, group): an import must go to a lower rank, or stay inside its own group.
LAYERS = [
    ("base", ("errors", "files", "status", "timing", "validate", "version", "progress")),
    ("network", ("network", "threads", "float32", "fused", "kernel", "fastpath", "_kernel")),
    ("io", ("io",)),
    ("bounds", ("bounds", "box")),
    ("milp", ("milp",)),
    ("backends", ("backends",)),
    ("attacks", ("attacks", "verify")),
    ("bench", ("bench",)),
    ("cli", ("cli", "__init__", "__main__")),
]
RANK = {"base": 0, "network": 1, "io": 2, "bounds": 2, "milp": 3, "backends": 4, "attacks": 5, "bench": 6, "cli": 7}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def group_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts or parts[-1] == "__main__":  # the package itself and every entry point sit on top
        return "cli"
    for group, heads in LAYERS:
        if parts[0] in heads:
            return group
    raise AssertionError(f"{module}: not placed in a layer (add it to LAYERS)")


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported bnnmip module) for every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "bnnmip"]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            if target.split(".")[0] != "bnnmip":
                continue
            for alias in node.names:  # "from . import backends" imports a module
                candidate = f"{target}.{alias.name}"
                out.append((node.lineno, candidate if _is_module(candidate) else target))
    return out


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, list[tuple[int, str]]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_respects_the_layers():
    wrong = []
    for module, imports in graph().items():
        group = group_of(module)
        for line, target in imports:
            other = group_of(target)
            if other != group and RANK[other] >= RANK[group]:
                wrong.append(f"{module}:{line} ({group}) imports {target} ({other})")
    assert wrong == [], "\n".join(wrong)


def test_no_import_cycle():
    edges = {m: sorted({t for _, t in imports if t != m}) for m, imports in graph().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for child in edges.get(node, []):
            if state.get(child) == 1:
                return path[path.index(child):] + [child] if child in path else [node, child]
            if child not in state:
                found = visit(child, path + [child])
                if found:
                    return found
        state[node] = 2
        return None

    for module in edges:
        if module not in state:
            cycle = visit(module, [module])
            assert cycle is None, " -> ".join(cycle)


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a function-level relative import is found and resolved."""
    imports = dict((t, n) for n, t in imports_of(PACKAGE / "milp" / "lp_bounds.py"))
    assert "bnnmip.milp.backend" in imports and "bnnmip.box" in imports
    assert group_of("bnnmip.milp.model") == "milp" and group_of("bnnmip.bench.__main__") == "cli"
