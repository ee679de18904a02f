"""End to end in real headless Chromium (Debian's /usr/bin/chromium, WebGL through SwiftShader): the reading view
draws the scan, keys and the wheel move slices in the browser without a server round trip, the URL follows and a
reload restores the view, a review is saved and audited; with logins, nothing is shown before the log-in and no
request fetches image data by URL. Screenshots go to test-artifacts/ (gitignored).

These tests fail, never skip, when Chromium is missing: CI installs it (.ci/run).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import process_support as P
import pytest
import viewer_support as V
from playwright.sync_api import sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# WebGL2 through SwiftShader (software), the page composited in software: what Chrome does on a computer without
# a usable GPU (compositing the page through SwiftShader as well makes every frame ~20x slower on 2 cores)
ARGS = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
        "--disable-gpu-compositing", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return V.make_scored_db(tmp_path_factory.mktemp("browser"))


@contextlib.contextmanager
def _serve(world: dict, tmp_path: Path, users: Path | None = None):
    """The viewer in its own process group (its log in tmp_path); on exit the whole group is ended and the test
    fails if any process of it survives (no orphaned streamlit server after a test, whatever happened in it)."""
    from medsuite.commands.view import streamlit_argv

    assert CHROMIUM.exists(), "Chromium is not installed at /usr/bin/chromium (apt-get install chromium)"
    port = _free_port()
    argv = streamlit_argv(world["db"], address="127.0.0.1", port=port, bundle=None, auth_users=users, oidc=False,
                          idle_minutes=15, cache=tmp_path / "cache")
    log = tmp_path / "viewer.log"
    with open(log, "wb") as out:  # a file, not a pipe nobody reads (a full pipe would block the server)
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, proc
    finally:
        left = _stop_group(proc)
    assert not left, f"viewer processes left running after the test: {sorted(left)}; log:\n{log.read_text()[-2000:]}"


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> set[int]:
    """End the viewer's process group (SIGCONT first, it may be stopped; SIGTERM, then SIGKILL after ``grace_s``);
    return the pids of the group that were still alive after that (should be none)."""
    pgid = proc.pid  # start_new_session: the server leads its own group
    members = P.descendants(proc.pid) | {proc.pid}
    for sig in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # whatever of the group is still there (children included)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in members):
        time.sleep(0.1)
    left = {p for p in members if _alive(p)}
    for pid in left:  # escaped the group (a new session of its own): report it, but do not leave it running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _viewer_frame(page, timeout: float = 120.0):
    """The reading view's frame once its scan is drawn (body[data-ready] is set by the component)."""
    end = time.time() + timeout
    while time.time() < end:
        for f in page.frames:
            try:
                if f.evaluate("document.body && document.body.dataset.ready || ''"):
                    return f
            except Exception:  # noqa: BLE001 - frames come and go while Streamlit renders; try again
                continue
        time.sleep(0.2)
    raise TimeoutError("the reading view did not draw a scan")


def _wait_url(page, pattern: str, timeout_ms: int = 90_000) -> None:
    """Wait until the address bar matches ``pattern`` (Streamlit rewrites it in place, without a navigation)."""
    page.wait_for_function("p => new RegExp(p).test(window.location.href)", arg=pattern, timeout=timeout_ms)


def _slice(frame) -> int:
    return int(frame.evaluate("document.body.dataset.slice"))


def test_reading_in_chromium(world, tmp_path):
    with _serve(world, tmp_path) as (url, proc):
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(120_000)
            sent: list[float] = []
            page.on("websocket", lambda ws: ws.on("framesent", lambda _payload: sent.append(time.monotonic())))
            page.goto(url)
            page.get_by_role("button", name="Next unreviewed ▶").first.click()
            frame = _viewer_frame(page)
            gl = frame.evaluate("(() => { const g = window.medsuiteViewer.tiles.axial.gl; "
                                "const d = g.getExtension('WEBGL_debug_renderer_info'); "
                                "return g.getParameter(d.UNMASKED_RENDERER_WEBGL); })()")
            assert "SwiftShader" in gl or "ANGLE" in gl  # WebGL2 in software, as in CI
            shot = page.locator("iframe").first.screenshot()
            from io import BytesIO

            from PIL import Image

            pixels = np.asarray(Image.open(BytesIO(shot)).convert("L"), dtype=np.float32)
            assert pixels.std() > 10  # the scan is drawn (not a blank or black frame)
            assert frame.locator(".tile-label").count() == 3 and frame.locator(".scalebar").count() == 3

            page.mouse.move(500, 500)  # over the axial view
            frame.locator("canvas[data-plane=axial]").click(position={"x": 200, "y": 200})
            z0, n_sent = _slice(frame), len(sent)
            os.kill(proc.pid, signal.SIGSTOP)  # the server cannot answer anything now ...
            try:
                for _ in range(3):
                    page.keyboard.press("ArrowDown")
                    time.sleep(0.04)
                for _ in range(2):
                    page.mouse.wheel(0, -120)  # wheel up: towards the head, back up
                    time.sleep(0.04)
                z1 = _slice(frame)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            assert abs(z1 - z0) == 1  # ... yet every key and wheel step moved the slice (3 down, 2 up)
            changes = frame.evaluate("window.medsuiteViewer.stats.changes.slice(-5).map(c => c.kind)")
            assert changes == ["key", "key", "key", "wheel", "wheel"]
            _wait_url(page, rf"[?&]z={z1}(&|$)")  # the URL follows, debounced
            assert len(sent) > n_sent  # the view state goes to the server afterwards, for the URL
            frame.locator("[data-preset='2']").click()  # mediastinum window
            _wait_url(page, r"[?&]w=350&l=50")
            page.screenshot(path=str(ARTIFACTS / "viewer-case.png"))

            page.reload()  # the URL brings back the case, the slice and the window
            frame = _viewer_frame(page)
            assert _slice(frame) == z1
            assert frame.evaluate("window.medsuiteViewer.window") == [350, 50]

            page.get_by_label("Your name (recorded with reviews)").fill("Dr Browser")
            page.get_by_text("Agree", exact=True).click()
            page.get_by_label("Note (optional)").fill("checked in the browser")
            page.get_by_role("button", name="Save review").click()
            page.get_by_text("Saved review").wait_for()
            browser.close()
    with sqlite3.connect(world["db"]) as conn:
        rows = conn.execute("SELECT reviewer, verdict, note FROM reviews WHERE reviewer = 'Dr Browser'").fetchall()
        actions = [a for (a,) in conn.execute("SELECT action FROM audit ORDER BY audit_id")]
    assert rows == [("Dr Browser", "agree", "checked in the browser")]
    assert actions.count("open") == 2 and actions[-1] == "review"  # one opening per session (the reload is one)


def test_logins_and_no_image_urls(world, tmp_path):
    from medsuite.records.access import set_password

    users = tmp_path / "users.json"
    set_password(users, "dr.ada", "long password")
    with _serve(world, tmp_path, users) as (url, proc):
        requests: list[str] = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(120_000)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url + "/?case=1&z=3")  # a shared link: the log-in comes first
            page.get_by_label("User name").wait_for()
            assert page.locator("iframe").count() == 0 and "Next unreviewed" not in page.content()
            page.get_by_label("User name").fill("dr.ada")
            page.get_by_role("textbox", name="Password").fill("wrong password")
            page.get_by_role("button", name="Log in").click()
            page.get_by_text("Unknown user name or wrong password").wait_for()
            page.get_by_role("textbox", name="Password").fill("long password")
            page.get_by_role("button", name="Log in").click()
            frame = _viewer_frame(page)
            assert _slice(frame) == 3  # the shared link's slice, after the log-in
            page.get_by_role("button", name="Log out").click()
            page.get_by_label("User name").wait_for()
            assert page.locator("iframe").count() == 0
            browser.close()
    paths = {urllib.parse.urlsplit(u).path for u in requests if u.startswith(url)}
    assert not [p for p in paths if p.startswith("/media")]  # no image is served by URL
    allowed = re.compile(r"^/($|static/|_stcore/|component/medsuite\.viewer\.reading_view\.reading_view/(index\.html|viewer\.js)$|favicon)")
    assert all(allowed.match(p) for p in paths), sorted(p for p in paths if not allowed.match(p))
    with sqlite3.connect(world["db"]) as conn:
        actions = [a for (a,) in conn.execute("SELECT action FROM audit WHERE actor = 'dr.ada' ORDER BY audit_id")]
    assert actions[-4:] == ["login_failed", "login", "open", "logout"]

