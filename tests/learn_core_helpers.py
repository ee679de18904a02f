"""Tiny data and models for the training-core tests (test_learn_core_*), and the script the
kill-and-resume test runs in a subprocess (``python tests/learn_core_helpers.py ...``)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_xy(n: int, n_features: int = 8, seed: int = 0, pos_share: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < pos_share).long()
    x = torch.randn(n, n_features, generator=g) + 1.5 * y[:, None].float() * torch.linspace(1, 0, n_features)
    return x, y


def tiny_dls(n_train: int = 64, n_valid: int = 32, bs: int = 8, seed: int = 0, pos_share: float = 0.5,
             shuffle: bool = True, images: bool = False) -> SimpleNamespace:
    x, y = make_xy(n_train + n_valid, 16 if images else 8, seed, pos_share)
    if images:
        x = x.reshape(-1, 1, 4, 4)
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=bs, shuffle=shuffle)
    valid = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=bs)
    return SimpleNamespace(train=train, valid=valid, vocab=["benign", "malignant"])


class TinyNet(nn.Module):
    """Linear-BN-ReLU-(Dropout)-Linear with ``embed``."""

    def __init__(self, n_in: int = 8, hidden: int = 16, n_classes: int = 2, dropout: float = 0.0,
                 norm: bool = True, pre_norm_bias: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden, bias=pre_norm_bias or not norm),
                                  nn.BatchNorm1d(hidden) if norm else nn.Identity(),
                                  nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class TinyCNN(nn.Module):
    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def ddp_worker(run_dir: str) -> dict:
    """Trained under `medsuite.learn.distributed.launch` (2 processes): lr_find, then 2 epochs one-cycle,
    per-rank batch 8 with shuffling and batch norm, so the global batch is a single-process batch of 16.
    Returns rank 0's view, and every rank's lr_find result."""
    from medsuite.learn import distributed as D
    from medsuite.learn.basic_metrics import accuracy, roc_auc
    from medsuite.learn.callbacks.logging import CSVLogger
    from medsuite.learn.learner import Learner, set_seed

    torch.set_num_threads(1)
    set_seed(0)
    dls = tiny_dls(n_train=64, n_valid=30, bs=8, shuffle=True)
    model = TinyNet(norm=True, pre_norm_bias=False)  # see test_ddp_two_processes_match_single_process
    learn = Learner(dls, model, path=run_dir, seed=0, progress=False, metrics=[accuracy, roc_auc],
                    cbs=[CSVLogger()])
    assert D.world_size() == 2 and learn.is_main == (D.rank() == 0)
    found = learn.lr_find(num_it=12)
    learn.fit_one_cycle(2, 1e-2)
    assert learn.model is model and type(model.body[1]) is torch.nn.BatchNorm1d  # the user's classes back
    preds = learn.get_preds()
    return {"last": learn.recorder.last, "probs": preds.probs, "targets": preds.targets,
            "weights": {k: v.clone() for k, v in learn.model.state_dict().items()},
            "n_batches": len(learn.recorder.losses),
            "lr_find": D.gather_objects((found.losses.tolist(), found.valley, found.steep, found.minimum))}


def resume_main(argv: list[str]) -> None:
    """``mode run_dir``: mode 'full' trains 3 epochs; 'hang' checkpoints every 3 steps and, after the
    checkpoint at step 15 (mid epoch 2), trains two more steps then prints READY and sleeps until
    killed; 'resume' continues from the last checkpoint. Final weights go to run_dir/final.safetensors."""
    import time

    from medsuite.learn.callbacks.core import Callback
    from medsuite.learn.checkpoint import save_weights
    from medsuite.learn.learner import Learner, set_seed

    mode, run_dir = argv
    set_seed(0)
    dls = tiny_dls(n_train=80, n_valid=24, bs=8)  # 10 batches per epoch

    class Hang(Callback):
        def after_batch(self) -> None:
            if self.learn.training and self.learn.train_iter == 16:  # step 15 checkpointed, 17th batch done
                print("READY", flush=True)
                time.sleep(600)

    cbs = [Hang()] if mode == "hang" else []
    learn = Learner(dls, TinyNet(dropout=0.2), path=run_dir, seed=0, progress=False, checkpoint_every=3,
                    cbs=cbs)
    learn.fit_one_cycle(3, 1e-2, resume=(mode == "resume"))
    save_weights(f"{run_dir}/final.safetensors", learn.model)
    print("DONE", len(learn.recorder.losses), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    resume_main(sys.argv[1:])


def ddp_hang(marker: str) -> None:
    """A rank that reports it started (a file per rank) and then waits for ever, deaf to SIGINT as a rank
    blocked in native code (a collective, a kernel) is: torch's own parent-death signal is SIGINT."""
    import os
    import signal
    import time
    from pathlib import Path

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Path(f"{marker}.{os.environ['RANK']}").write_text(str(os.getpid()))
    time.sleep(3600)
