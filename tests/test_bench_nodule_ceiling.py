"""bench/nodule_ceiling.py: a classifier handed what a nodule was drawn from beats one handed only its size
when the label depends on more than size; a cohort without the drawn parameters is refused by name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "nodule_ceiling.py"


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("nodule_ceiling", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cohort(tmp_path: Path, n: int = 400) -> Path:
    rng = np.random.default_rng(0)
    diameter = rng.uniform(4, 30, n)
    texture = rng.integers(1, 6, n)
    calcification = rng.integers(1, 7, n)
    risk = 0.08 * diameter + 1.5 * (texture >= 4) - 3.0 * (calcification < 6) + rng.normal(0, 0.3, n)
    table = pd.DataFrame({
        "patient_id": [f"P{i // 4:03d}" for i in range(n)], "diameter_mm": diameter,
        "rendered_diameter_mm": diameter * rng.uniform(0.8, 1.0, n), "rendered_texture": texture,
        "rendered_calcification": calcification, "texture": texture, "calcification": calcification,
        **{c: rng.integers(1, 6, n) for c in ("subtlety", "internal_structure", "sphericity", "margin",
                                               "lobulation", "spiculation")},
        "label": np.where(risk > np.median(risk), "malignant", "benign"),
        "split": np.where(np.arange(n) // 4 % 3 == 0, "test", "train"),
    })
    table.to_csv(tmp_path / "nodules.csv", index=False)
    return tmp_path


def test_what_the_image_was_drawn_from_beats_size_alone(ceiling, tmp_path):
    table = ceiling.load(_cohort(tmp_path))
    train, test = table[table["split"] != "test"], table[table["split"] == "test"]
    size = ceiling.ceiling_row(train, test, ceiling.FEATURE_SETS["diameter"])
    drawn = ceiling.ceiling_row(train, test, ceiling.FEATURE_SETS["drawn from"])
    assert drawn["auc"] > 0.95 and drawn["auc"] > size["auc"] + 0.15
    assert drawn["ci_low"] <= drawn["auc"] <= drawn["ci_high"]
    assert drawn["model"] in ceiling.candidates()


def test_a_cohort_without_the_drawn_parameters_is_refused(ceiling, tmp_path):
    pd.DataFrame({"patient_id": ["P1"], "diameter_mm": [5.0], "label": ["benign"], "split": ["test"]}).to_csv(
        tmp_path / "nodules.csv", index=False)
    with pytest.raises(SystemExit, match=r"nodules\.csv: missing columns \[.*'rendered_texture'"):
        ceiling.load(tmp_path)
