"""The atomic-output helper: whole files or nothing, and a killed writer's leftovers removed by the next."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medsuite.io.atomic import (
    atomic_dir,
    atomic_open,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temps,
    temp_path_for,
)


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_temp_name_keeps_the_target_suffixes(tmp_path):
    tmp = temp_path_for(tmp_path / "image.nii.gz")
    assert tmp.name.startswith(".image.nii.gz.") and tmp.name.endswith(".tmp.nii.gz")
    with atomic_path(tmp_path / "image.nii.gz") as path:
        assert path.name.endswith(".nii.gz") and path.exists()
        path.write_bytes(b"x")
    assert (tmp_path / "image.nii.gz").read_bytes() == b"x"


def test_json_is_strict(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "a.json", {"x": float("nan")})
    assert not any(tmp_path.iterdir())
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_file_mode_is_applied(tmp_path):
    atomic_write_text(tmp_path / "secret", "s", mode=0o600)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "scores.parquet"
    # a temp of this (live) process, and one of a process that has exited
    live = temp_path_for(target)
    live.write_bytes(b"live")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    dead = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    dead.write_bytes(b"dead")
    other = tmp_path / ".other.parquet.host-1-deadbeef.tmp.parquet"
    other.write_bytes(b"other target")
    removed = remove_stale_temps(target)
    assert removed == [dead]
    assert live.exists() and other.exists() and not dead.exists()


def test_atomic_dir_refuses_existing_without_overwrite(tmp_path):
    target = tmp_path / "bundle"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_dir(target) as tmp:
            pass
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    with pytest.raises(KeyError), atomic_dir(tmp_path / "x") as tmp:
        (tmp / "part").write_text("p")
        raise KeyError("stop")
    assert not any(tmp_path.iterdir())
