"""The Ray engine on a local 2-CPU Ray gives the same outputs as the local engine."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import ray  # noqa: E402,F401  (the [ray] extra; installed by .ci/run)
import scoring_support as S

from medsuite.pipelines.scoring import ScoreConfig, score


def _errors(db) -> set:
    conn = sqlite3.connect(db)
    try:
        return {tuple(r) for r in conn.execute("SELECT series_uid, stage, error FROM errors")}
    finally:
        conn.close()


@pytest.mark.ray
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside Ray Data itself
@pytest.mark.slow
def test_ray_engine_matches_local(tmp_path):
    cohort = S.make_cohort(tmp_path / "cohort", n_good=3)
    nodules = S.nodule_table(cohort)
    nodules.to_csv(tmp_path / "nodules.csv", index=False)
    bundle = S.make_bundle(tmp_path / "bundle.zip", "nodule")
    results = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        summary = score(ScoreConfig(bundle=bundle, inputs=[tmp_path / "cohort"], out=out, engine=engine,
                                    nodules=tmp_path / "nodules.csv", workers=1, batch_size=4, progress=False))
        assert summary.exit_code == 1  # the nodule outside the scan and the corrupt series
        results[engine] = (pd.read_parquet(out / "scores.parquet"), _errors(out / "medsuite.db"), summary)
    local, ray_ = results["local"], results["ray"]
    keys = ["series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "label", "threshold", "bundle_sha256"]
    pd.testing.assert_frame_equal(local[0][keys], ray_[0][keys])
    assert (local[0]["probability"] - ray_[0]["probability"]).abs().max() < 1e-5
    stages = sorted(e[1] for e in local[1])
    assert local[1] == ray_[1] and stages == ["discover", "preprocess", "read"]
    assert local[2].n_scored == ray_[2].n_scored == 3
