"""End to end in real headless Chromium: start the viewer on a generated scored database on a free loopback
port, open a case, move a slice, submit a review, and find the review row in SQLite. Screenshots go to
test-artifacts/ (gitignored). Skips when Chromium or the playwright package is absent."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import viewer_support as V

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed at /usr/bin/chromium (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"viewer exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"viewer at {url} did not become healthy in {timeout} s")


@pytest.fixture
def server(tmp_path):
    from medsuite.commands.view import streamlit_argv

    world = V.make_scored_db(tmp_path)
    port = _free_port()
    argv = streamlit_argv(world["db"], address="127.0.0.1", port=port, bundle=None, auth_users=None, oidc=False,
                          idle_minutes=15, cache=tmp_path / "cache")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, world
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_open_case_scroll_and_review_in_chromium(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    url, world = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(url)
        page.get_by_role("button", name="Next unreviewed ▶").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "viewer-worklist.png"), full_page=True)
        page.get_by_label("Your name (recorded with reviews)").fill("Dr Browser")
        page.get_by_label("Your name (recorded with reviews)").press("Enter")
        page.get_by_role("button", name="Next unreviewed ▶").first.click()
        caption = page.get_by_text("world (x, y, z)")
        caption.wait_for()
        before = caption.inner_text()
        page.get_by_role("button", name="▼").click()
        page.wait_for_function("b => !document.body.innerText.includes(b)", arg=before.split(" · ")[0])
        after = page.get_by_text("world (x, y, z)").inner_text()
        assert before.split(" · ")[0] != after.split(" · ")[0]  # "Slice n / N" moved
        page.get_by_text("Agree", exact=True).click()
        page.get_by_label("Note (optional)").fill("checked in the browser")
        page.get_by_role("button", name="Save review").click()
        page.get_by_text("Saved review").wait_for()
        page.screenshot(path=str(ARTIFACTS / "viewer-case.png"), full_page=True)
        browser.close()
    with sqlite3.connect(world["db"]) as conn:
        rows = conn.execute("SELECT reviewer, verdict, note FROM reviews").fetchall()
        actions = [a for (a,) in conn.execute("SELECT action FROM audit ORDER BY audit_id")]
    assert rows == [("Dr Browser", "agree", "checked in the browser")]
    assert actions == ["open", "review"]
