"""The layers import only downwards (docs/contracts.md): io -> data -> learn -> interpret -> pipelines, with
records beside the pipelines, and the viewer and the command line on top. Every import in the package counts,
including those inside functions and under TYPE_CHECKING.

``python tests/test_layers.py`` prints the layer-to-layer import counts (the table in docs/contracts.md).
"""

from __future__ import annotations

import ast
import collections
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medsuite"
ROOT = ("__version__", "_exports")  # the package root: usable by every layer
ORDER = ("io", "data", "learn", "interpret", "records", "pipelines", "viewer", "cli")
ALLOWED = {
    "io": set(),
    "data": {"io"},
    "learn": {"io", "data"},
    "interpret": {"io", "data", "learn"},
    "records": {"io"},
    "pipelines": {"io", "data", "learn", "interpret", "records"},
    "viewer": {"io", "data", "learn", "interpret", "records", "pipelines"},
    "cli": {"io", "data", "learn", "interpret", "records", "pipelines", "viewer"},
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name inside medsuite (None outside it or for the package root)."""
    parts = module.split(".")
    if parts[0] != "medsuite" or len(parts) == 1:
        return None
    head = parts[1]
    if head in ROOT:
        return None
    return "cli" if head in ("cli", "__main__", "commands") else head


def imports_of(path: Path) -> list[str]:
    """Every absolute module name imported in ``path`` (``from a import b`` gives ``a`` and ``a.b``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; medsuite uses absolute imports")
    return names


def layer_edges() -> dict[tuple[str, str], list[str]]:
    """(from layer, to layer) -> the files that make that import."""
    edges: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        source = layer_of(module)
        if source is None:
            continue
        targets = {layer_of(name) for name in imports_of(path)} - {None, source}
        for target in targets:
            edges[(source, target)].append(str(path.relative_to(PACKAGE.parent)))
    return edges


def test_every_module_belongs_to_a_known_layer():
    layers = {layer_of(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"))
              for p in PACKAGE.rglob("*.py")}
    assert layers - {None} <= set(ORDER), f"modules outside the known layers: {sorted(layers - {None} - set(ORDER))}"


def test_layers_import_only_downwards():
    bad = {f"{a} -> {b}": files for (a, b), files in layer_edges().items() if b not in ALLOWED[a]}
    assert not bad, f"imports against the layering (docs/contracts.md): {bad}"


def test_the_checker_sees_a_violation(tmp_path):
    """The checker itself: an upward import in a module is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from medsuite.pipelines import nodule\n")
    assert [layer_of(n) for n in imports_of(module)] == ["pipelines", "pipelines"]


if __name__ == "__main__":
    counts = {edge: len(files) for edge, files in layer_edges().items()}
    for (a, b), n in sorted(counts.items(), key=lambda kv: (ORDER.index(kv[0][0]), ORDER.index(kv[0][1]))):
        print(f"{a:>10} -> {b:<10} {n:3d} files")
    sys.exit(0)
