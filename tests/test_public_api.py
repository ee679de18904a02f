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
