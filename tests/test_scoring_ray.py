"""The Ray engine on a real two-node Ray cluster started with `ray start` on loopback (tests/ray_cluster.py).

The drivers run as `medsuite score` subprocesses with the cluster's environment (Ray reads its loopback
switch when imported, so the test process itself never imports Ray).
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray  # noqa: E402,F401  (the [ray] extra; installed by .ci/run)
import scoring_support as S
from ray_cluster import LoopbackCluster, ray_env

from medsuite.pipelines.scoring import ScoreConfig, score

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no work (0 CPUs, as is usual) and two worker nodes of 2 CPUs."""
    c = LoopbackCluster()
    try:
        c.start_head(num_cpus=0, wait=False)  # the workers retry until the head's GCS answers
        c.add_worker(num_cpus=2)
        c.add_worker(num_cpus=2)
        c.worker_ids = {k for k, cpus in c.wait_nodes(3).items() if cpus > 0}
        assert len(c.worker_ids) == 2
        yield c
    finally:
        c.stop()


def _score_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsuite", "score", *args], env=ray_env(), capture_output=True,
                          text=True, timeout=timeout)


def _popen_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medsuite", "score", *args], env=ray_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _node_counts(text: str, stage: str) -> dict[str, int]:
    """{node id prefix: series} from the summary line `ray: <stage> on N node(s) (...): id n, id n`."""
    m = re.search(rf"ray: {re.escape(stage)} on \d+ node\(s\) \([a-z]+\): (.*)", text)
    assert m, text
    return {k: int(v) for k, v in (part.rsplit(" ", 1) for part in m.group(1).split(", "))}


def _errors(db: Path) -> set:
    conn = sqlite3.connect(db)
    try:
        return {tuple(r) for r in conn.execute("SELECT series_uid, stage, error FROM errors")}
    finally:
        conn.close()




def test_cluster_listens_on_loopback_only(cluster):
    addresses = cluster.listening()
    assert addresses and all(a.startswith(("127.0.0.1:", "::ffff:127.0.0.1:", "::1:")) for a in addresses), addresses


def test_two_nodes_share_the_work_and_match_the_local_engine(cluster, tmp_path):
    cohort = S.make_cohort(tmp_path / "cohort", n_good=6)
    S.nodule_table(cohort).to_csv(tmp_path / "nodules.csv", index=False)
    bundle = S.make_bundle(tmp_path / "bundle.zip", "nodule")
    local = score(ScoreConfig(bundle=bundle, inputs=[tmp_path / "cohort"], out=tmp_path / "local",
                              nodules=tmp_path / "nodules.csv", workers=2, batch_size=4, progress=False))
    # relative paths, from another working folder: the driver resolves them, every node opens the same files
    res = subprocess.run(
        [sys.executable, "-m", "medsuite", "score", "bundle.zip", "cohort", "--out", "ray", "--nodules", "nodules.csv",
         "--engine", "ray", "--ray-address", cluster.address, "--batch-size", "4", "--quiet"],
        env=ray_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert res.returncode == 1, res.stderr  # 1 = some failed: the corrupt series and the nodule outside its scan
    assert local.exit_code == 1
    # both worker nodes read and sampled series, and scanned headers
    read = _node_counts(res.stderr, "read+sample")
    assert sum(read.values()) == len(cohort["good"]) + 1, res.stderr  # + the one that cannot be decoded
    assert {k[:8] for k in cluster.worker_ids} == set(read), (cluster.worker_ids, read)
    assert {k[:8] for k in cluster.worker_ids} == set(_node_counts(res.stderr, "header scan"))
    assert sum(_node_counts(res.stderr, "inference").values()) == len(cohort["good"]) + 1

    a = pd.read_parquet(tmp_path / "local" / "scores.parquet")
    b = pd.read_parquet(tmp_path / "ray" / "scores.parquet")
    keys = ["series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "label", "threshold", "bundle_sha256"]
    pd.testing.assert_frame_equal(a[keys], b[keys])
    assert (a["probability"] - b["probability"]).abs().max() <= 1e-6
    local_errors, ray_errors = _errors(tmp_path / "local" / "medsuite.db"), _errors(tmp_path / "ray" / "medsuite.db")
    assert local_errors == ray_errors and sorted(e[1] for e in ray_errors) == ["discover", "preprocess", "read"]
    assert S.PATIENT_PREFIX not in res.stderr
    conn = sqlite3.connect(tmp_path / "ray" / "medsuite.db")
    run = conn.execute("SELECT status, engine FROM runs").fetchone()
    conn.close()
    assert run == ("finished", "ray")


def _slow_bundle(path: Path) -> Path:
    """A nodule bundle whose model takes long enough per batch that a run lasts several seconds."""
    import torch

    from medsuite.data.blocks import SliceStack
    from medsuite.learn.bundle import export_bundle
    from medsuite.learn.models import build_model

    torch.manual_seed(0)
    block = SliceStack(k=3, size=64, spacing_mm=2.0, pixel_mm=0.5, window="lung")
    kwargs = {"in_channels": 3, "n_classes": 2, "width": 48, "depth": 4}
    return export_bundle(path, build_model("slice_cnn", **kwargs), arch="slice_cnn", arch_kwargs=kwargs,
                         block_spec=block.spec(), labels=["benign", "malignant"], threshold=0.5, task="nodule")


def _many_nodules(cohort: dict, per_series: int) -> pd.DataFrame:
    rows = []
    for i, uid in enumerate(cohort["good"]):
        x, y, z = cohort["centers"][uid]
        for k in range(per_series):
            rows.append({"series_uid": uid, "patient_id": f"{S.PATIENT_PREFIX}{i:03d}", "x_mm": x + (k % 5) - 2,
                         "y_mm": y + (k // 5) - 2, "z_mm": z, "diameter_mm": 6.0, "label": k % 2,
                         "nodule_id": f"n{i}-{k}"})
    return pd.DataFrame(rows)


def test_losing_the_node_of_the_inference_actor_mid_run_scores_every_series_once(cluster, tmp_path):
    """The node that hosts the inference actor (and reads series) is killed mid-run: its reads are redone
    and a new actor starts on the other node; every series and nodule ends up scored exactly once.
    Also: --ray-ship-inputs (files and bundle sent through the object store, read from a node's temp copy)."""
    n_series, per_series = 16, 8
    cohort = S.make_cohort(tmp_path / "cohort", n_good=n_series, extras=False)
    _many_nodules(cohort, per_series).to_csv(tmp_path / "nodules.csv", index=False)
    bundle = _slow_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    db = out / "medsuite.db"
    proc = _popen_cli(str(bundle), str(tmp_path / "cohort"), "--out", str(out), "--nodules",
                      str(tmp_path / "nodules.csv"), "--engine", "ray", "--ray-address", cluster.address,
                      "--batch-size", "2", "--ray-actors", "1:1", "--quiet", "--ray-ship-inputs")
    try:
        deadline = time.monotonic() + 180
        while S.scored_count(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the node could be killed: {proc.stdout.read()}"
        hosts = [node for node in cluster.nodes[1:] if node.processes("ray::InferenceActor")]
        assert len(hosts) == 1, "one worker node hosts the inference actor"
        hosts[0].kill()  # the machine is gone: raylet, object store, the actor and every worker at once
        killed_at = time.monotonic()
        at_kill = S.scored_count(db)
        text, _ = proc.communicate(timeout=240)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert at_kill < n_series, "the run was over before the node went"
    assert proc.returncode == 0, text
    assert took < 120, f"{took:.0f} s after the loss"
    conn = sqlite3.connect(db)
    try:
        scored = conn.execute("SELECT COUNT(*), COUNT(DISTINCT series_uid) FROM series WHERE status='scored'").fetchone()
        predictions = conn.execute("SELECT COUNT(*), COUNT(DISTINCT series_uid || '/' || nodule_id) FROM predictions"
                                   ).fetchone()
        statuses = [r[0] for r in conn.execute("SELECT status FROM runs")]
    finally:
        conn.close()
    assert scored == (n_series, n_series)
    assert predictions == (n_series * per_series, n_series * per_series)
    assert statuses == ["finished"]
    assert sum(_node_counts(text, "read+sample").values()) == n_series
    # the lost actor was replaced, and its node's work re-submitted
    started = int(re.search(r"inference actors started (\d+)", text).group(1))
    retried = int(re.search(r"(\d+) series re-submitted", text).group(1))
    assert started == 2 and retried >= 1, text


def test_ray_client_address_is_refused_with_advice(tmp_path):
    bundle = S.make_bundle(tmp_path / "bundle", "series")
    (tmp_path / "empty").mkdir()
    res = _score_cli(str(bundle), str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--engine", "ray",
                     "--ray-address", "ray://127.0.0.1:10001", timeout=120)
    assert res.returncode == 3, res.stderr
    assert "Ray Client" in res.stderr and "ray job submit" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o" / "medsuite.db").exists()  # nothing was run: no run row


def test_unreachable_and_silent_addresses_fail_fast(tmp_path):
    import socket

    bundle = S.make_bundle(tmp_path / "bundle", "series")
    (tmp_path / "empty").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once closed
    # the subprocess timeouts bound the waits (a hang fails the test); no wall-clock asserts on a shared machine
    res = _score_cli(str(bundle), str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--engine", "ray",
                     "--ray-address", f"127.0.0.1:{closed}", "--ray-timeout", "3", timeout=300)
    assert res.returncode == 3 and "no Ray cluster answers there" in res.stderr, res.stderr
    # a port that accepts connections but is no Ray GCS: the connection attempt gives up after --ray-timeout
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        res = _score_cli(str(bundle), str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--engine", "ray",
                         "--ray-address", f"127.0.0.1:{silent.getsockname()[1]}", "--ray-timeout", "3", timeout=300)
    assert res.returncode == 3 and "did not connect within 3 s" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_local_ray_listens_on_loopback_only(tmp_path):
    """Without --ray-address medsuite starts a one-node Ray itself: on loopback only, gone after the run.
    (Its results equal the local engine's as on the cluster above: the same engine.)"""
    from ray_cluster import listening

    cohort = S.make_cohort(tmp_path / "cohort", n_good=2, extras=False)
    bundle = S.make_bundle(tmp_path / "bundle", "series")
    env = ray_env()
    del env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]  # medsuite sets it itself for the Ray it starts
    proc = subprocess.Popen([sys.executable, "-m", "medsuite", "score", str(bundle), str(tmp_path / "cohort"), "--out",
                             str(tmp_path / "ray"), "--engine", "ray", "--workers", "1", "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: set[str] = set()
    try:
        while proc.poll() is None:
            seen.update(listening([proc.pid]))
            time.sleep(0.2)
        text = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text
    assert seen and all(a.startswith(("127.0.0.1:", "::ffff:127.0.0.1:")) for a in seen), seen
    deadline = time.monotonic() + 30  # Ray's processes end with the run
    while listening([proc.pid]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not listening([proc.pid])
    scored = pd.read_parquet(tmp_path / "ray" / "scores.parquet")
    assert sorted(scored["series_uid"]) == sorted(cohort["good"])
