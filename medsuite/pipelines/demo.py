"""`medsuite demo`: the whole product on the embedded default, offline, on a CPU in minutes.

Generates the demo cohort (real LIDC-IDRI nodule outlines in synthetic chests), trains the 2.5D nodule
model with the demo configuration, exports the bundle, writes the report (with the diameter and radiomics
baselines, compared by paired tests), and scores the held-out patients' scans into a database the viewer
opens.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medsuite.pipelines.config import config_from_dict

log = logging.getLogger("medsuite.demo")


@dataclass
class DemoResult:
    cohort: Path
    bundle: Path
    report: Path
    scores: Path
    metrics: dict[str, Any]
    score_exit_code: int


def demo_config(out: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The packaged demo configuration with paths under `out` (and any nested overrides)."""
    raw = yaml.safe_load(resources.files("medsuite.pipelines").joinpath("demo_config.yaml").read_text())
    raw["out"] = str(out / "run")
    raw["data"]["table"] = str(out / "cohort" / "nodules.csv")
    raw["data"]["dicom_root"] = str(out / "cohort")
    raw["data"]["cache_dir"] = str(out / "cache")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return raw


def ensure_cohort(folder: Path, patients: int, seed: int, workers: int | None) -> pd.DataFrame:
    """Generate the cohort, or reuse one already there with the same patients and seed."""
    from medsuite.data.demo import make_demo_cohort
    from medsuite.data.tables import read_table

    summary = folder / "cohort.json"
    if summary.is_file() and (folder / "nodules.csv").is_file():
        meta = json.loads(summary.read_text())
        if meta.get("patients") == patients and meta.get("seed") == seed:
            log.info("reusing the demo cohort in %s", folder)
            return read_table(folder / "nodules.csv")
    return make_demo_cohort(folder, patients=patients, seed=seed, workers=workers, overwrite=True, progress=True)


def score_held_out(out: Path, bundle: Path, cohort: Path, nodules: pd.DataFrame, workers: int | None) -> int:
    """Score the test patients' series (only those) into `out/scores`; returns the scoring exit code."""
    from medsuite.pipelines.scoring.runner import ScoreConfig, score

    test = nodules[nodules["split"] == "test"]
    series = pd.read_csv(cohort / "series.csv", dtype={"series_uid": str})
    inputs = [cohort / p for p in series.loc[series["series_uid"].isin(test["series_uid"]), "path"]]
    scores = out / "scores"
    scores.mkdir(parents=True, exist_ok=True)
    table = cohort / "held_out_nodules.csv"  # an input (patient ids inside): kept with the cohort, not the outputs
    test.to_csv(table, index=False)
    kwargs = {"workers": workers} if workers else {}
    summary = score(ScoreConfig(bundle=bundle, inputs=inputs, out=scores, nodules=table, **kwargs))
    for line in summary.lines():
        log.info(line)
    return summary.exit_code


DEFAULT_PATIENTS = 700  # about every LIDC-IDRI scan with a usable nodule (720): ~1,400 nodules, ~470 held out


def run_demo(out: str | Path = "demo_out", *, patients: int = DEFAULT_PATIENTS, seed: int = 0, workers: int | None = None,
             overrides: dict[str, Any] | None = None) -> DemoResult:
    """Cohort → training → bundle → report → held-out scoring; every artefact under `out`."""
    from medsuite.pipelines.train import run_training

    out = Path(out)
    cohort = out / "cohort"
    nodules = ensure_cohort(cohort, patients, seed, workers)
    cfg = config_from_dict(demo_config(out, overrides), source="demo configuration")
    bundle = out / "malignancy.bundle"
    result = run_training(cfg, bundle_path=bundle, force=True)  # the demo folder is the demo's own: a re-run replaces its run
    code = score_held_out(out, bundle, cohort, nodules, workers)
    return DemoResult(cohort, bundle, result.report, out / "scores", result.metrics, code)
