"""The Ray engine's stall watchdog, on the engine's own bookkeeping (no cluster: a hung node cannot be told
apart from a lost one quickly on one machine, so this checks the policy directly)."""

from __future__ import annotations

import time
from collections import Counter, deque

import pytest

from medsuite.pipelines.scoring import ray_engine as R
from medsuite.pipelines.scoring.stages import WorkItem


class _Handle:
    """Stands in for an actor handle; killing it is recorded."""

    def __init__(self) -> None:
        self.killed = False


@pytest.fixture
def engine(monkeypatch):
    monkeypatch.setattr(R, "alive_nodes", lambda: [])
    monkeypatch.setattr(R.RayEngine, "_drop_actor", _drop)
    e = object.__new__(R.RayEngine)
    e.options = R.RayOptions(stall_s=10.0)
    e.stats = R.EngineStats()
    e.todo, e.ready, e.done = deque(), deque(), set()
    e.preparing, e.calls, e.actors = {}, {}, []
    return e


def _drop(self, actor, reason):
    actor.alive = False
    actor.handle.killed = reason
    self.actors = [a for a in self.actors if a.alive]


def _job(uid: str) -> R._Job:
    return R._Job(WorkItem(uid, ()))


def test_nothing_happens_while_results_arrive(engine):
    now = time.monotonic()
    engine._last_progress = now - 5  # within stall_s
    engine.preparing = {"ref-a": (_job("a"), now - 60)}
    assert list(engine._watchdog()) == [] and not engine.todo and engine.stats.retried == 0


def test_after_a_stall_old_reads_get_a_second_attempt_and_silent_actors_are_replaced(engine, caplog):
    now = time.monotonic()
    engine._last_progress = now - 30
    old, fresh = _job("old"), _job("fresh")
    engine.preparing = {"ref-old": (old, now - 25), "ref-fresh": (fresh, now - 2)}
    silent = R._Actor(_Handle(), now - 100, "node-ref-1", node="n1", calls=1, last_seen=now - 20)
    busy = R._Actor(_Handle(), now - 100, "node-ref-2", node="n2", calls=2, last_seen=now - 1)
    engine.actors = [silent, busy]
    stuck, moving = _job("stuck"), _job("moving")
    engine.calls = {"call-1": R._Call([stuck], silent, now - 20), "call-2": R._Call([moving], busy, now - 20)}
    with caplog.at_level("WARNING", logger="medsuite.scoring"):
        assert list(engine._watchdog()) == []
    assert "no progress for 30 s" in caplog.text and "re-submitting 1 read(s) and the work of 1 silent actor(s)" in caplog.text
    # the old read gets a second attempt (a copy: the first may still finish and win), the fresh one waits
    assert [j.item.series_uid for j in engine.todo] == ["stuck", "old"]
    assert engine.todo[1] is not old and "ref-old" in engine.preparing
    # the silent actor is replaced and its work re-queued; the busy one keeps its calls
    assert silent.handle.killed and not busy.handle.killed and engine.actors == [busy]
    assert list(engine.calls) == ["call-2"]
    assert engine.stats.retried == 2 and engine._last_progress >= now


def test_first_result_wins_and_copies_are_dropped(engine):
    """A series re-submitted by the watchdog and then finished by its first attempt is yielded once."""
    engine.done = {"a"}
    engine._requeue([_job("a"), _job("b")])
    assert [j.item.series_uid for j in engine.todo] == ["b"]
    results = list(engine._failed([_job("a")], "read", RuntimeError("lost")))
    assert results == [] and engine.stats.retried == 1


def test_a_series_lost_too_often_becomes_an_error_row(engine):
    job = _job("x")
    job.failures = engine.options.max_attempts - 1
    (result,) = engine._failed([job], "infer", RuntimeError("ActorDiedError: node gone"))
    assert result.series_uid == "x" and result.status == "error" and "x" in engine.done
    assert result.errors[0][0] == "infer" and "lost 3 times on the Ray cluster" in result.errors[0][1]


def test_engine_stats_lines_name_the_nodes():
    stats = R.EngineStats(nodes=2, read=Counter({"aaaaaaaa1": 3, "bbbbbbbb2": 2}), infer=Counter({"aaaaaaaa1": 5}))
    text = "\n".join(stats.lines())
    assert "read+sample on 2 node(s) (series): aaaaaaaa 3, bbbbbbbb 2" in text
    assert "inference on 1 node(s) (series): aaaaaaaa 5" in text
