"""`medsuite demo` end to end on a handful of demo patients: cohort, bundle, report, held-out scores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd

from medsuite.io.phi import Pseudonymizer
from medsuite.pipelines.demo import ensure_cohort, run_demo

TINY = {"train.epochs": 1, "train.lr": 0.003, "block.size": 24, "block.k": 3, "data.bs": 8,
        "report.n_boot": 200, "report.top_losses": 4}


def test_demo_runs_every_stage(tmp_path: Path) -> None:
    result = run_demo(tmp_path, patients=12, seed=3, workers=1, overrides=TINY)
    nodules = pd.read_csv(result.cohort / "nodules.csv")
    test = nodules[nodules["split"] == "test"]
    assert result.bundle == tmp_path / "malignancy.bundle" and (result.bundle / "bundle.json").is_file()
    assert result.report == tmp_path / "run" / "report.html" and "Against the baselines" in result.report.read_text()
    # the demo fuses the table's diameter: the image model alone is compared too, and the 3D CNN with its cost
    assert set(result.metrics["comparisons"]) == {"diameter", "radiomics_rf", "patch3d_cnn", "image only (no covariates)"}
    assert "patch3d_cnn: train_min" in result.report.read_text()
    cost = result.metrics["baseline_costs"]["patch3d_cnn"]
    assert cost["train_min"] > 0 and cost["epochs"] == 30 and cost["parameters"] > 0
    assert result.score_exit_code == 0
    scores = pd.read_csv(tmp_path / "scores" / "scores.csv")
    # held-out nodules only, each once; their ids (which hold the patient ids) as keyed pseudonyms
    pseudonyms = Pseudonymizer.pseudonymize_table(test)["nodule_id"]
    assert sorted(scores["nodule_id"]) == sorted(pseudonyms) and pseudonyms.str.startswith("id-").all()
    with sqlite3.connect(tmp_path / "scores" / "medsuite.db") as db:
        assert db.execute("select count(*) from predictions").fetchone()[0] == len(test)
    # a second run reuses the cohort instead of generating it again
    stamp = (result.cohort / "cohort.json").stat().st_mtime_ns
    assert len(ensure_cohort(result.cohort, 12, 3, 1)) == len(nodules)
    assert (result.cohort / "cohort.json").stat().st_mtime_ns == stamp
