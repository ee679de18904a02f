"""GPU check: the GPU paths of medsuite, run once on a real GPU, with their figures (at most ~5 min on one GPU).

    python bench/gpu_check.py                 # everything; exit code 0 = every check passed
    python bench/gpu_check.py --json gpu.json # also write the figures as JSON

What runs, and what is asserted:
1. training samples/s of the `Learner` with fp32, bf16 autocast and fp16 autocast + GradScaler, on the same
   model, data and seed: no non-finite loss; the first step's loss (same weights, same batch) within 1 % of
   fp32 and the last ten steps' mean loss within 10 % of fp32's;
2. channels_last (bf16): samples/s, losses as in 1 against bf16;
3. torch.compile (bf16): compile time (first epoch), samples/s after it, losses as in 1 against bf16;
4. batch scoring (`medsuite score`, local engine) of generated CT series on the GPU and on the CPU:
   series/min each; same series and labels, probabilities within 1e-4;
5. Integrated Gradients (`medsuite.interpret.integrated_gradients`) on the GPU and on the CPU: ms per
   attribution; attributions within 1e-3 of the largest value, completeness gap below 0.05;
6. peak GPU memory of each part (`torch.cuda.max_memory_allocated`).

On a machine without CUDA the GPU parts are skipped with a message saying so, the CPU references still run
(smaller), and the exit code is 0 when they pass: the script itself is checked everywhere.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

FAILURES: list[str] = []
FIGURES: dict[str, object] = {}


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILURES.append(what)


def synthetic_dls(n_train: int, size: int, bs: int, seed: int = 0) -> SimpleNamespace:
    """Two classes of 3-channel images (a bright disc or not), as `DataLoaders`-like train/valid."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    n = n_train + bs
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 6) ** 2).float()
    x += y[:, None, None, None].float() * disc
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=bs, shuffle=True)
    valid = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=bs)
    return SimpleNamespace(train=train, valid=valid, vocab=["a", "b"])


def train_run(device: str, amp, *, channels_last=False, compile=False, n_train=2048, size=96, bs=64,
              epochs=3, width=32, depth=4) -> dict:
    """Fit ``epochs`` epochs (the first is a warm-up, and compile's); samples/s of the later ones."""
    from medsuite.learn import Learner, build_model, set_seed

    set_seed(0)
    model = build_model("slice_cnn", in_channels=3, n_classes=2, width=width, depth=depth)
    dls = synthetic_dls(n_train, size, bs)
    learn = Learner(dls, model, device=device, amp=amp, channels_last=channels_last, compile=compile, seed=0,
                    progress=False, lr=1e-3)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        learn.fit(1, lr=1e-3)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    losses = np.array(learn.recorder.losses, dtype=np.float64)
    steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
    out = {"samples_per_s": n_train / steady, "first_epoch_s": times[0], "losses": losses}
    if device == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def compare_losses(run: dict, ref: dict, name: str, ref_name: str) -> None:
    a, b = run["losses"], ref["losses"]
    check(bool(np.isfinite(a).all()), f"{name}: every training loss finite")
    first = abs(a[0] - b[0]) / abs(b[0])
    last = abs(a[-10:].mean() - b[-10:].mean()) / abs(b[-10:].mean())
    check(first < 0.01, f"{name}: first-step loss within 1 % of {ref_name} ({100 * first:.3f} %)")
    check(last < 0.10, f"{name}: mean of the last 10 losses within 10 % of {ref_name} ({100 * last:.2f} %)")


def part_training(gpu: bool) -> None:
    print("1-3. training (Learner, slice_cnn width 32 depth 4, 3x96x96, batch 64)")
    if not gpu:
        ref = train_run("cpu", False, n_train=256, size=32, bs=32, epochs=2, width=8, depth=2)
        FIGURES["train_cpu_fp32_samples_per_s"] = ref["samples_per_s"]
        print(f"  cpu fp32 (small: 3x32x32, width 8): {ref['samples_per_s']:.0f} samples/s")
        check(bool(np.isfinite(ref["losses"]).all()), "cpu fp32: every training loss finite")
        print("  SKIPPED on this machine (no CUDA device): bf16 / fp16 autocast, channels_last, torch.compile")
        return
    runs = {"fp32": train_run("cuda", False)}
    if torch.cuda.is_bf16_supported():
        runs["bf16"] = train_run("cuda", "bf16")
    runs["fp16"] = train_run("cuda", "fp16")
    base_amp = "bf16" if "bf16" in runs else "fp16"
    runs[f"{base_amp}+channels_last"] = train_run("cuda", base_amp, channels_last=True)
    runs[f"{base_amp}+compile"] = train_run("cuda", base_amp, compile=True)
    for name, r in runs.items():
        FIGURES[f"train_{name}"] = {k: v for k, v in r.items() if k != "losses"}
        extra = f", first epoch {r['first_epoch_s']:.1f} s" if "compile" in name else ""
        print(f"  {name:<22} {r['samples_per_s']:9.0f} samples/s ({r['samples_per_s'] / runs['fp32']['samples_per_s']:.2f}x"
              f" fp32), peak {r['peak_mem_mb']:.0f} MB{extra}")
    for name in ("bf16", "fp16"):
        if name in runs:
            compare_losses(runs[name], runs["fp32"], name, "fp32")
    for name in (f"{base_amp}+channels_last", f"{base_amp}+compile"):
        compare_losses(runs[name], runs[base_amp], name, base_amp)


def part_scoring(gpu: bool, *, tmp: Path) -> None:
    from bench_scoring import make_bundle, make_series

    from medsuite.pipelines.scoring import ScoreConfig, score

    n = 40 if gpu else 8
    print(f"4. batch scoring, local engine: {n} CT series 48x128x128, 2 nodules each")
    nodules = make_series(tmp / "data", n, 48, 128)
    nodules.to_csv(tmp / "nodules.csv", index=False)
    bundle = make_bundle(tmp / "bundle")
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    results = {}
    for device in (["cuda"] if gpu else []) + ["cpu"]:
        score(ScoreConfig(bundle=bundle, inputs=[tmp / "data"], out=tmp / f"warm-{device}", nodules=tmp / "nodules.csv",
                          workers=workers, device=device, progress=False))  # page cache, CUDA context
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        s = score(ScoreConfig(bundle=bundle, inputs=[tmp / "data"], out=tmp / device, nodules=tmp / "nodules.csv",
                              workers=workers, device=device, progress=False, batch_size=64))
        wall = time.perf_counter() - t
        check(s.n_scored == n and s.exit_code == 0, f"{device}: {n} series scored (exit {s.exit_code})")
        results[device] = 60 * n / wall
        FIGURES[f"scoring_{device}_series_per_min"] = results[device]
        mem = f", peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MB" if device == "cuda" else ""
        print(f"  {device}: {results[device]:.0f} series/min with {workers} reading workers{mem}")
    if not gpu:
        print("  SKIPPED on this machine (no CUDA device): scoring on the GPU")
        return
    import pandas as pd

    a, b = pd.read_parquet(tmp / "cuda" / "scores.parquet"), pd.read_parquet(tmp / "cpu" / "scores.parquet")
    keys = ["series_uid", "nodule_id"]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    check(a[keys].equals(b[keys]), "GPU and CPU scored the same series and nodules")
    diff = float((a["probability"] - b["probability"]).abs().max())
    check(diff <= 1e-4, f"probabilities within 1e-4 of the CPU's (max difference {diff:.2e})")
    near = (b["probability"] - b["threshold"]).abs() < 1e-4
    check(bool((a["label"] == b["label"])[~near].all()), "same labels (away from the threshold)")
    print(f"  GPU / CPU: {results['cuda'] / results['cpu']:.2f}x")


def part_ig(gpu: bool) -> None:
    from medsuite.interpret import integrated_gradients
    from medsuite.learn import build_model, set_seed

    print("5. Integrated Gradients (64 steps) on a slice_cnn, 5x64x64 sample")
    set_seed(0)
    model = build_model("slice_cnn", in_channels=5, n_classes=2, width=16, depth=3).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 64, 64)).astype(np.float32)
    base = np.zeros_like(x)
    results = {}
    for device in ["cpu"] + (["cuda"] if gpu else []):
        m = model.to(device)
        integrated_gradients(m, x, base, n_steps=64, target=1)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        reps = 5
        for _ in range(reps):
            attr = integrated_gradients(m, x, base, n_steps=64, target=1)
        if device == "cuda":
            torch.cuda.synchronize()
        ms = 1000 * (time.perf_counter() - t) / reps
        results[device] = (attr, ms)
        FIGURES[f"ig_{device}_ms"] = ms
        check(attr.params["convergence_delta"] < 0.05,
              f"{device}: completeness gap {attr.params['convergence_delta']:.2e} < 0.05")
        mem = f", peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MB" if device == "cuda" else ""
        print(f"  {device}: {ms:.1f} ms per attribution{mem}")
    if not gpu:
        print("  SKIPPED on this machine (no CUDA device): Integrated Gradients on the GPU")
        return
    a, b = results["cuda"][0].values, results["cpu"][0].values
    err = float(np.abs(a - b).max() / np.abs(b).max())
    check(err < 1e-3, f"GPU attribution equals the CPU's within 1e-3 of its largest value ({err:.1e})")
    print(f"  GPU / CPU speed: {results['cpu'][1] / results['cuda'][1]:.1f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          + (f"GPU {torch.cuda.get_device_name(0)} (capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))}, "
             f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'})" if gpu else
             "no CUDA device: the GPU parts are SKIPPED, the CPU references run"))
    FIGURES["gpu"] = torch.cuda.get_device_name(0) if gpu else None
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        parts = {"training": part_training, "scoring": functools.partial(part_scoring, tmp=Path(tmp)),
                 "integrated gradients": part_ig}
        for name, part in parts.items():
            try:
                part(gpu)
            except Exception as exc:  # a part that crashes is a failed check; the others still run
                traceback.print_exc()
                check(False, f"{name} raised {type(exc).__name__}: {exc}")
    FIGURES["seconds"] = time.perf_counter() - t0
    if args.json:
        from medsuite.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(FIGURES, indent=2, default=float) + "\n")
    print(f"{len(FAILURES)} failed check(s) in {FIGURES['seconds']:.0f} s" + (": " + "; ".join(FAILURES) if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
