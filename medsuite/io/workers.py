"""Worker processes that die with the process that started them (no orphans after ``kill -9``).

A `concurrent.futures.ProcessPoolExecutor` worker waits on a queue whose write end it holds itself, so
when the parent is killed (SIGKILL, the OOM killer) nothing ever wakes it: it stays, holding its memory,
forever. `die_with_parent` (a pool ``initializer``) starts a daemon thread in the worker that exits the
worker within half a second of its parent's death (its parent pid changes when it is re-parented); on
Linux the kernel is also asked to send SIGKILL at once (``PR_SET_PDEATHSIG``) when the worker's parent is
the pool's owner process itself.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

__all__ = ["die_with_parent", "parent_death_signal", "worker_pool"]

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.5


def _watch(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # no cleanup: the parent that would collect our results is gone
        time.sleep(_POLL_S)


def parent_death_signal(sig: int) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``); exits
    at once if the parent already died. Elsewhere nothing. Safe in a ``preexec_fn`` (no threads, no imports)."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # died between getppid and prctl
        os._exit(1)


def die_with_parent(owner_pid: int | None = None) -> None:
    """Make this (worker) process exit when its parent does; a pool ``initializer``.

    ``owner_pid``: the pid of the process that created the pool. When it is this worker's direct parent
    (spawn, fork) the kernel also kills the worker immediately on Linux; with the forkserver the parent is
    the fork server, which itself exits when the owner dies, and the watchdog thread follows.
    """
    parent = os.getppid()
    if owner_pid is not None and parent != owner_pid and parent == 1:
        os._exit(1)  # the owner died before we even started
    if sys.platform.startswith("linux") and owner_pid is not None and parent == owner_pid:
        parent_death_signal(signal.SIGKILL)
    threading.Thread(target=_watch, args=(parent,), name="die-with-parent", daemon=True).start()


def worker_pool(max_workers: int, *, context: str = "spawn", **kwargs: Any) -> ProcessPoolExecutor:
    """A `ProcessPoolExecutor` whose workers die with this process (`die_with_parent`)."""
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=mp.get_context(context),
                               initializer=die_with_parent, initargs=(os.getpid(),), **kwargs)
