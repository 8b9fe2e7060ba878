"""The package's layout is its architecture: no import cycles, and arrows only point down.

Rooms, lowest first (docs/architecture.md draws the same tree). A module may import from its
own room and from rooms of a lower layer, never from a higher one or a sibling of its layer.
Imports under ``if TYPE_CHECKING:`` are annotations, not arrows, and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import resilient_tts

PACKAGE = Path(resilient_tts.__file__).parent
NAME = "resilient_tts"

# room -> layer; a top-level module (`_client`, `_cli`, ...) is its own room on the top layer.
LAYERS = {
    "_exceptions": 0,
    "_version": 0,
    "_core": 1,
    "_audio": 2,
    "_config": 2,
    "_observe": 3,
    "_fleet": 3,
    "_engine": 4,
}
TOP = 5


def _module_name(path: Path) -> str:
    parts = [NAME, *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every resilient_tts module this module imports at run time (lazy imports included)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith(NAME):
                found.add(target)
                for alias in node.names:  # `from . import _events` names a module
                    found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(NAME))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        imported = _runtime_imports(tree, module, path.name == "__init__.py")
        graph[module] = {name for name in imported if name in files and name != module}
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    return LAYERS.get(_room(module), TOP)


def test_no_import_cycles() -> None:
    """Walking every runtime import from every module never comes back to where it started."""
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            # A package's __init__ importing its own modules is how re-exports work.
            if module == NAME or target == NAME:
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_imports_only_point_down() -> None:
    """No room imports from a room of its own layer or above (the top layer excepted)."""
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            if _room(target) == _room(module) or _layer(module) == TOP:
                continue
            if _layer(target) >= _layer(module):
                wrong.append(f"{module} -> {target}")
    assert sorted(wrong) == []


def test_the_pure_cores_do_no_io() -> None:
    """`_core` imports no anyio, no network library and no other room but the error tree."""
    forbidden = {"anyio", "httpx2", "aiohttp", "openai", "redis", "av", "socket", "trio"}
    for path in (PACKAGE / "_core").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & forbidden, path.name
