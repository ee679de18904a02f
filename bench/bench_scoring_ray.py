"""Ray scoring throughput on a real loopback cluster, the driver's own ceilings, and what that means for
N nodes (not part of the test suite).

Measured here, side by side on the same generated series (CT, nodule bundle, CPU only):
1. decode-only bound: scan + read + sample in W local processes (no model, no writing);
2. the local engine, end to end (W workers);
3. the Ray engine with W + 1 CPUs (W readers and the inference actor, as the local engine uses them) on one
   node, and on two nodes under a head that runs no work (the same cores, so this shows what spreading
   costs, not a speed-up), end to end and from the first read to the last result;
4. the driver's ceilings, as CPU seconds per series of the driver process (so that other work on the
   machine does not distort them): the Ray engine's scheduling with reading and inference replaced by
   no-ops (`RayEngine(prepare_fn=...)`), the SQLite writer (one transaction per series), and discovery's
   driver side (listing files, grouping headers into series);
   plus the cost of the `ray.wait` calls of one turn of the engine's loop with K refs in flight (K grows
   with the cluster: about one per CPU);
5. a model of N nodes x C CPUs from these numbers: which part limits the throughput.

    python bench/bench_scoring_ray.py                      # 60 series 48x128x128, 2 CPUs
    python bench/bench_scoring_ray.py --series 60 --cpus 2 --nodes-cpus 16 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent)]

from ray_cluster import LoopbackCluster, ray_env  # noqa: E402  (tests/ray_cluster.py)

os.environ.update(ray_env())  # before Ray is imported: this process is the driver of a loopback cluster

import numpy as np  # noqa: E402
from bench_scoring import decode_only, make_bundle, make_series  # noqa: E402


def noop_prepare(item, block_spec_json, read_options):
    """Stands in for read+sample: one tiny sample per point, no file opened (the driver-ceiling run)."""
    from medsuite.pipelines.scoring.stages import Prepared

    n = len(item.points or (None,))
    return Prepared(item.series_uid, samples=np.zeros((n, 5, 32, 32), np.float32),
                    keys=list(item.points or (None,)), n_slices=1)


def run_score(bundle: Path, folders: list[Path], nodules: Path, out: Path, **kw) -> tuple[object, float, float]:
    """(summary, wall s, driver CPU s) of one `score` call in this process."""
    from medsuite.pipelines.scoring import ScoreConfig, score

    t, c = time.perf_counter(), time.process_time()
    summary = score(ScoreConfig(bundle=bundle, inputs=folders, out=out, nodules=nodules, device="cpu",
                                progress=False, **kw))
    return summary, time.perf_counter() - t, time.process_time() - c


def phase_rate(summary) -> float | None:
    """Series/min from the first read to the last result (the Ray engine's summary line)."""
    for line in summary.engine_lines:
        if "from the first read" in line:
            return float(line.rsplit(";", 1)[1].split()[0])
    return None


def driver_ceiling(session_address: str, n: int, cpus: int, bundle: Path) -> dict:
    """Driver CPU seconds per series for the Ray engine's loop with no-op stages (ray already connected)."""
    from medsuite.learn.bundle import load_bundle
    from medsuite.pipelines.scoring.ray_cluster import connect
    from medsuite.pipelines.scoring.ray_engine import RayEngine, RayOptions
    from medsuite.pipelines.scoring.stages import Point, WorkItem, spec_json

    session = connect(session_address, num_cpus=cpus, timeout_s=60)
    try:
        spec = spec_json(load_bundle(bundle).block.spec())
        items = [WorkItem(f"1.2.3.{i}", (), (Point(f"{i}a", 0, 0, 0, 5.0), Point(f"{i}b", 1, 1, 1, 5.0)))
                 for i in range(n)]
        engine = RayEngine(session, bundle_path=str(bundle), block_spec_json=spec, device="cpu", batch_size=32,
                           options=RayOptions(actors=(1, 1)), prepare_fn=noop_prepare)
        engine.start()
        list(engine.run(items[: max(4, n // 10)]))  # warm: workers and the actor started
        engine = RayEngine(session, bundle_path=str(bundle), block_spec_json=spec, device="cpu", batch_size=32,
                           options=RayOptions(actors=(1, 1)), prepare_fn=noop_prepare)
        t, c = time.perf_counter(), time.process_time()
        done = sum(1 for _ in engine.run(items))
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert done == n
    finally:
        session.close()
    return {"series": n, "wall_s": wall, "driver_cpu_s_per_series": cpu / n}


def writer_cost(n: int, tmp: Path) -> float:
    """Seconds per series of the SQLite writer (one transaction per series, 2 predictions each)."""
    from medsuite.pipelines.scoring.stages import SeriesResult
    from medsuite.pipelines.scoring.writer import ScoreStore

    db = ScoreStore(tmp / "writer.db")
    db.start_run("bench", bundle_name="b", bundle_sha256="0" * 64, bundle_path="b", task="nodule", engine="ray",
                 args={})
    row = {"study_uid": "1.2", "modality": "CT", "n_instances": 48, "spacing_z": 1.25, "spacing_y": 0.7,
           "spacing_x": 0.7, "orientation": "axial", "files": [f"/data/s/{i}.dcm" for i in range(48)]}
    results = [SeriesResult(f"1.2.3.{i}", predictions=[
        {"nodule_id": f"{i}{k}", "x_mm": 1.0, "y_mm": 2.0, "z_mm": 3.0, "diameter_mm": 5.0, "probability": 0.3,
         "label": "benign"} for k in "ab"], n_slices=48, spacing=(1.25, 0.7, 0.7)) for i in range(n)]
    t = time.perf_counter()
    for r in results:
        db.commit_series("bench", "0" * 64, 0.5, r, row)
    cost = (time.perf_counter() - t) / n
    db.close()
    return cost


def discovery_cost(folders: list[Path]) -> dict:
    """Driver seconds per file for listing the files and for grouping scanned headers into series."""
    from medsuite.pipelines.scoring.discover import assemble, list_files, read_inputs, scan_chunk

    found = read_inputs(folders)
    t = time.perf_counter()
    files, skipped = list_files(found)
    listing = (time.perf_counter() - t) / len(files)
    items = scan_chunk(files)
    t = time.perf_counter()
    assemble([*skipped, *items], found)
    grouping = (time.perf_counter() - t) / len(files)
    return {"files": len(files), "list_s_per_file": listing, "group_s_per_file": grouping}


def wait_cost(address: str, sizes: tuple[int, ...] = (16, 256, 2048)) -> dict[int, float]:
    """Seconds of one turn of the engine's loop spent waiting: `ray.wait` for one of K refs, then for all
    that are ready (the loop does both each turn; K = the reads and calls in flight, about the cluster's CPUs)."""
    import ray

    from medsuite.pipelines.scoring.ray_cluster import connect

    session = connect(address, num_cpus=1, timeout_s=60)
    out = {}
    try:
        for k in sizes:
            refs = [ray.put(i) for i in range(k)]
            reps = max(5, 2000 // k)
            t = time.perf_counter()
            for _ in range(reps):
                ray.wait(refs, num_returns=1, timeout=0.5, fetch_local=False)  # as the engine's loop does
                ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            out[k] = (time.perf_counter() - t) / reps
    finally:
        session.close()
    return out


def model(rates: dict, nodes_cpus: int, files_per_series: int) -> list[str]:
    """Series/min for N nodes of C CPUs: the smallest of the parts' capacities. The driver's cost per series
    is the no-op loop's plus one turn's waits at K = N x C refs in flight (interpolated on log K), as if every
    turn of the loop brought one result (at scale a turn brings several: this is the pessimistic side)."""
    lines = [f"model: N nodes x {nodes_cpus} CPUs, one CPU inference actor per 4 CPUs (default), one driver core:",
             f"{'nodes':>6} {'read+sample':>12} {'inference':>10} {'driver':>8} {'SQLite':>8} {'expected':>9}  limit"]
    ks = sorted(rates["wait_s"])
    sqlite = 60 / rates["writer_s_per_series"]
    discovery_s = files_per_series * (rates["list_s_per_file"] + rates["group_s_per_file"])
    for n in (1, 2, 4, 8, 16, 32, 64, 128):
        cpus = n * nodes_cpus
        actors = max(1, cpus // 4)
        k = cpus + 2 * actors
        wait = float(np.interp(np.log(k), np.log(ks), [rates["wait_s"][x] for x in ks]))
        if k > ks[-1]:  # beyond the measured sizes: linear in K
            wait = rates["wait_s"][ks[-1]] * k / ks[-1]
        driver = 60 / (rates["driver_cpu_s_per_series"] + wait)
        decode = rates["decode_per_cpu_min"] * (cpus - actors)
        infer = rates["infer_per_actor_min"] * actors
        parts = {"read+sample": decode, "inference": infer, "driver": driver, "SQLite": sqlite}
        limit = min(parts, key=parts.get)
        lines.append(f"{n:>6} {decode:>12.0f} {infer:>10.0f} {driver:>8.0f} {sqlite:>8.0f} {parts[limit]:>9.0f}  {limit}")
    lines.append(f"discovery on the driver adds {discovery_s * 1000:.1f} ms per series before scoring starts "
                 f"({files_per_series} files a series; header reading itself is spread over the nodes)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=60)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the one-node cluster (and local workers)")
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="timings of each configuration; the best is kept")
    ap.add_argument("--nodes-cpus", type=int, default=16, help="CPUs per node in the N-node model")
    args = ap.parse_args()
    n, w = args.series, args.cpus

    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        root = Path(tmp)
        nodules = make_series(root / "data", n, args.slices, args.size)
        nodules.to_csv(root / "nodules.csv", index=False)
        bundle = make_bundle(root / "bundle")
        folders = sorted((root / "data").iterdir())
        csv = root / "nodules.csv"
        decode_only(folders, nodules, bundle, w)  # warm-up: files in the page cache
        results: dict[str, list] = {k: [] for k in ("decode", "local", "ray1", "ray2")}

        for rep in range(args.repeats):
            results["decode"].append(decode_only(folders, nodules, bundle, w))
            s, wall, _ = run_score(bundle, folders, csv, root / f"local{rep}", workers=w)
            results["local"].append((wall, None))
        # W + 1 CPUs as the local engine uses them (W readers + inference): on one node, or on two nodes
        # under a head that runs no work. The cores are the same: the second shows what spreading costs.
        layouts = {"ray1": [w + 1], "ray2": [0, -(-(w + 1) // 2), (w + 1) // 2]}
        for label, layout in layouts.items():
            cluster = LoopbackCluster(object_store_mb=300)
            try:
                cluster.start_head(num_cpus=layout[0])
                for cpus in layout[1:]:
                    cluster.add_worker(num_cpus=cpus)
                cluster.wait_nodes(len(layout))
                for rep in range(args.repeats):
                    s, wall, cpu = run_score(bundle, folders, csv, root / f"{label}-{rep}", engine="ray",
                                             ray_address=cluster.address, workers=w)
                    assert s.n_scored == n, s.lines()
                    results[label].append((wall, phase_rate(s)))
                    print("\n".join(s.engine_lines), file=sys.stderr)
                if label == "ray1":
                    ceiling = driver_ceiling(cluster.address, 400, w, bundle)
                    waits = wait_cost(cluster.address)
            finally:
                cluster.stop()

        decode_s = min(results["decode"])
        rate = {k: 60 * n / min(t for t, _ in results[k]) for k in ("local", "ray1", "ray2")}
        phase = {k: max((p for _, p in results[k] if p), default=None) for k in ("ray1", "ray2")}
        decode_rate = 60 * n / decode_s
        print(f"{n} series of {args.slices}x{args.size}x{args.size}, 2 nodules each, {w} CPUs, best of {args.repeats}:")
        print(f"  decode-only bound ({w} processes)      {decode_rate:7.1f} series/min")
        print(f"  local engine, end to end              {rate['local']:7.1f} series/min")
        for k, what in (("ray1", f"1 node, {w + 1} CPUs"), ("ray2", f"2 nodes, {layouts['ray2'][1]}+{layouts['ray2'][2]} CPUs")):
            print(f"  ray, {what:<17} end to end {rate[k]:7.1f} series/min; first read to last result "
                  f"{phase[k] or float('nan'):7.1f} series/min")

        writer = writer_cost(2000, root)
        disc = discovery_cost(folders)
        # one actor's inference rate: the local engine scores with one model thread, so its rate with the
        # decode-only time taken out bounds it from below; measured directly as samples through the model:
        infer_rate = infer_per_actor(bundle)
        rates = {"decode_per_cpu_min": decode_rate / w, "infer_per_actor_min": infer_rate,
                 "driver_cpu_s_per_series": ceiling["driver_cpu_s_per_series"], "writer_s_per_series": writer,
                 "wait_s": waits, **{k: v for k, v in disc.items() if k != "files"}}
        print(f"  driver, Ray engine loop with no-op stages: {1000 * ceiling['driver_cpu_s_per_series']:.2f} ms CPU "
              f"per series -> {60 / ceiling['driver_cpu_s_per_series']:.0f} series/min on one driver core "
              f"({ceiling['series']} series in {ceiling['wall_s']:.1f} s wall)")
        print(f"  SQLite writer: {1000 * writer:.2f} ms per series (2 predictions) -> {60 / writer:.0f} series/min")
        print(f"  discovery on the driver: listing {1e6 * disc['list_s_per_file']:.0f} us/file, grouping "
              f"{1e6 * disc['group_s_per_file']:.0f} us/file ({disc['files']} files)")
        print(f"  inference, one CPU actor: {infer_rate:.0f} series/min (2 samples each)")
        print("  driver, one loop turn's ray.wait over K refs in flight: "
              + ", ".join(f"K={k}: {1000 * v:.2f} ms" for k, v in waits.items()))
        print("\n".join(model(rates, args.nodes_cpus, args.slices)))
        print(json.dumps({"series": n, "cpus": w, "decode_per_min": round(decode_rate, 1),
                          "local_per_min": round(rate["local"], 1), "ray1_per_min": round(rate["ray1"], 1),
                          "ray2_per_min": round(rate["ray2"], 1), "ray1_phase": phase["ray1"],
                          "ray2_phase": phase["ray2"],
                          **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in rates.items()}}))


def infer_per_actor(bundle: Path, n: int = 400) -> float:
    """Series/min through one model in one thread (2 samples a series, batches of 16), as an actor scores."""
    import torch

    from medsuite.learn.predict import Predictor
    from medsuite.pipelines.scoring.stages import Prepared, score_prepared

    torch.set_num_threads(1)
    predictor = Predictor.load(bundle)
    samples = np.random.default_rng(0).normal(size=(n, 2, 5, 32, 32)).astype(np.float32)

    def batch(i: int) -> list[Prepared]:  # scoring frees the samples: a fresh list each time
        return [Prepared(f"s{j}", samples=samples[j], keys=[None, None]) for j in range(i, min(n, i + 8))]

    score_prepared(batch(0), predictor, 16)  # warm-up
    t = time.perf_counter()
    for i in range(0, n, 8):
        score_prepared(batch(i), predictor, 16)
    return 60 * n / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
