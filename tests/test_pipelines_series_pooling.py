"""series_from_nodules: a series' score from its nodules' scores (max, noisy-or), the nodule behind it, and a
clear refusal of tables that would give a wrong series score."""

from __future__ import annotations

import pandas as pd
import pytest

from medsuite.pipelines import series_from_nodules

SCORES = pd.DataFrame({
    "series_uid": ["s2", "s1", "s1", "s1"],
    "nodule_id": ["d", "a", "b", "c"],
    "probability": [0.2, 0.1, 0.6, 0.5],
})


def test_max_and_noisy_or_per_series_with_the_nodule_that_decides():
    top = series_from_nodules(SCORES)
    assert top["series_uid"].tolist() == ["s1", "s2"]
    assert top["probability"].tolist() == pytest.approx([0.6, 0.2])
    assert top["n_nodules"].tolist() == [3, 1] and top["top_nodule_id"].tolist() == ["b", "d"]
    either = series_from_nodules(SCORES, how="noisy_or")
    assert either["probability"].tolist() == pytest.approx([1 - 0.9 * 0.4 * 0.5, 0.2])


@pytest.mark.parametrize(("table", "message"), [
    (SCORES.drop(columns=["probability"]), r"missing column\(s\) \['probability'\]"),
    (SCORES.assign(run_id=["r1", "r1", "r2", "r2"]), "2 scoring runs in one table"),
    (SCORES.assign(nodule_id=["d", "a", "a", "c"]), "nodule 'a' is scored twice"),
    (SCORES.assign(probability=[0.2, 0.1, float("nan"), 0.5]), r"probability of nodule 'b' is nan, not in \[0, 1\]"),
    (SCORES.assign(probability=[0.2, 0.1, 1.5, 0.5]), r"probability of nodule 'b' is 1.5"),
])
def test_tables_that_would_give_a_wrong_series_score_are_refused(table, message):
    with pytest.raises(ValueError, match=message):
        series_from_nodules(table)
    with pytest.raises(ValueError, match="how must be one of"):
        series_from_nodules(SCORES, how="mean")
