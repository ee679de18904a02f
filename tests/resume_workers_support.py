"""The training run that the kill -9 resume test drives in subprocesses (``python tests/resume_workers_support.py
MODE RUN_DIR``): the data layer's real loaders (2.5D `SliceStack`, random `Augment`, one DataLoader worker
process, as the shipped demo configuration), a tiny CNN, one-cycle over 3 epochs, a checkpoint every 2 steps.

MODE ``full`` trains uninterrupted; ``hang`` prints ``READY`` after the 7th step (one step past the
mid-epoch checkpoint of step 6) and sleeps until it is killed; ``resume`` continues from the checkpoint.
"""

from __future__ import annotations

import sys
import time

import torch

N_WORKERS = 1
HANG_AT = 7  # steps done when 'hang' stops; 4 steps an epoch, checkpoint at step 6 = epoch 1, batch 2


def dataloaders(num_workers: int = N_WORKERS):
    from data_helpers import nodule_table, sphere_volume

    from medsuite.data.augment import Augment
    from medsuite.data.block import DataBlock
    from medsuite.data.blocks import Category, SliceStack
    from medsuite.data.source import VolumeSource

    volumes, centers = {}, {}
    for p in range(8):
        uid = f"1.2.{p}"
        volumes[uid], centers[uid] = sphere_volume("isotropic", series_uid=uid, radius_mm=3.0 + p % 3)
    table = nodule_table(n_patients=8, per_patient=3, centers=centers)
    table["split"] = ["train"] * 18 + ["valid"] * 6
    block = DataBlock(blocks=(SliceStack(k=3, size=16), Category()), item_tfms=Augment())
    return block.dataloaders(table, source=VolumeSource(volumes=volumes), bs=4, num_workers=num_workers, seed=0)


def main(mode: str, run_dir: str) -> None:
    from medsuite.learn.callbacks.core import Callback
    from medsuite.learn.learner import Learner, set_seed
    from medsuite.learn.models import build_model

    class Hang(Callback):
        def after_batch(self) -> None:
            if self.learn.training and self.learn.train_iter == HANG_AT:
                print("READY", flush=True)
                time.sleep(600)

    set_seed(0)
    model = build_model("slice_cnn", in_channels=3, n_classes=2, width=4, depth=2)
    learn = Learner(dataloaders(), model, path=run_dir, seed=0, progress=False, checkpoint_every=2,
                    cbs=[Hang()] if mode == "hang" else [])
    learn.fit_one_cycle(3, 1e-2, resume=mode == "resume")
    print("DONE", len(learn.recorder.losses), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
