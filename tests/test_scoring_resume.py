"""A run killed with SIGKILL mid-way and started again scores every series exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
import scoring_support as S

from medsuite.pipelines.scoring import ScoreConfig, score

N_SERIES = 20




@pytest.mark.slow
def test_sigkill_then_resume_scores_each_series_once(tmp_path):
    cohort = S.make_cohort(tmp_path / "cohort", n_good=N_SERIES, extras=False)
    bundle = S.make_bundle(tmp_path / "bundle", "series")
    out = tmp_path / "out"
    db = out / "medsuite.db"
    # the score command as its own program (what `medsuite score` runs), killed mid-run
    entry = "import typer; from medsuite.commands.score import command; typer.run(command)"
    cmd = [sys.executable, "-c", entry, str(bundle), str(tmp_path / "cohort"), "--out", str(out),
           "--workers", "1", "--batch-size", "1", "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while S.scored_count(db) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)  # the main process only, as the OOM killer would
        proc.wait(timeout=10)
        at_kill = S.scored_count(db)
        assert 3 <= at_kill < N_SERIES
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the orphaned worker processes of the killed run
        except ProcessLookupError:
            pass

    summary = score(ScoreConfig(bundle=bundle, inputs=[tmp_path / "cohort"], out=out, workers=2, progress=False))
    assert summary.exit_code == 0
    assert summary.n_already == at_kill and summary.n_scored == N_SERIES - at_kill
    df = pd.read_parquet(out / "scores.parquet")
    assert len(df) == N_SERIES and sorted(df["series_uid"]) == sorted(cohort["good"])
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT series_uid) FROM predictions").fetchone() == (N_SERIES,
                                                                                                     N_SERIES)
    scored_rows = conn.execute("SELECT COUNT(*) FROM series WHERE status='scored'").fetchone()[0]
    assert scored_rows == N_SERIES  # the killed run's committed series + the rest, no series in both
    statuses = [r[0] for r in conn.execute("SELECT status FROM runs ORDER BY started_at")]
    assert statuses == ["failed", "finished"]  # the killed run is marked as such
    conn.close()


@pytest.mark.slow
def test_sigterm_closes_the_run_row_and_exits_130(tmp_path):
    """SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C: the run row is 'failed', not 'running',
    the exit code is 130 (not 1, which means "some series failed"), and a rerun carries on."""
    S.make_cohort(tmp_path / "cohort", n_good=N_SERIES, extras=False)
    bundle = S.make_bundle(tmp_path / "bundle", "series")
    out = tmp_path / "out"
    db = out / "medsuite.db"
    cmd = [sys.executable, "-m", "medsuite", "score", str(bundle), str(tmp_path / "cohort"), "--out", str(out),
           "--workers", "1", "--batch-size", "1", "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while S.scored_count(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT status FROM runs")] == ["failed"]
    conn.close()
    summary = score(ScoreConfig(bundle=bundle, inputs=[tmp_path / "cohort"], out=out, workers=1, progress=False))
    assert summary.exit_code == 0 and summary.n_scored + summary.n_already == N_SERIES
