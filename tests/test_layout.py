"""The core's shape, read statically from its source (``ast``, nothing imported):

- no import circle among ``sae_lens_ext`` modules (module-level and function-level
  imports both count; ``if TYPE_CHECKING:`` blocks do not);
- the library never imports a command: only ``sae_lens_ext/commands/`` and
  ``sae_lens_ext/cli.py`` (and ``python -m sae_lens_ext``'s ``__main__``) import them;
- models and loss terms hold no distributed code: plugins, ``training/sae.py``,
  ``loss_terms.py``, ``twins.py`` and ``sparse/`` never reach ``torch.distributed`` (nor
  the core's data-parallel layer, which serves them through ``BatchCollectives``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "sae_lens_ext"
COMMAND_MODULES = ("sae_lens_ext.commands", "sae_lens_ext.cli")
#: May import the command line: the command line itself and ``python -m sae_lens_ext``.
COMMAND_SIDE = ("sae_lens_ext.commands", "sae_lens_ext.cli", "sae_lens_ext.__main__")
MODEL_CODE = [
    *sorted((REPO / "plugins").rglob("*.py")),
    CORE / "training" / "sae.py",
    CORE / "training" / "loss_terms.py",
    CORE / "training" / "twins.py",
    *sorted((CORE / "training" / "sparse").rglob("*.py")),
]
DISTRIBUTED = ("torch.distributed", "sae_lens_ext.training.distributed")


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` except those inside ``if TYPE_CHECKING:`` (its ``else``
    runs)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk_runtime(other)
            continue
        yield child
        yield from _walk_runtime(child)


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names ``path`` (module ``module``) imports at run time, relative imports
    resolved; ``from a import b`` gives both ``a`` and ``a.b`` (``b`` may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def core_graph() -> dict[str, set[str]]:
    """``module -> the sae_lens_ext modules it imports`` (a package import is an edge to
    its ``__init__``, only when named itself)."""
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    return {
        name: {n for n in imported_names(path, name) if n in files and n != name}
        for name, path in files.items()
    }


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_sees_what_it_must():
    """The reader itself: function-level and relative imports count, TYPE_CHECKING does not."""
    graph = core_graph()
    assert "sae_lens_ext.training.distributed" in graph["sae_lens_ext.run.replicas"]  # module level
    assert "sae_lens_ext.plugins" in graph["sae_lens_ext.training.sae"]  # inside functions
    assert "sae_lens_ext.training.sae" not in graph["sae_lens_ext.training.loss_terms"]  # TYPE_CHECKING
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]


def test_no_import_circle_among_core_modules():
    found = circles(core_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_the_library_imports_no_command():
    offenders = {
        (name, target)
        for name, targets in core_graph().items()
        if not name.startswith(COMMAND_SIDE)
        for target in targets
        if target.startswith(COMMAND_MODULES)
    }
    offenders |= {
        (module_name(path), target)
        for path in (REPO / "plugins").rglob("*.py")
        for target in imported_names(path, module_name(path))
        if target.startswith(COMMAND_MODULES)
    }
    assert not offenders, f"library modules importing the command line: {sorted(offenders)}"


def _distributed_uses(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(root)
    uses = [
        f"{where}: imports {name}"
        for name in imported_names(path, module_name(path, root))
        if name.startswith(DISTRIBUTED)
    ]
    for node in ast.walk(tree):  # TYPE_CHECKING too: a model names no collective at all
        if isinstance(node, ast.Attribute) and node.attr == "distributed":
            uses.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return uses


@pytest.mark.parametrize("path", MODEL_CODE, ids=lambda p: str(p.relative_to(REPO)))
def test_models_and_loss_terms_hold_no_distributed_code(path: Path):
    assert not _distributed_uses(path), _distributed_uses(path)


def test_the_distributed_check_can_fail(tmp_path: Path):
    model = tmp_path / "model.py"
    model.write_text(
        "import torch\n\ndef step(x):\n    torch.distributed.all_reduce(x)\n"
        "    from sae_lens_ext.training import distributed\n"
    )
    uses = _distributed_uses(model, tmp_path)
    assert len(uses) == 2, uses


def test_no_built_in_plugin_imports_another():
    """Each built-in plugin package stands alone (shared code is public API in the core)."""
    root = REPO / "plugins" / "sae_lens_ext_plugins"
    offenders = []
    for package in (p for p in root.iterdir() if (p / "__init__.py").is_file()):
        for path in package.rglob("*.py"):
            for name in imported_names(path, module_name(path, REPO / "plugins")):
                other = name.split(".")[1] if name.startswith("sae_lens_ext_plugins.") else None
                if other is not None and other != package.name:
                    offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, offenders
