"""The package layers import one way (README, "Code map"), with no import cycles.

Layers, bottom first: the top-level helpers (``hfsnet.errors``, ``hfsnet.fsutil``), then
``data`` and ``models``, then ``train``, then ``transfer``, ``analysis`` and ``interop``, then
``cli``. A module may import its own package and any lower layer, never a sibling package of
its layer nor a higher one (the top-level helpers may use each other). Imports inside
functions count too: a late import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hfsnet"
LAYERS = {
    "errors": 0, "fsutil": 0, "textutil": 0,
    "data": 1, "models": 1,
    "train": 2,
    "transfer": 3, "analysis": 3, "interop": 3,
    "cli": 4, "__main__": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """``hfsnet.train.loop`` -> ``train``; ``hfsnet`` itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path, *, top_level_only: bool = False) -> set[str]:
    """hfsnet modules that ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    is_package = path.name == "__init__.py"
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from hfsnet.models import hfs`` may name a submodule
            found.update(f"{target}.{alias.name}" for alias in node.names
                         if (SRC.parent / f"{target}.{alias.name}".replace(".", "/")).exists()
                         or (SRC.parent / (f"{target}.{alias.name}".replace(".", "/") + ".py"))
                         .exists())
    return {name for name in found if name == "hfsnet" or name.startswith("hfsnet.")}


MODULES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer():
    packages = {package_of(module_name(p)) for p in MODULES} - {""}
    assert packages <= set(LAYERS), f"give these a layer: {packages - set(LAYERS)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_run_one_way(path):
    source = package_of(module_name(path))
    if source == "":  # hfsnet/__init__.py: the public names, from the bottom layers only
        allowed = {"errors", "fsutil", "models", "data"}
        bad = {t for t in imports_of(path) if package_of(t) not in allowed | {""}}
        assert not bad, f"hfsnet/__init__.py imports {sorted(bad)}"
        return
    upward = sorted(
        target for target in imports_of(path)
        if package_of(target) not in ("", source)
        and (LAYERS[package_of(target)] > LAYERS[source]
             or LAYERS[package_of(target)] == LAYERS[source] > 0)
    )
    assert not upward, (f"{module_name(path)} (layer {LAYERS[source]}) imports {upward}: "
                        "same-layer siblings or higher layers")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of module-level imports, or None. A package importing its own submodules (its
    ``__init__``) is how packages work, not a cycle."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt in graph and nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_find_cycle_sees_a_cycle_and_ignores_packages():
    assert find_cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == \
        ["a.x", "a.y", "a.z", "a.x"]
    assert find_cycle({"a": {"a.x"}, "a.x": {"a"}, "a.y": {"a.x"}}) is None


def test_no_import_cycles():
    graph = {module_name(p): imports_of(p, top_level_only=True) - {module_name(p)}
             for p in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_importing_models_pulls_in_no_higher_layer():
    code = ("import sys, hfsnet.models; "
            "print(sorted({m.split('.')[1] for m in sys.modules "
            "if m.startswith('hfsnet.') and m.count('.') >= 1}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = set(ast.literal_eval(out.strip()))
    assert loaded <= {"errors", "fsutil", "textutil", "models"}, loaded
