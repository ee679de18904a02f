"""Process helpers for the kill -9 tests: start a medsuite command or script, wait for a line, find its
descendants through /proc (no psutil), SIGKILL it and check that nothing it started survives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    """The environment for child interpreters: this checkout first on the path, one BLAS thread."""
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}


def start(args: list[str], **kw) -> subprocess.Popen:
    """``python ARGS...`` with stdout piped line by line (text) and stderr to a pipe."""
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=kw.pop("cwd", ROOT), **kw)


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, their children ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = _ppid(int(entry.name))
            if ppid is not None:
                parents[int(entry.name)] = ppid
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier and c not in found}
        found |= frontier
    return {p for p in found if _alive(p)}


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout_s: float = 300.0) -> str:
    """Read stdout until a line starting with ``prefix``; fail with the child's stderr otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    proc.kill()
    raise AssertionError(f"no {prefix!r} line from {proc.args}; stderr:\n{proc.stderr.read()[-4000:]}")


def kill9_and_check_orphans(proc: subprocess.Popen, *, grace_s: float = 20.0, then_continue: bool = False) -> set[int]:
    """SIGKILL ``proc``; return the pids of its descendants still alive after ``grace_s`` (should be none).

    The descendants are listed just before the kill. Processes that died are reaped by init; we only look.
    ``then_continue``: the caller froze the process group (SIGSTOP); after the kill its survivors get SIGCONT,
    so that they can notice (a stopped worker's watchdog thread cannot run).
    """
    before = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if then_continue:
        for p in before:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        alive = {p for p in before if _alive(p)}
        if not alive:
            return set()
        time.sleep(0.2)
    alive = {p for p in before if _alive(p)}
    for p in alive:  # do not leave them behind for the rest of the suite
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


def temp_leftovers(root: Path) -> list[Path]:
    """Hidden temporary files/folders (``.name...tmp...``) anywhere under ``root``."""
    return sorted(p for p in Path(root).rglob(".*") if ".tmp" in p.name or p.name.startswith(".tmp"))
