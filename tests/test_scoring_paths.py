"""What scoring records of where things are: absolute, resolved paths (no ``..``, no symlink), so that the
viewer (and anyone reading the database) finds the scans and the bundle from whatever folder it runs in."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import scoring_support as S

from medsuite.data.source import read_path
from medsuite.io.phi import Pseudonymizer
from medsuite.pipelines.scoring import ScoreConfig, score


def test_sources_and_bundle_are_stored_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import SimpleITK as sitk

    data = tmp_path / "data"
    cohort = S.make_cohort(data / "cohort", n_good=2, extras=False)
    image = S.make_volume(7)
    (data / "images").mkdir()
    sitk.WriteImage(image.to_sitk(), str(data / "images" / "1.2.826.0.1.7.mhd"))
    S.make_bundle(data / "series.bundle", "series")
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    done = score(ScoreConfig(bundle=Path("../link/series.bundle"), out=Path("out"), workers=1, progress=False,
                             inputs=[Path("../link/cohort"), Path("../link/images/1.2.826.0.1.7.mhd")],
                             rules=["modality=any"]))
    assert done.exit_code == 0
    with sqlite3.connect("out/medsuite.db") as db:
        sealed = dict(db.execute("SELECT series_uid, source FROM series"))
        (bundle_path,) = db.execute("SELECT bundle_path FROM runs").fetchone()
    assert set(sealed) == {*cohort["good"], "1.2.826.0.1.7"}
    assert all(s.startswith("phi1:") for s in sealed.values())  # locations are sealed in the outputs
    keys = Pseudonymizer.from_key_file()
    sources = {uid: keys.unseal(s) for uid, s in sealed.items()}
    real = data.resolve()
    assert sources["1.2.826.0.1.7"] == str(real / "images" / "1.2.826.0.1.7.mhd")
    assert all(os.path.isabs(s) and ".." not in Path(s).parts and s.startswith(str(real)) for s in sources.values())
    assert bundle_path == str(real / "series.bundle")
    monkeypatch.chdir(tmp_path)  # the viewer, started elsewhere, reads each series from its row
    assert read_path(sources["1.2.826.0.1.7"]).shape == image.shape
    for i, uid in enumerate(cohort["good"]):
        assert read_path(sources[uid], uid).shape == S.make_volume(i).shape
