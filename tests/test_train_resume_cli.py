"""`medsuite train CONFIG` with the demo's ``num_workers: 1``, SIGKILLed in epoch 3 to 6 of 6 and continued
with ``--resume``, ends bit-identical to an uninterrupted run (issue 17 item 4, as a user meets it): every tensor
of the final checkpoint, and the bundle's weights. The run is frozen (SIGSTOP) the moment its checkpoint says
two to four epochs are done, so the kill never comes after the last epoch however fast the machine is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from phi_trace_support import make_marked_cohort
from process_support import env, kill9_and_check_orphans, start, temp_leftovers

from medsuite.learn.checkpoint import load_checkpoint

EPOCHS = 6


def _config(root, out) -> dict:
    return {
        "task": "nodule", "name": "m", "out": str(out),
        "data": {"table": str(root / "nodules.csv"), "dicom_root": str(root / "dicom"),
                 "cache_dir": str(root / "cache"), "split": {"column": "split"}, "bs": 2, "num_workers": 1},
        "block": {"type": "SliceStack", "k": 3, "size": 32, "spacing_mm": 2.0, "pixel_mm": 0.8, "window": "lung"},
        "model": {"arch": "slice_cnn", "kwargs": {"width": 4, "depth": 2, "subunits": 1}},
        "train": {"epochs": EPOCHS, "lr": 0.003, "seed": 0, "device": "cpu", "amp": False},
        "report": {"baselines": [], "n_boot": 100, "top_losses": 0},
    }


@pytest.mark.slow
def test_train_killed_in_epoch_3_and_resumed_matches_the_uninterrupted_run(tmp_path):
    root = tmp_path / "data"
    table = make_marked_cohort(root / "dicom", patients=16)
    table.to_csv(root / "nodules.csv", index=False)
    configs = {}
    for name in ("full", "killed"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(_config(root, tmp_path / name)))
    full = subprocess.run([sys.executable, "-m", "medsuite", "train", str(configs["full"]), "--quiet"],
                          capture_output=True, text=True, env=env(), timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]

    proc = start(["-m", "medsuite", "train", str(configs["killed"]), "--quiet"], start_new_session=True)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.safetensors"
    deadline = time.monotonic() + 600
    frozen = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if load_checkpoint(ckpt).meta["state"]["epoch"] in (2, 3, 4):  # two to four of six epochs done
                os.killpg(proc.pid, signal.SIGSTOP)  # nothing moves between here and the kill
                frozen = True
                break
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    assert frozen, f"the run ended (exit {proc.poll()}) before its checkpoint showed epoch 2, 3 or 4"
    assert not kill9_and_check_orphans(proc, then_continue=True)  # the epoch under way loses its batches
    state = load_checkpoint(ckpt).meta["state"]
    assert state["epoch"] in (2, 3, 4, 5) and not state["finished"]

    resumed = subprocess.run([sys.executable, "-m", "medsuite", "train", str(configs["killed"]), "--resume",
                              "--quiet"], capture_output=True, text=True, env=env(), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = load_checkpoint(ckpt)
    differ = [k for k in a.tensors if not torch.equal(a.tensors[k], b.tensors[k])]
    assert sorted(a.tensors) == sorted(b.tensors) and differ == [], f"{len(differ)} of {len(a.tensors)} differ"
    wa = (tmp_path / "full" / "m.bundle" / "model.safetensors").read_bytes()
    wb = (tmp_path / "killed" / "m.bundle" / "model.safetensors").read_bytes()
    assert wa == wb
    assert temp_leftovers(tmp_path / "killed") == []
