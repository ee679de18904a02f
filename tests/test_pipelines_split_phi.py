"""A training run's random split is drawn on the real patient ids, before they are pseudonymised: the sets are
the ones the pre-run check validated, and the same under any pseudonymisation key (another machine, the same
split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medsuite.io.phi import KEY_ENV
from medsuite.pipelines.config import DRAWN_SPLIT_COLUMN, load_config, splitter
from medsuite.pipelines.train import _table

ROOT = Path(__file__).resolve().parents[1]


def _nodules(path: Path, patients: int = 30) -> Path:
    rng = np.random.default_rng(0)
    rows = [{"series_uid": f"1.2.3.{p}", "patient_id": f"LIDC-IDRI-{p:04d}", "nodule_id": f"LIDC-IDRI-{p:04d}-n{n}",
             "x_mm": 0.0, "y_mm": 0.0, "z_mm": float(n), "diameter_mm": float(rng.uniform(4, 20)),
             "label": "malignant" if (p + n) % 3 == 0 else "benign"}
            for p in range(patients) for n in range(2)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _sets(cfg, table: pd.DataFrame) -> dict[str, list[str]]:
    """Each set as the sorted nodule rows' positions (row order is kept by pseudonymisation)."""
    return {name: sorted(rows.tolist()) for name, rows in splitter(cfg, table)(table).items()}


def test_random_split_does_not_depend_on_the_pseudonymisation_key(tmp_path, monkeypatch):
    table = _nodules(tmp_path / "nodules.csv")
    cfg = load_config(ROOT / "configs" / "nodule_malignancy.yaml",
                      [f"data.table={table}", f"out={tmp_path / 'run'}"], check_inputs=False)
    checked = _sets(cfg, pd.read_csv(table))  # what the check before the run validates
    naive = []
    for key in ("a", "b"):
        monkeypatch.setenv(KEY_ENV, str(tmp_path / f"{key}.key"))
        run_table = _table(cfg)
        assert not run_table["patient_id"].astype(str).str.contains("LIDC-IDRI").any()  # pseudonymised
        assert _sets(cfg, run_table) == checked
        naive.append(_sets(cfg, run_table.drop(columns=[DRAWN_SPLIT_COLUMN])))
    # what the run did before: splitting the pseudonyms gave a split that depended on the key
    assert naive[0] != checked or naive[1] != checked


def test_include_phi_keeps_the_same_split(tmp_path):
    table = _nodules(tmp_path / "nodules.csv")
    overrides = [f"data.table={table}", f"out={tmp_path / 'run'}"]
    cfg = load_config(ROOT / "configs" / "nodule_malignancy.yaml", overrides, check_inputs=False)
    with_phi = load_config(ROOT / "configs" / "nodule_malignancy.yaml", [*overrides, "data.include_phi=true"],
                           check_inputs=False)
    assert _sets(cfg, _table(cfg)) == _sets(with_phi, _table(with_phi))


def test_a_tables_own_split_column_still_rules(tmp_path):
    path = _nodules(tmp_path / "nodules.csv", patients=10)
    df = pd.read_csv(path)
    df["split"] = np.where(df.index < 12, "train", np.where(df.index < 16, "valid", "test"))
    df.to_csv(path, index=False)
    cfg = load_config(ROOT / "configs" / "nodule_malignancy.yaml", [f"data.table={path}", f"out={tmp_path / 'run'}"],
                      check_inputs=False)
    sets = _sets(cfg, _table(cfg))
    assert sets["train"] == list(range(12)) and sets["valid"] == list(range(12, 16)) and sets["test"] == list(range(16, 20))
