"""Each layer's public API (``from medsuite.data import DataBlock`` ...): curated, resolvable, and lazy, so that
importing a layer does not import torch until a name that needs it is used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

LAYERS = ("medsuite.io", "medsuite.data", "medsuite.learn", "medsuite.interpret", "medsuite.pipelines", "medsuite.records")


@pytest.mark.parametrize("name", LAYERS)
def test_every_public_name_resolves_inside_its_layer(name):
    package = importlib.import_module(name)
    assert package.__all__ == sorted(package.__all__), "keep __all__ sorted"
    assert set(package.__all__) == set(package._EXPORTS), "__all__ and the lazy table list the same names"
    for public in package.__all__:
        obj = getattr(package, public)
        module = getattr(obj, "__module__", None) or package._EXPORTS[public]
        assert module.startswith(name), f"{name}.{public} comes from {module}, outside the layer"
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        package.not_a_name  # noqa: B018


def test_importing_the_layers_loads_no_heavy_dependency():
    code = ("import sys\nimport " + ", ".join(LAYERS) + "\n"
            "heavy = [m for m in ('torch', 'SimpleITK', 'monai', 'pandas') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the layer packages imported {out}"


def _doc_imports():
    """Every ``from medsuite... import ...`` statement in the README's and docs' Python examples."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medsuite"):
                    yield doc.name, node.module, [a.name for a in node.names]


def test_docs_import_only_each_layers_public_api():
    """The same names in every doc page: examples import from a layer package (or a task module of the
    pipelines such as ``nodule``), never from the modules behind it."""
    seen = 0
    for doc, module, names in _doc_imports():
        seen += 1
        assert module in LAYERS, f"{doc}: 'from {module} import ...' - import from the layer package instead"
        package = importlib.import_module(module)
        for name in names:
            is_module = importlib.util.find_spec(f"{module}.{name}") is not None
            assert name in package.__all__ or is_module, f"{doc}: {module}.{name} is not in the layer's public API"
    assert seen >= 10, "the docs' Python examples were not found"
