"""`medsuite view` starts the Streamlit server as its child: the server never outlives the command (SIGTERM,
kill -9), so no viewer is left listening on a port without the process that was asked to run it."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from process_support import _alive, descendants, kill9_and_check_orphans, start

from medsuite.records import store

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the viewer did not answer")


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_the_viewer_server_ends_with_the_command(tmp_path: Path, how: str) -> None:
    store.connect(tmp_path / "medsuite.db").close()
    port = _free_port()
    proc = start(["-m", "medsuite", "view", "--db", str(tmp_path / "medsuite.db"), "--port", str(port)], cwd=tmp_path)
    children: set[int] = set()
    try:
        _wait_healthy(port, proc)
        if how == "kill9":
            assert descendants(proc.pid)  # the Streamlit server
            assert kill9_and_check_orphans(proc) == set()
        else:
            children = descendants(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            deadline = time.monotonic() + 30
            while any(_alive(p) for p in children) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert children and not any(_alive(p) for p in children)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:  # never leave a server behind for the rest of the suite
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
