"""The shape of the code: the core imports no user-interface library, nothing imports in a circle, and
tests take their helpers from tests/support.py, never from conftest."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "model_manager"
UI_LIBRARIES = {"typer", "rich", "litestar", "click", "uvicorn"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (function-level imports included, type-only ones not)."""
    found: set[str] = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_core_imports_no_user_interface_library():
    core = [p for p in PACKAGE.glob("*.py")]
    offenders = {_module_name(p): sorted(m for m in _imports(p) if m.split(".")[0] in UI_LIBRARIES) for p in core}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_server_never_imports_the_commands():
    for path in (PACKAGE / "server").rglob("*.py"):
        assert not any(m.startswith("model_manager.commands") for m in _imports(path)), path


def test_no_import_cycle_inside_the_package():
    graph = _graph()
    # a package's __init__ importing its own submodules is how Typer commands register: not a cycle
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_test_imports_conftest():
    pattern = re.compile(r"^\s*(from\s+(tests)?\.?conftest\s+import|import\s+(tests\.)?conftest)", re.MULTILINE)
    offenders = [p.name for p in Path(__file__).resolve().parent.glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
