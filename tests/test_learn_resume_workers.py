"""Exact resume with DataLoader worker processes: a training run with random augmentation in one worker
(the shipped demo's ``num_workers: 1``) is SIGKILLed mid-epoch, resumed in a new process, and must end
bit-identical to an uninterrupted run, every tensor of the final checkpoint; the killed run's worker dies
with it and no temporary file is left."""

from __future__ import annotations

import pytest
import torch
from process_support import kill9_and_check_orphans, start, temp_leftovers, wait_for_line

from medsuite.learn.checkpoint import load_checkpoint
from medsuite.learn.loaders import EpochSampler, item_seed

SCRIPT = "tests/resume_workers_support.py"


def test_item_seeds_are_pure_functions_of_seed_epoch_index_position():
    from torch.utils.data import RandomSampler

    base = RandomSampler(range(10))
    a, b = EpochSampler(base, 3, item_seeds=True), EpochSampler(base, 3, item_seeds=True)
    a.set_epoch(2), b.set_epoch(2)
    b.set_skip(4)
    full = list(a)
    assert list(b) == full[4:]  # a resume skips, and the items left keep their seeds
    assert all(s == item_seed(3, 2, i, pos) for pos, (i, s) in enumerate(full))
    a.set_epoch(3)
    assert [s for _, s in a] != [s for _, s in full]  # a new epoch, new augmentation
    assert len({item_seed(0, 0, 1, p) for p in range(100)}) == 100  # repeated draws of one item differ


@pytest.mark.slow
def test_sigkill_mid_epoch_with_a_worker_then_resume_is_bit_exact(tmp_path):
    killed, full = tmp_path / "killed", tmp_path / "full"
    hang = start([SCRIPT, "hang", str(killed)])
    reference = start([SCRIPT, "full", str(full)])
    wait_for_line(hang, "READY")
    survivors = kill9_and_check_orphans(hang)
    assert not survivors, f"DataLoader worker(s) {survivors} outlived the killed trainer"
    state = load_checkpoint(killed / "checkpoints" / "last.safetensors").meta["state"]
    assert (state["epoch"], state["iter"], state["train_iter"]) == (1, 2, 6)  # mid-epoch checkpoint
    assert temp_leftovers(killed) == []

    resumed = start([SCRIPT, "resume", str(killed)])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert out.split() == ["DONE", "12"]  # the recorder's history was restored: all 12 batch losses
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    a = load_checkpoint(full / "checkpoints" / "last.safetensors")
    b = load_checkpoint(killed / "checkpoints" / "last.safetensors")
    assert sorted(a.tensors) == sorted(b.tensors)
    differ = [k for k in a.tensors if not torch.equal(a.tensors[k], b.tensors[k])]
    assert differ == [], f"{len(differ)} of {len(a.tensors)} tensors differ, e.g. {differ[:5]}"
    ra, rb = a.meta["state"]["recorder"], b.meta["state"]["recorder"]
    assert _without_times(ra) == _without_times(rb)  # losses, lrs, metrics per batch and epoch
    assert len(ra["epochs"]) == 3


def _without_times(recorder: dict) -> dict:
    """The recorder's history without its wall-clock times (which differ between any two runs)."""
    out = dict(recorder)
    out["epochs"] = [{k: v for k, v in row.items() if k != "time_s"} for row in recorder["epochs"]]
    return out
