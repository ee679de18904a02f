"""VolumeCache under several writer and reader processes: one entry, no torn reads, no temp leftovers."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from medsuite.io.cache import VolumeCache, params_hash
from medsuite.io.volume import Volume

UID = "1.2.826.0.1.3680043.8.498.77"
PARAMS = {"spacing": [1.0, 1.0, 1.0], "window": "lung"}


def _expected() -> np.ndarray:
    return np.arange(40 * 64 * 64, dtype=np.int32).reshape(40, 64, 64) % 5003


def _worker(root: str, calls_dir: str, start_at: float, rounds: int) -> list[int]:
    """Open the cache and `get` the same entry several times; the loader records each call in a file."""
    while time.time() < start_at:  # line the processes up so their writes really overlap
        time.sleep(0.001)
    cache = VolumeCache(root)

    def loader() -> Volume:
        Path(calls_dir, f"{os.getpid()}-{time.time_ns()}").touch()
        time.sleep(0.05)  # widen the window in which another writer can win the rename
        return Volume(_expected(), spacing=(2.0, 0.5, 0.5), series_uid=UID)

    sums = []
    for _ in range(rounds):
        volume = cache.get(UID, PARAMS, loader)
        sums.append(int(np.asarray(volume.array, dtype=np.int64).sum()))
    return sums


def _run(tmp_path: Path, n_procs: int, rounds: int) -> tuple[list[list[int]], int]:
    root, calls = tmp_path / "cache", tmp_path / "calls"
    calls.mkdir()
    start_at = time.time() + 1.5
    # an executor, not a Pool: a worker that dies fails the test instead of being respawned forever
    with ProcessPoolExecutor(n_procs, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(_worker, *zip(*[(str(root), str(calls), start_at, rounds)] * n_procs, strict=True)))
    return results, len(list(calls.iterdir()))


def test_concurrent_writers_and_readers_agree_on_one_entry(tmp_path):
    results, n_loads = _run(tmp_path, n_procs=4, rounds=3)
    expected = int(_expected().astype(np.int64).sum())
    assert all(s == expected for sums in results for s in sums)
    assert 1 <= n_loads <= 4  # racing writers may each build, but only one entry survives
    root = tmp_path / "cache"
    assert [p.name for p in root.iterdir()] == [UID]  # no .tmp-/.trash- leftovers
    assert [p.name for p in (root / UID).iterdir()] == [params_hash(PARAMS)]
    assert len(VolumeCache(root)) == 1


def test_concurrent_processes_rebuild_a_corrupt_entry_once_each_at_most(tmp_path):
    root = tmp_path / "cache"
    cache = VolumeCache(root)
    cache.get(UID, PARAMS, lambda: Volume(_expected(), spacing=(2.0, 0.5, 0.5), series_uid=UID))
    entry = root / UID / params_hash(PARAMS)
    data = (entry / "array.npy").read_bytes()
    (entry / "array.npy").write_bytes(data[: len(data) // 2])
    results, n_loads = _run(tmp_path, n_procs=3, rounds=2)
    expected = int(_expected().astype(np.int64).sum())
    assert all(s == expected for sums in results for s in sums)
    assert 1 <= n_loads <= 3 * 2
    assert cache.contains(UID, PARAMS)
    assert sorted(p.name for p in root.iterdir()) == [UID]
