"""The package layout's rules (docs/DESIGN.md), read from the source with ``ast``:

- no import cycles among the project's modules, counting imports inside functions too;
- the only project imports inside functions are the CLI's (they keep ``dede serve`` free of torch);
- the product core (the modules directly in ``training/``) imports nothing from the sub-packages (pretrain,
  attacks, baselines, evaluation, research, reporting); only the CLI, which hosts the research commands, does;
- ``service`` imports neither ``training`` nor torch.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "service")
SUBPACKAGES = ("pretrain", "attacks", "baselines", "evaluation", "research", "reporting")
LAZY_IMPORTS_ALLOWED = {"training.cli"}


@dataclass
class Module:
    name: str
    path: Path
    top: set[str] = field(default_factory=set)  # project modules imported at module level
    inner: set[str] = field(default_factory=set)  # ... inside a function or class body
    third_party: set[str] = field(default_factory=set)  # first name of every other import, anywhere


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative import
        parts = here.split(".") if is_package else here.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    return [base] + [f"{base}.{a.name}" for a in node.names]


def scan() -> dict[str, Module]:
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): Module(module_name(p), p) for p in paths}
    for m in modules.values():
        tree = ast.parse(m.path.read_text(), str(m.path))
        scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
        nested = {id(x) for s in scopes for x in ast.walk(s) if x is not s}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = _targets(node, m.name, m.path.name == "__init__.py")
            project = {n for n in names if n in modules} - {m.name}
            (m.inner if id(node) in nested else m.top).update(project)
            if not project:
                m.third_party.add(names[0].split(".")[0])
    return modules


MODULES = scan()


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_the_project() -> None:
    assert {"training.cli", "training.train", "service.app", "training.research.reproduce"} <= set(MODULES)
    assert "training.train" in MODULES["training.cli"].inner  # the CLI's lazy imports are seen as inner
    assert "training.dede" in MODULES["training.train"].top


def test_cycles_are_found_when_there_are_some() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_counting_imports_inside_functions() -> None:
    edges = {name: m.top | m.inner for name, m in MODULES.items()}
    assert cycles(edges) == []


@pytest.mark.parametrize("name", sorted(set(MODULES) - LAZY_IMPORTS_ALLOWED))
def test_project_imports_are_at_the_top_of_the_module(name: str) -> None:
    assert MODULES[name].inner == set(), f"{name} imports {sorted(MODULES[name].inner)} inside a function"


def test_the_product_core_imports_no_sub_package() -> None:
    core = [m for m in MODULES.values() if m.path.parent == ROOT / "training" and m.path.name != "__init__.py"
            and m.name not in LAZY_IMPORTS_ALLOWED]
    assert len(core) >= 12
    for m in core:
        wings = sorted(t for t in m.top | m.inner if t.split(".")[1:2] and t.split(".")[1] in SUBPACKAGES)
        assert wings == [], f"{m.name} (product core) imports {wings}"


def test_service_imports_neither_training_nor_torch() -> None:
    for m in MODULES.values():
        if m.name.startswith("service"):
            assert not {t for t in m.top | m.inner if t.startswith("training")}, m.name
            assert "torch" not in m.third_party, m.name
