"""The local engine: a bounded three-stage pipeline on one machine.

decode+sample in ``workers`` processes  ->  [bounded queue]  ->  batched inference in a thread holding
the model  ->  [bounded queue]  ->  the caller (which writes). At most ``2 * workers`` series are being
read and a few dozen small sample stacks wait at any time, so memory stays flat however many series there
are. A worker process that dies (a decoder crash, the OOM killer) only costs the series it was reading:
the pool is rebuilt and the series that were in flight are retried one at a time to find the culprit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from medsuite.io.workers import worker_pool
from medsuite.pipelines.scoring.stages import (
    Prepared,
    SeriesResult,
    WorkItem,
    prepare,
    score_prepared,
)

if TYPE_CHECKING:
    from medsuite.learn.predict import Predictor

log = logging.getLogger("medsuite.scoring")

_DONE = object()


class _Failure:
    """An exception raised in a pipeline thread, carried to the caller's thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class _Feeder(threading.Thread):
    """Submits series to the process pool (bounded) and forwards prepared results in completion order."""

    def __init__(self, items: Iterable[WorkItem], out: queue.Queue, stop: threading.Event, *, workers: int,
                 block_spec_json: str, read_options: dict[str, Any], prepare_fn: Callable[..., Prepared]) -> None:
        super().__init__(name="scoring-feeder", daemon=True)
        self.items, self.out, self.stop = iter(items), out, stop
        self.workers, self.spec, self.read_options = workers, block_spec_json, read_options
        self.max_inflight = 2 * workers
        self.prepare_fn = prepare_fn

    def _pool(self) -> ProcessPoolExecutor:
        # spawn: the parent holds torch and threads, which must not be forked; workers die with this process
        return worker_pool(self.workers, context="spawn")

    def run(self) -> None:
        pool: ProcessPoolExecutor | None = None  # started on the first series: no processes for an empty run
        inflight: dict[Future, tuple[WorkItem, bool]] = {}  # future -> (series, submitted alone as a suspect)
        suspects: deque[WorkItem] = deque()
        exhausted = False
        try:
            while not self.stop.is_set():
                # after a worker died, the series that were in flight run one at a time until all are cleared
                isolating = bool(suspects) or any(alone for _, alone in inflight.values())
                limit = 1 if isolating else self.max_inflight
                while len(inflight) < limit and not self.stop.is_set():
                    item = suspects.popleft() if suspects else (None if exhausted else next(self.items, None))
                    if item is None:
                        exhausted = True
                        break
                    pool = pool or self._pool()
                    inflight[pool.submit(self.prepare_fn, item, self.spec, self.read_options)] = (item, isolating)
                if not inflight:
                    break
                done, _ = wait(list(inflight), timeout=0.5, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    item, alone = inflight.pop(fut)
                    try:
                        prepared = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        if alone:  # it ran by itself, so it is the one that kills its worker
                            prepared = Prepared(item.series_uid, error=("read", "the worker process reading this "
                                                "series died (decoder crash or out of memory)"))
                        else:
                            suspects.append(item)
                            continue
                    if not _put(self.out, prepared, self.stop):
                        return
                if broken:
                    suspects.extend(item for item, _ in inflight.values())
                    inflight.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = None
                    if suspects:
                        log.warning("a worker process died; retrying the %d series that were in flight one at a time",
                                    len(suspects))
            _put(self.out, _DONE, self.stop)
        except BaseException as exc:  # surface to the caller instead of hanging the pipeline
            _put(self.out, _Failure(exc), self.stop)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class _Inference(threading.Thread):
    """Batches samples across series, runs the model, emits one `SeriesResult` per series."""

    def __init__(self, inq: queue.Queue, out: queue.Queue, stop: threading.Event, predictor: Predictor,
                 batch_size: int) -> None:
        super().__init__(name="scoring-inference", daemon=True)
        self.inq, self.out, self.stop = inq, out, stop
        self.predictor, self.batch_size = predictor, batch_size

    def _flush(self, pending: list[Prepared]) -> bool:
        for result in score_prepared(pending, self.predictor, self.batch_size):
            if not _put(self.out, result, self.stop):
                return False
        return True

    def run(self) -> None:
        pending: list[Prepared] = []
        n = 0
        try:
            while not self.stop.is_set():
                try:
                    item = self.inq.get(timeout=0.05 if pending else 0.5)
                except queue.Empty:
                    if pending:  # nothing more is ready: score what we have rather than wait
                        if not self._flush(pending):
                            return
                        pending, n = [], 0
                    continue
                if item is _DONE or isinstance(item, _Failure):
                    if pending and not self._flush(pending):
                        return
                    _put(self.out, item, self.stop)
                    return
                pending.append(item)
                n += 0 if item.samples is None else len(item.samples)
                if n >= self.batch_size:
                    if not self._flush(pending):
                        return
                    pending, n = [], 0
        except BaseException as exc:
            _put(self.out, _Failure(exc), self.stop)


def run_local(items: Iterable[WorkItem], *, predictor: Predictor, block_spec_json: str, workers: int = 2,
              batch_size: int = 16, read_options: dict[str, Any] | None = None,
              prepare_fn: Callable[..., Prepared] = prepare) -> Iterator[SeriesResult]:
    """Score ``items``; yields each series' result as soon as it is done (order is completion order).

    ``prepare_fn(item, block_spec_json, read_options) -> Prepared`` runs in the worker processes (a
    module-level function; `stages.prepare` unless a caller needs another reader).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stop = threading.Event()
    prepared_q: queue.Queue = queue.Queue(maxsize=2 * workers)
    results_q: queue.Queue = queue.Queue(maxsize=64)
    feeder = _Feeder(items, prepared_q, stop, workers=workers, block_spec_json=block_spec_json,
                     read_options=dict(read_options or {}), prepare_fn=prepare_fn)
    inference = _Inference(prepared_q, results_q, stop, predictor, batch_size)
    feeder.start()
    inference.start()
    try:
        while True:
            try:
                item = results_q.get(timeout=1.0)
            except queue.Empty:
                if not inference.is_alive() and results_q.empty():
                    raise RuntimeError("the inference thread stopped without finishing") from None
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        inference.join(timeout=30)
        feeder.join(timeout=60)
