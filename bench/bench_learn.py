"""Learner overhead: one epoch (train + validation with a metric) with `Learner.fit` against a plain
hand-written PyTorch loop on the same model, data, optimiser settings and seed, in one run.

    python bench/bench_learn.py                 # CPU, small problem
    python bench/bench_learn.py --device cuda   # also bf16 samples/s and GPU utilisation

Runs are interleaved (the order rotates every round) after one warm-up epoch each; the medians are
compared. Prints the overhead in percent (target: < 3 %).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medsuite.learn.basic_metrics import accuracy
from medsuite.learn.learner import Learner, set_seed
from medsuite.learn.models import build_model
from medsuite.learn.optim import adamw, param_groups


def make_data(n: int, size: int, channels: int, device: str) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, size, size, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x[y == 1, :, size // 4: size // 2, size // 4: size // 2] += 1.0  # something to learn
    n_valid = n // 5
    pin = device == "cuda"
    train = DataLoader(TensorDataset(x[n_valid:], y[n_valid:]), batch_size=ARGS.bs, shuffle=True, pin_memory=pin,
                       num_workers=ARGS.workers, persistent_workers=ARGS.workers > 0)
    valid = DataLoader(TensorDataset(x[:n_valid], y[:n_valid]), batch_size=ARGS.bs * 2, pin_memory=pin,
                       num_workers=ARGS.workers, persistent_workers=ARGS.workers > 0)
    return SimpleNamespace(train=train, valid=valid, vocab=["neg", "pos"])


def make_model() -> nn.Module:
    set_seed(0)
    return build_model("slice_cnn", in_channels=ARGS.channels, n_classes=2, width=ARGS.width, depth=ARGS.depth)


def amp_ctx(device: torch.device, dtype: torch.dtype | None):
    import contextlib

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class PlainLoop:
    """What one would write by hand: the same optimiser, autocast and validation metric."""

    def __init__(self, dls, device: torch.device, dtype: torch.dtype | None, model: nn.Module) -> None:
        self.dls, self.device, self.dtype = dls, device, dtype
        self.model = model.to(device)
        self.opt = adamw(param_groups(self.model, 1e-2), lr=1e-3, wd=1e-2)
        self.loss_func = nn.CrossEntropyLoss()

    def epoch(self) -> float:
        model, dev = self.model, self.device
        model.train()
        losses = []
        for x, y in self.dls.train:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with amp_ctx(dev, self.dtype):
                loss = self.loss_func(model(x), y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        train_loss = float(torch.stack(losses).mean())
        model.eval()
        probs, targets = [], []
        with torch.no_grad():
            for x, y in self.dls.valid:
                with amp_ctx(dev, self.dtype):
                    out = model(x.to(dev, non_blocking=True))
                probs.append(torch.softmax(out.float(), 1).cpu().numpy())
                targets.append(y.numpy())
        accuracy(np.concatenate(targets), np.concatenate(probs))
        return train_loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared, loaded CPU the process CPU time is
    the steadier measure of the work done; on GPU the wall time is what counts."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


class GpuSampler:
    """Samples GPU utilisation (nvidia-smi) every 100 ms while active."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                self.values.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            time.sleep(0.1)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def micro(device: torch.device, dtype: torch.dtype | None, amp) -> None:
    """Fixed cost per batch: a model so small that the loop's own Python work dominates."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8192, 16, generator=g), torch.randint(0, 2, (8192,), generator=g)
    dls = SimpleNamespace(train=DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
                          valid=DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64), vocab=["a", "b"])

    def tiny() -> nn.Module:
        set_seed(0)
        return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))

    plain = PlainLoop(dls, device, dtype, tiny())
    learn = Learner(dls, tiny(), lr=1e-3, wd=1e-2, metrics=[accuracy], device=device, amp=amp, progress=False,
                    checkpoint=False, path="/tmp/bench_learn_micro")
    jobs = {"plain": plain.epoch, "learner": lambda: learn.fit(1)}
    for job in jobs.values():
        job()
    runs: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(ARGS.repeats):
        for name in (["plain", "learner"] if r % 2 == 0 else ["learner", "plain"]):
            runs[name].append(timed(jobs[name], device)[1])
    n = len(dls.train)
    per = {k: statistics.median(v) / n * 1e6 for k, v in runs.items()}
    print(f"fixed cost per training batch (tiny MLP, {n} batches of 8, CPU time): plain {per['plain']:.0f} us, "
          f"learner {per['learner']:.0f} us, learner adds {per['learner'] - per['plain']:+.0f} us per batch")


def main() -> None:
    device = torch.device(ARGS.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[ARGS.amp]
    dls = make_data(ARGS.n, ARGS.size, ARGS.channels, ARGS.device)
    print(f"device={device} threads={torch.get_num_threads()} amp={ARGS.amp} n_train={len(dls.train.dataset)} "
          f"n_valid={len(dls.valid.dataset)} bs={ARGS.bs} input={ARGS.channels}x{ARGS.size}x{ARGS.size} "
          f"model=slice_cnn(width={ARGS.width}, depth={ARGS.depth}) torch={torch.__version__}")
    plain = PlainLoop(dls, device, dtype, make_model())
    amp = ARGS.amp if ARGS.amp != "fp32" else False
    learn = Learner(dls, make_model(), lr=1e-3, wd=1e-2, metrics=[accuracy], device=device, amp=amp,
                    progress=False, checkpoint=False, path="/tmp/bench_learn")
    full = Learner(dls, make_model(), lr=1e-3, wd=1e-2, metrics=[accuracy], device=device, amp=amp,
                   progress=True, checkpoint=True, path="/tmp/bench_learn_full")
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "learner": [], "learner+progress+checkpoint": []}
    jobs = {"plain": plain.epoch, "learner": lambda: learn.fit(1), "learner+progress+checkpoint": lambda: full.fit(1)}
    for job in jobs.values():  # warm-up: imports, allocator, cudnn autotuning
        job()
    names = list(jobs)
    for r in range(ARGS.repeats):  # rotate the order so that no variant always runs first
        for name in names[r % len(names):] + names[: r % len(names)]:
            runs[name].append(timed(jobs[name], device))
    base_wall = statistics.median(w for w, _ in runs["plain"])
    base_cpu = statistics.median(c for _, c in runs["plain"])
    n = len(dls.train.dataset) + len(dls.valid.dataset)
    print(f"{ARGS.repeats} interleaved runs each; medians (overhead = ratio to the plain loop - 1)")
    for name, times in runs.items():
        wall = statistics.median(w for w, _ in times)
        cpu = statistics.median(c for _, c in times)
        print(f"{name:<28} wall {wall * 1e3:8.1f} ms/epoch ({n / wall:7.0f} samples/s) overhead "
              f"{100 * (wall / base_wall - 1):+6.1f} %  |  cpu {cpu * 1e3:8.1f} ms overhead "
              f"{100 * (cpu / base_cpu - 1):+6.1f} %")
    micro(device, dtype, amp)
    if device.type == "cuda":
        with GpuSampler() as gpu:
            t = timed(lambda: learn.fit(ARGS.util_epochs), device)
        util = f"{statistics.mean(gpu.values):.0f} %" if gpu.values else "n/a (nvidia-smi unavailable)"
        print(f"learner {ARGS.amp} on {torch.cuda.get_device_name(0)}: "
              f"{ARGS.util_epochs * len(dls.train.dataset) / t:.0f} train+valid samples/s over {ARGS.util_epochs} "
              f"epochs, mean GPU utilisation {util}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["fp32", "bf16", "fp16"], default=None)
    p.add_argument("--n", type=int, default=1280)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--util-epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ARGS = p.parse_args()
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    if ARGS.amp is None:
        ARGS.amp = "bf16" if ARGS.device.startswith("cuda") else "fp32"
    main()
