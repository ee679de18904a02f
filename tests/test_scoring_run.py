"""Batch scoring end to end on generated folders: outputs, error rows, skips, resume, PHI, exit codes."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import scoring_support as S
from typer.testing import CliRunner

from medsuite.pipelines.scoring import ScoreConfig, UsageError, score
from medsuite.pipelines.scoring.writer import OUTPUT_COLUMNS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    cohort = S.make_cohort(root / "cohort", n_good=3)
    nodules = S.nodule_table(cohort)
    nodules.to_csv(root / "nodules.csv", index=False)
    return {
        "root": root, "cohort": cohort, "input": root / "cohort", "nodules": root / "nodules.csv",
        "nodule_bundle": S.make_bundle(root / "nodule_bundle", "nodule"),
        "series_bundle": S.make_bundle(root / "series_bundle.zip", "series", seed=1),
    }


def _cfg(world, out: Path, **kw) -> ScoreConfig:
    base = {"bundle": world["nodule_bundle"], "inputs": [world["input"]], "out": out, "nodules": world["nodules"],
            "workers": 2, "batch_size": 3, "progress": False, "export_every_s": 0.0}
    base.update(kw)
    return ScoreConfig(**base)


def _db(out: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(out / "medsuite.db")
    conn.row_factory = sqlite3.Row
    return conn


def test_nodule_run_scores_skips_and_records_errors(world, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    summary = score(_cfg(world, out, progress=True))
    cohort = world["cohort"]
    assert summary.exit_code == 1  # some failed
    assert summary.n_found == 6 and summary.n_scored == 3 and summary.n_error_series == 2
    df = pd.read_parquet(out / "scores.parquet")
    assert list(df.columns) == OUTPUT_COLUMNS
    assert sorted(df["nodule_id"]) == ["n0a", "n0b", "n1a", "n1b", "n2a", "n2b"]
    assert set(df["series_uid"]) == set(cohort["good"])
    assert df["probability"].between(0, 1).all() and set(df["label"]) <= {"benign", "malignant"}
    assert (df["label"] == df["probability"].map(lambda p: "malignant" if p >= 0.5 else "benign")).all()
    csv = pd.read_csv(out / "scores.csv", dtype={"series_uid": str, "nodule_id": str})
    assert csv[["series_uid", "nodule_id"]].values.tolist() == df[["series_uid", "nodule_id"]].values.tolist()

    conn = _db(out)
    series = {r["series_uid"]: (r["status"], r["reason"]) for r in conn.execute("SELECT * FROM series")}
    assert series[cohort["localizer"]] == ("skipped", "image type LOCALIZER is excluded")
    assert series[cohort["corrupt"]][0] == "error" and "pixel data too short" in series[cohort["corrupt"]][1]
    assert series[cohort["corrupt_read"]][0] == "error"
    assert series[cohort["good"][0]][0] == "scored" and "outside the scan" in series[cohort["good"][0]][1]
    non_images = [r for r in series.values() if r[1] and r[1].startswith("not an image instance")]
    assert len(non_images) == 2  # the SR and the text file
    errors = {(r["series_uid"], r["stage"]) for r in conn.execute("SELECT * FROM errors")}
    assert errors == {(cohort["corrupt"], "discover"), (cohort["corrupt_read"], "read"),
                      (cohort["good"][0], "preprocess")}
    far = conn.execute("SELECT error FROM errors WHERE stage='preprocess'").fetchone()[0]
    assert far.startswith("nodule far: point (500, 0, 0) mm lies outside the scan")
    run = conn.execute("SELECT * FROM runs").fetchone()
    assert run["status"] == "finished" and run["n_scored"] == 3 and run["engine"] == "local"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()

    # no patient identifier anywhere: outputs, database (every column), logs, progress bar
    captured = capfd.readouterr()
    texts = [captured.out, captured.err, caplog.text, "\n".join(summary.lines())]
    texts += [(out / name).read_bytes().decode("latin-1") for name in ("scores.csv", "scores.parquet")]
    conn = _db(out)
    for table in ("runs", "series", "predictions", "errors"):
        texts += [repr(tuple(r)) for r in conn.execute(f"SELECT * FROM {table}")]
    read_error, source = conn.execute("SELECT error, source FROM errors WHERE stage='read'").fetchone()
    assert read_error.startswith("<path-") and source.startswith("path-")  # the patient-named folder: a pseudonym
    sealed = conn.execute("SELECT source FROM series WHERE series_uid=?", (cohort["good"][0],)).fetchone()[0]
    assert sealed.startswith("phi1:")  # the location the viewer opens, sealed with the key
    from medsuite.io.phi import Pseudonymizer

    assert Path(Pseudonymizer.from_key_file().unseal(sealed)).is_dir()
    conn.close()
    for text in texts:
        assert S.PATIENT_PREFIX not in text and S.PATIENT_NAME not in text and "Zzyzx" not in text
    assert "patient_id" not in df.columns


def test_rerun_skips_what_is_scored_and_include_phi(world, tmp_path):
    out = tmp_path / "out"
    first = score(_cfg(world, out))
    before = pd.read_parquet(out / "scores.parquet")
    second = score(_cfg(world, out, include_phi=True))
    after = pd.read_parquet(out / "scores.parquet")
    assert first.n_scored == 3 and second.n_already == 3 and second.n_scored == 0
    pd.testing.assert_frame_equal(before, after.drop(columns="patient_id"))  # nothing twice, nothing changed
    assert second.exit_code == 1  # the corrupt series are retried and fail again
    # --include-phi: the patient of each series, from the scan
    assert after["patient_id"].str.startswith(S.PATIENT_PREFIX).all()
    assert pd.read_csv(out / "scores.csv", dtype=str)["patient_id"].tolist() == after["patient_id"].tolist()
    conn = _db(out)
    runs = conn.execute("SELECT status FROM runs ORDER BY started_at").fetchall()
    assert [r[0] for r in runs] == ["finished", "finished"]
    conn.close()


def test_series_bundle_one_score_per_series_and_exit_codes(world, tmp_path):
    out = tmp_path / "out"
    good_only = [world["input"] / f"case{i:03d}" for i in range(3)]
    summary = score(_cfg(world, out, bundle=world["series_bundle"], nodules=None, inputs=good_only))
    assert summary.exit_code == 0
    df = pd.read_parquet(out / "scores.parquet")
    assert sorted(df["series_uid"]) == sorted(world["cohort"]["good"]) and (df["nodule_id"] == "").all()
    assert df[["x_mm", "y_mm", "z_mm"]].isna().all().all()

    # a series table as input, restricted to one series, in another out dir with its own database
    table = tmp_path / "series.csv"
    pd.DataFrame({"path": [str(p) for p in good_only], "series_uid": [world["cohort"]["good"][1], "", ""]}).to_csv(
        table, index=False)
    one = score(_cfg(world, tmp_path / "one", bundle=world["series_bundle"], nodules=None, inputs=[table],
                     db=tmp_path / "elsewhere.db"))
    assert one.n_scored == 1 and (tmp_path / "elsewhere.db").is_file()

    only_bad = [world["input"] / "corrupt"]
    assert score(_cfg(world, tmp_path / "bad", bundle=world["series_bundle"], nodules=None,
                      inputs=only_bad)).exit_code == 2
    skipped = score(_cfg(world, tmp_path / "skip", bundle=world["series_bundle"], nodules=None, inputs=good_only,
                         rules=["min_slices=100"]))
    assert skipped.exit_code == 2 and skipped.n_skipped == 3

    # a bundle's own eligibility rules are the defaults, and the user can lift them
    strict = S.make_bundle(tmp_path / "strict", "series", extra_meta={"eligibility": {"min_slices": 50}})
    by_bundle = score(_cfg(world, tmp_path / "strict_out", bundle=strict, nodules=None, inputs=good_only))
    assert by_bundle.n_skipped == 3 and set(by_bundle.skip_reasons) == {"N slices, fewer than min_slices=N"}
    lifted = score(_cfg(world, tmp_path / "strict_out", bundle=strict, nodules=None, inputs=good_only[:1],
                        rules=["min_slices=none"]))
    assert lifted.n_scored == 1 and lifted.exit_code == 0


def test_second_run_on_a_busy_database_is_refused(world, tmp_path):
    from medsuite.pipelines.scoring.runner import _DbLock

    with _DbLock(tmp_path / "out" / "medsuite.db"), pytest.raises(UsageError, match="another 'medsuite score' run"):
        score(_cfg(world, tmp_path / "out"))


@pytest.mark.parametrize("change, words", [
    ({"bundle": Path("/nonexistent/bundle")}, "bundle not found"),
    ({"rules": ["colour=red"]}, "unknown rule"),
    ({"nodules": None}, "--nodules"),
    ({"engine": "spark"}, "--engine"),
    ({"inputs": [Path("/nonexistent/input")]}, "input not found"),
])
def test_usage_errors(world, tmp_path, change, words):
    with pytest.raises(UsageError, match=words):
        score(_cfg(world, tmp_path / "out", **change))


def _app():
    import typer

    from medsuite.commands.score import command

    app = typer.Typer()
    app.command("score")(command)
    app.command("noop")(lambda: None)  # two commands, so that "score" is a sub-command as in `medsuite`
    return app


def test_cli_exit_codes(world, tmp_path):
    runner = CliRunner()
    app = _app()
    bad = runner.invoke(app, ["score", str(world["nodule_bundle"]), str(world["input"]), "--out", str(tmp_path)])
    assert bad.exit_code == 3 and "--nodules" in bad.output
    broken = tmp_path / "broken_bundle"
    broken.mkdir()
    (broken / "bundle.json").write_text("{not json")
    res = runner.invoke(app, ["score", str(broken), str(world["input"]), "--out", str(tmp_path / "o")])
    assert res.exit_code == 3 and "cannot load the model bundle" in res.output
    ok = runner.invoke(app, ["score", str(world["series_bundle"]), str(world["input"] / "case000"), "--out",
                             str(tmp_path / "ok"), "--workers", "1", "--quiet", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert "1 scored" in ok.output


def test_cli_unexpected_error_exits_4_and_closes_the_run(world, tmp_path, monkeypatch):
    """A failure that is not a series' error (here: the database cannot take a series) is exit code 4, never 1,
    and the run row is closed as 'failed' so that the next run resumes."""
    from medsuite.pipelines.scoring import runner

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner.ScoreStore, "commit_series", broken)
    res = CliRunner().invoke(_app(), ["score", str(world["series_bundle"]), str(world["input"] / "case000"), "--out",
                                      str(tmp_path / "o"), "--workers", "1", "--quiet", "--device", "cpu"])
    assert res.exit_code == 4, res.output
    assert "the run stopped: OSError" in res.output and "run the same command again" in res.output
    conn = sqlite3.connect(tmp_path / "o" / "medsuite.db")
    assert [r[0] for r in conn.execute("SELECT status FROM runs")] == ["failed"]
    conn.close()


def test_a_run_leaves_the_callers_logging_and_warnings_alone(world, tmp_path, monkeypatch):
    """Worker warnings are collected in the worker processes; the process that runs `score` never gets a
    handler on its root logger nor a changed warnings filter (both process-wide, neither thread-safe)."""
    import sys
    import warnings

    added, ours = [], []
    real_add, real_catch = logging.Logger.addHandler, warnings.catch_warnings

    def add(self, handler):
        added.append(self.name)
        return real_add(self, handler)

    def caller_is_medsuite(fn):
        def wrapper(*a, **k):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("medsuite"):
                ours.append(fn.__name__)
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(logging.Logger, "addHandler", add)
    for name in ("simplefilter", "filterwarnings", "catch_warnings"):
        monkeypatch.setattr(warnings, name, caller_is_medsuite(getattr(warnings, name)))
    assert real_catch is not warnings.catch_warnings
    root_handlers = list(logging.getLogger().handlers)
    summary = score(_cfg(world, tmp_path / "out", workers=1))
    assert summary.n_scored == 3
    assert "root" not in added and ours == []
    assert logging.getLogger().handlers == root_handlers
