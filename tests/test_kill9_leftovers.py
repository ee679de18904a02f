"""kill -9 leaves no orphans and no partial files (issue 17 item 11): `medsuite score` and `medsuite demo-data`
killed mid-run with their worker processes at work; writers killed mid-write leave temporaries that the next
write removes (checkpoints, bundles, score exports). Training with DataLoader workers is killed in
tests/test_learn_resume_workers.py; convert is the io tests' (test_io_convert_*)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
import scoring_support as S
from process_support import descendants, env, kill9_and_check_orphans, start, temp_leftovers

from medsuite.io.atomic import temp_path_for


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_temp(target, *, folder: bool = False):
    """A temporary of ``target`` as a writer killed mid-write leaves it (its pid is dead)."""
    path = temp_path_for(target)
    host = socket.gethostname()
    name = path.name.replace(f"-{__import__('os').getpid()}-", f"-{_dead_pid()}-")
    stale = path.with_name(name)
    assert host  # the same host: only this host's dead writers are cleaned
    if folder:
        stale.mkdir(parents=True)
        (stale / "half.bin").write_bytes(b"\0" * 1000)
    else:
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"")  # the 0-byte temp of an interrupted export
    return stale




def _run_started(db) -> bool:
    """The run row is committed: scoring has begun (its reader workers start with the first series)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] > 0
        finally:
            conn.close()
    except sqlite3.Error:
        return False


@pytest.mark.slow
def test_kill9_score_leaves_no_orphan_workers_and_a_rerun_completes(tmp_path):
    """Killed at a moment fixed by the test, not by timing: as soon as the run row is committed the test takes
    the database's write lock, so the run cannot commit a single series (let alone finish) however slow the
    machine; its workers start and prepare series meanwhile; the process group is then frozen (SIGSTOP),
    checked, and the driver SIGKILLed while its workers are alive."""
    n = 24
    cohort = S.make_cohort(tmp_path / "cohort", n_good=n, extras=False)
    bundle = S.make_bundle(tmp_path / "bundle", "series")
    out = tmp_path / "out"
    db = out / "medsuite.db"
    args = ["-m", "medsuite", "score", str(bundle), str(tmp_path / "cohort"), "--out", str(out), "--workers", "2",
            "--batch-size", "1", "--device", "cpu", "--quiet"]
    proc = start(args, start_new_session=True)
    lock = None
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a speed check
        while not _run_started(db) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        lock = sqlite3.connect(db, timeout=60, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # from here no series can be committed: the run cannot end normally
        assert S.scored_count(db) == 0
        while len(descendants(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # its worker processes start and prepare series
        os.killpg(proc.pid, signal.SIGSTOP)  # freeze the group: nothing moves between the checks and the kill
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-3000:]
        assert len(descendants(proc.pid)) >= 2
        survivors = kill9_and_check_orphans(proc, then_continue=True)
    finally:
        if proc.poll() is None:
            proc.kill()
        if lock is not None:
            lock.close()  # the open transaction is rolled back
    assert not survivors, f"worker process(es) {survivors} outlived the killed `medsuite score`"
    assert S.scored_count(db) == 0

    stale = _stale_temp(out / "scores.csv")  # as an export killed mid-write would leave
    rerun = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not stale.exists() and temp_leftovers(out) == []
    df = pd.read_csv(out / "scores.csv")
    assert sorted(df["series_uid"]) == sorted(cohort["good"])
    with sqlite3.connect(out / "medsuite.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow
def test_kill9_demo_data_leaves_no_orphans_and_overwrite_finishes_the_job(tmp_path):
    out = tmp_path / "demo"
    args = ["-m", "medsuite", "demo-data", str(out), "--patients", "8", "--workers", "2", "--size", "64"]
    proc = start(args, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:  # (a hang guard, not a speed check)
            made = [p for p in (out / "dicom").glob("DEMO-*")] if (out / "dicom").is_dir() else []
            if made and len(descendants(proc.pid)) >= 2:
                os.killpg(proc.pid, signal.SIGSTOP)  # frozen at once: nothing moves between the check and the kill
                break
            time.sleep(0.05)
        assert proc.poll() is None, "demo-data ended before it could be killed"
        assert not (out / "nodules.csv").exists() and len(descendants(proc.pid)) >= 2
        survivors = kill9_and_check_orphans(proc, then_continue=True)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not survivors, f"worker process(es) {survivors} outlived the killed `medsuite demo-data`"
    assert not (out / "nodules.csv").exists()  # tables come last: no table of a half-made cohort

    again = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env(), timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "overwrite=True" not in again.stderr.split(
        "(")[0], again.stderr
    assert "Traceback" not in again.stderr
    done = subprocess.run([sys.executable, *args, "--overwrite"], capture_output=True, text=True, env=env(),
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert temp_leftovers(out) == []
    assert sorted(p.name for p in (out / "dicom").iterdir()) == [f"DEMO-{i:04d}" for i in range(1, 9)]
    assert len(pd.read_csv(out / "series.csv")) == 8


def test_writers_remove_temporaries_of_killed_writers(tmp_path):
    import torch

    from medsuite.learn.checkpoint import save_checkpoint
    from medsuite.learn.models import build_model

    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    stale = _stale_temp(ckpt)
    model = build_model("slice_cnn", in_channels=3, n_classes=2, width=4, depth=2)
    save_checkpoint(ckpt, model, torch.optim.SGD(model.parameters(), lr=0.1), None, {"epoch": 1})
    assert not stale.exists() and temp_leftovers(tmp_path) == []

    bundle = tmp_path / "model.bundle"
    stale_dir = _stale_temp(bundle, folder=True)
    S.make_bundle(bundle, "nodule")
    assert not stale_dir.exists() and temp_leftovers(tmp_path) == []
    zipped = tmp_path / "model.zip"
    stale_zip = _stale_temp(zipped)
    S.make_bundle(zipped, "nodule")
    assert not stale_zip.exists() and temp_leftovers(tmp_path) == []


@pytest.mark.slow
def test_kill9_of_a_ddp_launcher_takes_its_ranks_with_it(tmp_path):
    """`medsuite.learn.distributed.launch` (torch.distributed, gloo, 2 ranks): the launcher SIGKILLed once both
    ranks have started (each writes a marker file); no rank survives it, even one deaf to SIGINT (torch's own
    parent-death signal; a rank blocked in a collective does not act on it). Before: 3 survivors."""
    marker = tmp_path / "rank"
    script = ("import sys; from learn_core_helpers import ddp_hang; from medsuite.learn.distributed import launch; "
              f"launch(ddp_hang, 2, {str(marker)!r}, backend='gloo')")
    proc = start(["-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a speed check
        while not all((tmp_path / f"rank.{r}").exists() for r in (0, 1)) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        ranks = {int((tmp_path / f"rank.{r}").read_text()) for r in (0, 1)}
        assert ranks <= descendants(proc.pid)
        survivors = kill9_and_check_orphans(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not survivors, f"rank process(es) {survivors} outlived the killed launcher"
