"""Series-level scores from nodule-level ones: "does this patient have a malignant nodule?" answered by the
nodule model over the nodules of each series, for when series labels alone are too few to learn from."""

from __future__ import annotations

import numpy as np
import pandas as pd

POOLINGS = ("max", "noisy_or")


def series_from_nodules(scores: pd.DataFrame, how: str = "max") -> pd.DataFrame:
    """One row per series of a nodule scores table (what `medsuite score` or a training run writes):
    ``series_uid``, ``probability`` (pooled), ``n_nodules`` and ``top_nodule_id`` (the highest-scored nodule).

    ``how='max'``: the most suspicious nodule decides, as a reader grades a patient by the worst nodule;
    ``'noisy_or'``: ``1 - prod(1 - p)``, the chance that at least one nodule is malignant were they independent.
    A series with no scored nodule is absent: the scores cannot say it is benign."""
    if how not in POOLINGS:
        raise ValueError(f"how must be one of {list(POOLINGS)}, got {how!r}")
    missing = [c for c in ("series_uid", "nodule_id", "probability") if c not in scores.columns]
    if missing:
        raise ValueError(f"nodule scores: missing column(s) {missing}; expected a `medsuite score` table")
    if "run_id" in scores.columns and scores["run_id"].nunique() > 1:
        raise ValueError(f"nodule scores: {scores['run_id'].nunique()} scoring runs in one table; pool one run's "
                         "scores (filter on run_id)")
    dup = scores["nodule_id"].duplicated()
    if dup.any():
        raise ValueError(f"nodule scores: nodule {scores.loc[dup, 'nodule_id'].iloc[0]!r} is scored twice")
    p = pd.to_numeric(scores["probability"], errors="coerce")
    bad = ~p.between(0.0, 1.0)
    if bad.any():
        raise ValueError(f"nodule scores: probability of nodule {scores.loc[bad, 'nodule_id'].iloc[0]!r} is "
                         f"{scores.loc[bad, 'probability'].iloc[0]}, not in [0, 1]")
    table = scores.assign(probability=p.astype(np.float64)).sort_values("probability", ascending=False, kind="stable")
    pool = "max" if how == "max" else (lambda q: 1.0 - float(np.prod(1.0 - q.to_numpy())))
    out = table.groupby("series_uid", sort=True).agg(probability=("probability", pool), n_nodules=("nodule_id", "size"),
                                                     top_nodule_id=("nodule_id", "first"))
    return out.reset_index()
