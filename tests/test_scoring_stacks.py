"""Scoring reads the stack it chose, even when several stacks share files (an enhanced object holding an
image and a derived map), and `--stack` scores the stack the user names."""

from __future__ import annotations

import pandas as pd
import scoring_support as S
from dicom_factory import make_volume, write_enhanced_4d
from typer.testing import CliRunner

from medsuite.cli import app
from medsuite.io import scan_folder


def _score(bundle, folder, out, *extra: str):
    return CliRunner().invoke(app, ["score", str(bundle), str(folder), "--out", str(out), "--workers", "1",
                                    "--quiet", "--include-phi", *extra])


def test_enhanced_object_with_two_stacks_scores_the_chosen_one_and_the_named_one(tmp_path):
    image, field_map = make_volume(shape=(12, 24, 24), seed=7), make_volume(shape=(12, 24, 24), seed=8)
    write_enhanced_4d(tmp_path / "in" / "b0.dcm", [image, field_map], kind="frame_type")
    stacks = scan_folder(tmp_path / "in").series
    main, derived = stacks.iloc[0], stacks.iloc[1]
    bundle = S.make_bundle(tmp_path / "bundle", "series")

    res = _score(bundle, tmp_path / "in", tmp_path / "main")
    assert res.exit_code == 0, res.output
    main_scores = pd.read_parquet(tmp_path / "main" / "scores.parquet")
    assert list(main_scores["series_uid"]) == [main.series_uid]

    # the derived map is excluded by the default rules; the user names it and lifts that rule
    res = _score(bundle, tmp_path / "in", tmp_path / "derived", "--stack", derived.stack_id,
                 "--rule", "exclude_image_type=LOCALIZER")
    assert res.exit_code == 0, res.output
    derived_scores = pd.read_parquet(tmp_path / "derived" / "scores.parquet")
    assert list(derived_scores["series_uid"]) == [main.series_uid]
    # two different images, two different scores: the named stack was read, not the main one again
    assert abs(derived_scores["probability"].iloc[0] - main_scores["probability"].iloc[0]) > 1e-6
