"""The Ray engine: the local engine's two stages spread over every node of a Ray cluster.

```
driver: discovery chunks ──► header-scan tasks (SPREAD over the nodes' CPUs) ──► series table (driver)
driver: series ──► read+sample tasks (SPREAD, 1 CPU each; at most `window` series in flight or waiting)
                   └─► small samples stay in the object store ──► inference actors (a pool sized from the
                       cluster: one GPU each where there are GPUs, else one CPU; grown while samples wait,
                       shrunk at the tail) ──► results ──► the driver writes (SQLite, one transaction a series)
```

Every task runs once per attempt (no Ray-level retries): the driver owns the retry policy. A series whose
read task or inference call is lost (a node died, a worker crashed) is read again, up to `max_attempts`;
a watchdog re-submits work that makes no progress for `stall_s` seconds (first result wins: a series is
yielded exactly once). Paths are the driver's, so every node must see the bundle and the data at the same
paths (shared storage), unless ``ship_inputs`` sends the files through the object store.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medsuite.pipelines.scoring.ray_cluster import Session, alive_nodes
from medsuite.pipelines.scoring.stages import (
    Prepared,
    SeriesResult,
    WorkItem,
    prepare,
    score_prepared,
)

log = logging.getLogger("medsuite.scoring")

__all__ = ["RayEngine", "RayOptions", "discover_on_ray", "ship_payload"]


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine uses the cluster (defaults come from the cluster's resources)."""

    actors: tuple[int, int] | None = None  # (min, max) inference actors; None: 1..GPUs, or 1..CPUs // 4
    ship_inputs: bool = False              # send files and bundle through the object store (no shared storage)
    window: int | None = None              # series read/sampled or waiting for inference at once: 2 x CPUs
    stall_s: float = 120.0                 # no result for this long: re-submit what is in flight
    max_attempts: int = 3                  # a series lost this many times becomes an error row


# ---------------------------------------------------------------------------------------- remote code
def scan_task(files: list[str]) -> tuple[str, list[Any]]:
    """Ray task: the header scan of a chunk of files; returns (node id, `discover.scan_chunk` items)."""
    import ray

    from medsuite.pipelines.scoring.discover import scan_chunk

    return ray.get_runtime_context().get_node_id(), scan_chunk(files)


def ship_payload(files: Sequence[str]) -> list[tuple[str, bytes]]:
    """What ``--ray-ship-inputs`` sends of one series, read on the driver: each DICOM file; or an image file
    with the data files its header names (``x.mhd`` + ``x.raw``), under their names relative to the header,
    so that the header finds them in the node's copy. A data file outside the header's folder is refused
    (the copy could not put it where the header says)."""
    from medsuite.io.sitk_io import is_image_file
    from medsuite.pipelines.scoring.images import image_data_files

    if len(files) == 1 and is_image_file(files[0]):
        header = Path(files[0])
        names = [header.name]
        for data in image_data_files(header):
            relative = os.path.relpath(data, header.parent)
            if os.path.isabs(relative) or relative.split(os.sep)[0] == os.pardir:
                raise ValueError(f"{header}: its data file {data} is outside the header's folder, so it cannot be "
                                 "shipped to the Ray nodes; put it beside the header, or score without "
                                 "--ray-ship-inputs on storage every node sees")
            names.append(relative)
        return [(name, (header.parent / name).read_bytes()) for name in names]
    return [(os.path.basename(f), Path(f).read_bytes()) for f in files]


def _materialise(item: WorkItem, payload: list[tuple[str, bytes]], folder: str) -> WorkItem:
    """The shipped files written into ``folder``: an image file and its data files under their own
    (relative) names, DICOM files numbered (two files of a series may share a name in different folders)."""
    from medsuite.io.sitk_io import is_image_file

    image = len(item.files) == 1 and is_image_file(item.files[0])
    paths = []
    for i, (name, data) in enumerate(payload):
        path = os.path.join(folder, name if image else f"{i:06d}_{name}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        paths.append(path)
    return replace(item, files=tuple(paths[:1] if image else paths))


def _restore_paths(prepared: Prepared, folder: str, source: str) -> Prepared:
    """Messages name the driver's folder, not the node's temporary copy."""
    def fix(text: str) -> str:
        return text.replace(folder, source)

    if prepared.error is not None:
        prepared.error = (prepared.error[0], fix(prepared.error[1]))
    prepared.point_errors = [(n, fix(r)) for n, r in prepared.point_errors]
    prepared.notes = [fix(n) for n in prepared.notes]
    return prepared


def prepare_task(item: WorkItem, block_spec_json: str, read_options: dict[str, Any],
                 payload: list[tuple[str, bytes]] | None = None,
                 prepare_fn: Callable[..., Prepared] = prepare) -> tuple[dict[str, Any], Prepared]:
    """Ray task (two returns): a small summary the driver reads, and the `Prepared` samples that only the
    inference actor fetches. With ``payload`` (shipped files) the series is read from a temporary copy."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if payload is None:
        prepared = prepare_fn(item, block_spec_json, read_options)
    else:
        with tempfile.TemporaryDirectory(prefix="medsuite-series-") as folder:
            source = os.path.dirname(item.files[0]) if item.files else ""
            prepared = _restore_paths(prepare_fn(_materialise(item, payload, folder), block_spec_json,
                                                 read_options), folder, source)
    n = 0 if prepared.samples is None else len(prepared.samples)
    return {"node": node, "n": n}, prepared


class InferenceActor:
    """Ray actor: loads the bundle once (from its path, or from shipped bytes) and scores prepared series."""

    def __init__(self, bundle: str | dict[str, bytes], device: str, batch_size: int) -> None:
        from medsuite.learn.predict import Predictor

        if isinstance(bundle, dict):  # shipped: {relative name: bytes} of a folder, or {"bundle.zip": bytes}
            with tempfile.TemporaryDirectory(prefix="medsuite-bundle-") as folder:
                for name, data in bundle.items():
                    target = Path(folder, name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                self.predictor = Predictor.load(Path(folder, "bundle.zip") if "bundle.zip" in bundle else folder,
                                                device=device)
        else:
            self.predictor = Predictor.load(bundle, device=device)
        self.batch_size = batch_size

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def infer(self, *prepared: Prepared) -> list[SeriesResult]:
        return score_prepared(list(prepared), self.predictor, self.batch_size)


def read_bundle_files(path: str | Path) -> dict[str, bytes]:
    """A bundle's files as ``{relative name: bytes}`` (a zip bundle travels as one file)."""
    path = Path(path)
    if path.is_file():
        return {"bundle.zip": path.read_bytes()}
    return {f.relative_to(path).as_posix(): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


# ------------------------------------------------------------------------------------------ discovery
def discover_on_ray(inputs: list[str | Path], session: Session, *, stats: Counter | None = None,
                    stacks: Sequence[str] = ()) -> Any:
    """`discover.discover` with the header scan done by tasks spread over the cluster's CPUs; the driver
    lists the files and assembles the series table. Returns a `discover.Discovery`."""
    import ray

    from medsuite.pipelines.scoring.discover import assemble, list_files, read_inputs

    found = read_inputs(inputs, stacks=stacks)
    files, skipped = list_files(found)
    n_cpus = max(1, session.total_cpus)
    size = max(16, min(512, -(-len(files) // (4 * n_cpus)))) if files else 1
    task = ray.remote(num_cpus=1, max_retries=2, scheduling_strategy="SPREAD")(scan_task)
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    results: dict[int, list[Any]] = {}
    inflight: dict[Any, int] = {}
    todo = deque(range(len(chunks)))
    while todo or inflight:
        while todo and len(inflight) < 2 * n_cpus:  # bounded: headers of a few chunks at a time
            i = todo.popleft()
            inflight[task.remote(chunks[i])] = i
        done, _ = ray.wait(list(inflight), num_returns=1, fetch_local=False)
        for ref in done:
            node, items = ray.get(ref)
            results[inflight.pop(ref)] = items
            if stats is not None:
                stats[node] += len(items)
    return assemble([*skipped, *(item for i in range(len(chunks)) for item in results[i])], found)


# ----------------------------------------------------------------------------------------- scheduling
@dataclass(eq=False)
class _Job:
    item: WorkItem
    failures: int = 0
    last_error: tuple[str, str] | None = None
    data: Any = None          # ObjectRef of the Prepared samples once read
    n: int = 0                # number of samples
    node: str | None = None   # where it was read


@dataclass(eq=False)
class _Actor:
    handle: Any
    started: float
    node_ref: Any
    node: str | None = None
    calls: int = 0
    alive: bool = True
    last_seen: float = 0.0    # when it last answered (became ready, or returned a call)


@dataclass(eq=False)
class _Call:
    jobs: list[_Job]
    actor: _Actor
    since: float


@dataclass
class EngineStats:
    """Which node did what (node ids, as Ray names them), for the run summary."""

    nodes: int = 0
    discover: Counter = field(default_factory=Counter)  # files whose headers each node read
    read: Counter = field(default_factory=Counter)      # series each node read and sampled
    infer: Counter = field(default_factory=Counter)     # series each node's actors scored
    retried: int = 0
    actors_started: int = 0
    actors_max: int = 0
    started: float | None = None        # monotonic time of the first read task, and of the last result
    last_result: float | None = None
    results: int = 0

    def result(self) -> None:
        self.last_result = time.monotonic()
        self.results += 1

    @property
    def phase_rate(self) -> float | None:
        """Series/min from the first read to the last result (connecting and discovery left out; loading
        the model overlaps discovery and counts only where it is not done by the first read)."""
        if not self.results or self.started is None or not self.last_result or self.last_result <= self.started:
            return None
        return 60 * self.results / (self.last_result - self.started)

    def lines(self) -> list[str]:
        def fmt(c: Counter) -> str:
            return ", ".join(f"{k[:8]} {v}" for k, v in c.most_common())

        rate = self.phase_rate
        out = [f"  ray: {self.nodes} node(s); inference actors started {self.actors_started}, at most "
               f"{self.actors_max} at once; {self.retried} series re-submitted"
               + (f"; {rate:.1f} series/min from the first read to the last result" if rate else "")]
        if self.discover:
            out.append(f"  ray: header scan on {len(self.discover)} node(s) (files): {fmt(self.discover)}")
        out.append(f"  ray: read+sample on {len(self.read)} node(s) (series): {fmt(self.read)}")
        out.append(f"  ray: inference on {len(self.infer)} node(s) (series): {fmt(self.infer)}")
        return out


class RayEngine:
    """Scores work items on a connected Ray session; `run` yields one `SeriesResult` per item."""

    def __init__(self, session: Session, *, bundle_path: str, block_spec_json: str, device: str, batch_size: int,
                 read_options: dict[str, Any] | None = None, options: RayOptions | None = None,
                 prepare_fn: Callable[..., Prepared] = prepare) -> None:
        """``prepare_fn(item, block_spec_json, read_options) -> Prepared`` runs in the read tasks (a
        module-level function, importable on every node; `stages.prepare` unless a caller needs another)."""
        self.session, self.bundle_path, self.spec = session, str(bundle_path), block_spec_json
        self.prepare_fn = prepare_fn
        self.batch_size, self.read_options = int(batch_size), dict(read_options or {})
        self.options = options or RayOptions()
        self.stats = EngineStats(nodes=len(session.nodes))
        gpus = session.total_gpus if device != "cpu" else 0
        if device == "cuda" and not gpus:
            log.warning("--device cuda: the Ray cluster has no GPU; inference runs on CPU actors")
        self.gpu = gpus > 0
        cpus = max(1, session.total_cpus)
        lo, hi = self.options.actors or (1, gpus if self.gpu else max(1, cpus // 4))
        if lo < 1 or hi < lo:
            raise ValueError(f"inference actors: need 1 <= min <= max, got {lo}:{hi}")
        self.min_actors, self.max_actors = lo, hi
        self.window = self.options.window or max(4, 2 * cpus)
        self.cpus = cpus
        self.actors: list[_Actor] = []
        self._bundle: Any = None
        self._last_scale = 0.0
        self._actor_failures = 0

    # ------------------------------------------------------------------ actors
    def _start_actor(self) -> None:
        import ray

        resources = {"num_gpus": 1, "num_cpus": 1} if self.gpu else {"num_cpus": 1}
        cls = ray.remote(max_restarts=0, max_task_retries=0, **resources)(InferenceActor)
        handle = cls.remote(self._bundle, "cuda" if self.gpu else "cpu", self.batch_size)
        self.actors.append(_Actor(handle, time.monotonic(), handle.node.remote()))
        self.stats.actors_started += 1
        self.stats.actors_max = max(self.stats.actors_max, sum(a.alive for a in self.actors))

    def _drop_actor(self, actor: _Actor, reason: str) -> None:
        import ray

        if actor.alive:
            actor.alive = False
            level = logging.DEBUG if reason in ("run finished", "idle at the end of the run") else logging.WARNING
            log.log(level, "inference actor on node %s stopped: %s", (actor.node or "?")[:8], reason)
            try:
                ray.kill(actor.handle, no_restart=True)
            except Exception:  # already gone with its node
                pass
        self.actors = [a for a in self.actors if a.alive]

    def _scale(self, now: float) -> None:
        alive = [a for a in self.actors if a.alive]
        starting = [a for a in alive if a.node is None]
        if len(alive) < self.min_actors:
            for _ in range(self.min_actors - len(alive)):
                self._start_actor()
            return
        ready = [a for a in alive if a.node is not None]
        waiting = sum(j.n for j in self.ready)
        busy = ready and all(a.calls >= 2 for a in ready)
        if (busy and waiting >= self.batch_size and not starting and len(alive) < self.max_actors
                and now - self._last_scale > 2.0 and self._free("GPU" if self.gpu else "CPU") >= 1):
            self._start_actor()  # samples wait while every actor is busy: one more
            self._last_scale = now
        elif not self.todo and not self.preparing and len(ready) > self.min_actors:
            for actor in ready:  # the tail: let idle actors go (their CPUs/GPUs return to the cluster)
                if actor.calls == 0 and len([a for a in self.actors if a.alive]) > self.min_actors:
                    self._drop_actor(actor, "idle at the end of the run")

    @staticmethod
    def _free(resource: str) -> float:
        import ray

        return float(ray.available_resources().get(resource, 0.0))

    # ------------------------------------------------------------------ main loop
    def start(self) -> None:
        """Start the inference actors now (loading a model takes seconds: overlap it with discovery)."""
        import ray

        if self._bundle is None:
            bundle: Any = self.bundle_path
            if self.options.ship_inputs:
                bundle = ray.put(read_bundle_files(self.bundle_path))
            self._bundle = bundle
        while sum(a.alive for a in self.actors) < self.min_actors:
            self._start_actor()

    def close(self) -> None:
        """Stop the actors (also done at the end of `run`)."""
        for actor in list(self.actors):
            self._drop_actor(actor, "run finished")

    def run(self, items: Sequence[WorkItem]) -> Iterator[SeriesResult]:
        """Score ``items``; yields each series' result once, in completion order."""
        import ray

        if not items:
            self.close()
            return
        self.start()
        self.task = ray.remote(num_returns=2, num_cpus=1, max_retries=0, scheduling_strategy="SPREAD")(prepare_task)
        self.todo: deque[_Job] = deque(_Job(item) for item in items)
        self.preparing: dict[Any, tuple[_Job, float]] = {}
        self.ready: deque[_Job] = deque()
        self.calls: dict[Any, _Call] = {}
        self.done: set[str] = set()
        self.refused: deque[SeriesResult] = deque()  # series whose files could not be shipped
        self._last_progress = self._last_health = self.stats.started = time.monotonic()
        total = len({i.series_uid for i in items})
        try:
            while len(self.done) < total:
                now = time.monotonic()
                self._scale(now)
                self._submit()
                while self.refused:
                    yield self.refused.popleft()
                self._dispatch()
                yield from self._collect()
                if time.monotonic() - self._last_health > 2.0:
                    self._check_nodes()
                    self._last_health = time.monotonic()
                yield from self._watchdog()
        finally:
            self.close()
            for ref in list(self.preparing):
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass

    def _submit(self) -> None:
        """Start read+sample tasks while the window has room (backpressure: memory stays bounded)."""
        import ray

        cpus = max(1, self.cpus - sum(a.alive for a in self.actors))  # each actor holds one CPU
        while (self.todo and len(self.preparing) < cpus
               and len(self.preparing) + len(self.ready) + sum(len(c.jobs) for c in self.calls.values()) < self.window):
            job = self.todo.popleft()
            if job.item.series_uid in self.done:
                continue
            payload = None
            if self.options.ship_inputs:
                try:
                    payload = ray.put(ship_payload(job.item.files))
                except (OSError, ValueError) as exc:  # unreadable here, or cannot travel: that series' error
                    self.done.add(job.item.series_uid)
                    self.refused.append(SeriesResult(job.item.series_uid, errors=[("read", _describe(exc))]))
                    continue
            meta, data = self.task.remote(job.item, self.spec, self.read_options, payload, self.prepare_fn)
            job.data = data
            self.preparing[meta] = (job, time.monotonic())

    def _dispatch(self) -> None:
        """Give waiting samples to the least busy ready actor, about one batch per call, two calls queued at most."""
        while self.ready:
            actors = [a for a in self.actors if a.alive and a.node is not None and a.calls < 2]
            if not actors:
                return
            actor = min(actors, key=lambda a: a.calls)
            jobs, n = [], 0
            while self.ready and (not jobs or n + self.ready[0].n <= self.batch_size):
                job = self.ready.popleft()
                if job.item.series_uid in self.done:
                    continue
                jobs.append(job)
                n += job.n
            if not jobs:
                return
            ref = actor.handle.infer.remote(*[j.data for j in jobs])
            actor.calls += 1
            self.calls[ref] = _Call(jobs, actor, time.monotonic())

    def _collect(self) -> Iterator[SeriesResult]:
        import ray

        waiting = list(self.preparing) + list(self.calls) + [a.node_ref for a in self.actors if a.alive and a.node is None]
        if not waiting:
            time.sleep(0.05)
            return
        # fetch_local=False: waiting stays cheap with thousands of refs in flight (the few bytes each result
        # holds are fetched by ray.get below); with fetching, one turn took ~40 ms at 2,000 refs
        done, _ = ray.wait(waiting, num_returns=1, timeout=0.5, fetch_local=False)
        if done:
            done, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0, fetch_local=False)
        for ref in done:
            if ref in self.preparing:
                job, _since = self.preparing.pop(ref)
                try:
                    meta = ray.get(ref)
                except Exception as exc:  # the task was lost (worker or node died): read it again
                    yield from self._failed([job], "read", exc)
                    continue
                job.n, job.node = int(meta["n"]), meta["node"]
                self.ready.append(job)
                self._last_progress = time.monotonic()
            elif ref in self.calls:
                call = self.calls.pop(ref)
                call.actor.calls -= 1
                call.actor.last_seen = time.monotonic()
                try:
                    results: list[SeriesResult] = ray.get(ref)
                except Exception as exc:  # the actor or its input was lost; or the call itself failed
                    if _actor_gone(exc):
                        self._drop_actor(call.actor, f"{type(exc).__name__}")
                    yield from self._failed(call.jobs, "infer", exc)
                    continue
                self._last_progress = time.monotonic()
                by_uid = {j.item.series_uid: j for j in call.jobs}
                for result in results:
                    if result.series_uid in self.done:
                        continue  # a duplicate of a re-submitted series: the first result won
                    job = by_uid.get(result.series_uid)
                    self.done.add(result.series_uid)
                    if job is not None:
                        job.data = None
                        self.stats.read[job.node or "?"] += 1
                    self.stats.infer[call.actor.node or "?"] += 1
                    self.stats.result()
                    yield result
            else:
                actor = next((a for a in self.actors if a.node_ref == ref), None)
                if actor is None:
                    continue
                try:
                    actor.node = ray.get(ref)
                    actor.last_seen = time.monotonic()
                except Exception as exc:  # the actor could not start (bundle, CUDA, node lost)
                    self._actor_failures += 1
                    self._drop_actor(actor, f"could not start: {_describe(exc)}")
                    if self._actor_failures >= self.options.max_attempts and not any(
                            a.node for a in self.actors if a.alive):
                        raise RuntimeError(f"the inference actors could not start on the cluster: {_describe(exc)}"
                                           ) from exc

    def _failed(self, jobs: list[_Job], stage: str, exc: BaseException) -> Iterator[SeriesResult]:
        for job in jobs:
            uid = job.item.series_uid
            if uid in self.done:
                continue
            job.failures += 1
            job.last_error = (stage, _describe(exc))
            job.data = None
            if job.failures >= self.options.max_attempts:
                self.done.add(uid)
                yield SeriesResult(uid, errors=[(stage, f"lost {job.failures} times on the Ray cluster; last: "
                                                        f"{job.last_error[1]}")])
            else:
                self.stats.retried += 1
                self.todo.appendleft(job)
        self._last_progress = time.monotonic()

    def _check_nodes(self) -> None:
        """Work that lives on a node that died is re-submitted now, not when Ray notices each piece."""
        nodes = alive_nodes()
        live = {n["NodeID"] for n in nodes}
        self.cpus = max(1, int(sum(n["Resources"].get("CPU", 0) for n in nodes)))
        for actor in [a for a in self.actors if a.alive and a.node is not None and a.node not in live]:
            self._drop_actor(actor, "its node left the cluster")
            for ref, call in list(self.calls.items()):
                if call.actor is actor:
                    del self.calls[ref]
                    self._requeue(call.jobs)
        lost = [j for j in self.ready if j.node is not None and j.node not in live]
        if lost:
            self.ready = deque(j for j in self.ready if j not in lost)
            self._requeue(lost)

    def _requeue(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if job.item.series_uid not in self.done:
                job.data, job.node = None, None
                self.stats.retried += 1
                self.todo.appendleft(job)

    def _watchdog(self) -> Iterator[SeriesResult]:
        """No result for `stall_s`: say so, start a second attempt of every read task older than that, and
        replace every actor that has work but has not answered for that long (a hung node, a stuck GPU)."""
        now = time.monotonic()
        stall = self.options.stall_s
        if now - self._last_progress < stall:
            return
        stale_prep = [job for job, since in self.preparing.values() if now - since >= stall]
        stale_actors = [a for a in self.actors if a.alive and a.node is not None and a.calls
                        and now - a.last_seen >= stall]
        log.warning("no progress for %.0f s (%d series being read, %d waiting, %d in inference, %d actor(s), %d node(s)"
                    " alive): re-submitting %d read(s) and the work of %d silent actor(s)", now - self._last_progress,
                    len(self.preparing), len(self.ready), sum(len(c.jobs) for c in self.calls.values()),
                    sum(a.alive for a in self.actors), len(alive_nodes()), len(stale_prep), len(stale_actors))
        self._requeue([replace(j, data=None) for j in stale_prep])  # copies: the first attempt may still win
        for actor in stale_actors:
            self._drop_actor(actor, f"no answer for {now - actor.last_seen:.0f} s")
            for ref, call in list(self.calls.items()):
                if call.actor is actor:
                    del self.calls[ref]
                    self._requeue(call.jobs)
        self._last_progress = now
        return
        yield  # a generator, like the other steps of the loop


def _actor_gone(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, ActorDiedError | ActorUnavailableError | RayActorError)


def _describe(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
    return f"{type(exc).__name__}: {text}"[:500]
