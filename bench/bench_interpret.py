"""Interpretation benchmarks, side by side in one run (figures go to docs/explanations.md).

1. Integrated Gradients (50 steps, batched) on one 2.5D case vs 50 separate forward+backward passes of
   the same default slice_cnn (target: ratio <= 1.2 and < 1 s on a 2-core CPU).
2. Exact cosine top-10 over 100,000 reference cases (target <= 10 ms per query) vs a full argsort.
3. HNSW (hnswlib) top-10 over 1,000,000 cases (target <= 1 ms per query, recall@10 >= 0.95 vs exact).

    python bench/bench_interpret.py [--ann-n 1000000] [--dim 64] [--skip-ann]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from timing import median_seconds

from medsuite.data.blocks import SliceStack
from medsuite.interpret.attributions import integrated_gradients
from medsuite.interpret.index import CaseIndex, l2_normalise
from medsuite.io.volume import Volume
from medsuite.learn.models import build_model


def bench_ig(repeat: int = 5) -> None:
    rng = np.random.default_rng(0)
    vol = Volume((-800 + 200 * rng.standard_normal((80, 160, 160))).astype(np.float32), spacing=(1.25, 0.7, 0.7))
    block = SliceStack()  # defaults: k=5, 64x64 at 1 mm, lung window
    x = block.sample(vol, vol.center_world)
    base = block.sample(vol.with_array(np.full(vol.shape, -1024, np.float32)), vol.center_world)
    torch.manual_seed(0)
    model = build_model("slice_cnn", in_channels=x.shape[0]).eval()
    xt = torch.as_tensor(x)[None]

    def loop() -> None:
        for _ in range(50):
            inp = xt.clone().requires_grad_(True)
            model(inp)[0, 1].backward()

    ig_ms = 1000 * median_seconds(lambda: integrated_gradients(model, x, base, target=1, n_steps=50), repeat)
    loop_ms = 1000 * median_seconds(loop, repeat)
    print(f"IG 50 steps (batched) on slice_cnn {tuple(x.shape)}: {ig_ms:.0f} ms; "
          f"50 x forward+backward: {loop_ms:.0f} ms; ratio {ig_ms / loop_ms:.2f}x (threads={torch.get_num_threads()})")


def _clustered(n: int, dim: int, rng: np.random.Generator, clusters: int = 1000, latent: int = 12) -> np.ndarray:
    """Embeddings with structure, as trained features have: a mixture of Gaussian clusters in a ``latent``-
    dimensional space, mapped linearly into ``dim`` dimensions, plus a little isotropic noise.
    The generator is seeded by a fixed stream so that library and queries share the same clusters and map."""
    shared = np.random.default_rng(12345)
    centres = shared.standard_normal((clusters, latent)).astype(np.float32)
    mixing = shared.standard_normal((latent, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, 200_000):
        m = min(200_000, n - i)
        z = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, latent), dtype=np.float32)
        out[i: i + m] = z @ mixing + 0.05 * rng.standard_normal((m, dim), dtype=np.float32)
    return out


def bench_exact(n: int = 100_000, dim: int = 128, repeat: int = 200) -> None:
    rng = np.random.default_rng(1)
    index = CaseIndex(_clustered(n, dim, rng), [str(i) for i in range(n)])
    queries = l2_normalise(_clustered(repeat, dim, rng))
    it = iter(range(10**9))
    ms = 1000 * median_seconds(lambda: index.exact_query(queries[next(it) % repeat], 10), repeat)
    full = 1000 * median_seconds(lambda: np.argsort(-(index.embeddings @ queries[0]))[:10], 20)
    print(f"exact cosine top-10, {n:,} x {dim}: {ms:.2f} ms/query (median of {repeat}); full argsort: {full:.2f} ms")


def bench_ann(n: int, dim: int = 64, n_queries: int = 500) -> None:
    rng = np.random.default_rng(2)
    data = _clustered(n, dim, rng)
    queries = _clustered(n_queries, dim, rng)
    index = CaseIndex(data, [str(i) for i in range(n)])
    del data
    t = time.perf_counter()
    index.build_ann(m=16, ef_construction=100, ef=64)
    build_s = time.perf_counter() - t
    exact, _ = index.query_rows(queries, 10, exact=True)
    for ef in (64, 128, 256, 512):
        index.set_ef(ef)
        got = [index.query_rows(q, 10)[0][0] for q in queries[:5]]  # warm-up
        times = []
        got = []
        for q in queries:
            t = time.perf_counter()
            got.append(index.query_rows(q, 10)[0][0])
            times.append(time.perf_counter() - t)
        recall = float(np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)]))
        print(f"HNSW top-10, {n:,} x {dim} (M=16, ef_construction=100, build {build_s:.0f} s), ef={ef}: "
              f"{1000 * np.median(times):.3f} ms/query (median), recall@10 {recall:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ann-n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--skip-ann", action="store_true")
    args = parser.parse_args()
    bench_ig()
    bench_exact(dim=128)
    bench_exact(dim=args.dim)
    if not args.skip_ann:
        bench_ann(args.ann_n, args.dim)


if __name__ == "__main__":
    main()
