"""The viewer as a reader meets it, measured in real Chromium (Debian's /usr/bin/chromium, headless, WebGL through
SwiftShader) at 1920x1080: slice-change latency (keys, wheel) alone and with two reviewers at once, lost input
when a key is pressed 8 times at 33-100 ms intervals, the first case after the server starts and the next ones.
Works on this tree's viewer and on an older one (``--tree``), so before/after run on the same data and machine.

    python bench/viewer_browser.py --db DEMO/scores/medsuite.db --bundle DEMO/malignancy.bundle          # this tree
    git archive bc9a864 | tar -x -C /tmp/before                                                           # the old viewer
    python bench/viewer_browser.py --db ... --bundle ... --tree /tmp/before --label before
    python bench/viewer_browser.py --db ... --bundle ... --dwell 3          # 3 s on each case before "Next unreviewed"
    python bench/viewer_browser.py --db ... --bundle ... --shots docs/img                                 # screenshots

Latency is measured in the page: from the input event's timestamp to the second animation frame after the new
slice is drawn (this viewer: its own counters; the old one: the slice caption changed and the three view images
loaded). The database is copied first (into the tree's schema when it is older), so the inputs stay untouched.
Prints medians and p90 with the machine's load average (sampled every 5 s during the run); ``--json`` saves
everything. The viewer runs in its own process group, ended with the bench.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# WebGL2 through SwiftShader (software), the page composited in software: what Chrome does on a computer without
# a usable GPU (compositing the page through SwiftShader as well makes every frame ~20x slower on 2 cores)
ARGS = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
        "--disable-gpu-compositing", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]
VIEWPORT = {"width": 1920, "height": 1080}
HERE = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------ server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_new(tree: Path) -> bool:
    return (tree / "medsuite" / "viewer" / "reading_view.py").is_file()


def prepare_db(src: Path, dst: Path, tree: Path) -> None:
    """Copy the scored database; for a tree with an older schema, rebuild it there (runs, series, predictions)."""
    code = ("import sys, sqlite3; from medsuite.records import store; c = store.connect(sys.argv[1]); "
            "print(store.SCHEMA_VERSION); c.close()")
    probe = dst.with_name("probe.db")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    version = int(subprocess.check_output([sys.executable, "-c", code, str(probe)], env=env, cwd=str(dst.parent),
                                          text=True).strip())
    with sqlite3.connect(src) as s:
        src_version = int(s.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    if version == src_version:
        with sqlite3.connect(src) as s, sqlite3.connect(dst) as d:
            s.backup(d)
    else:
        _rebuild(src, dst, code, env)
    if not (tree / "medsuite" / "io" / "phi.py").is_file():
        _unseal_sources(dst)


def _unseal_sources(db: Path) -> None:
    """Plain series locations for a tree older than sealed locations (it would read ``phi1:...`` as a path)."""
    sys.path.insert(0, str(HERE))
    from medsuite.io.phi import Pseudonymizer

    key = Pseudonymizer.from_key_file()
    with sqlite3.connect(db) as d:
        rows = d.execute("SELECT rowid, source FROM series WHERE source IS NOT NULL").fetchall()
        d.executemany("UPDATE series SET source = ? WHERE rowid = ?", [(key.unseal(src), rid) for rid, src in rows])


def _rebuild(src: Path, dst: Path, code: str, env: dict[str, str]) -> None:
    """The tree's own (older) schema, filled with the runs, series and predictions of ``src``."""
    subprocess.check_call([sys.executable, "-c", code, str(dst)], env=env, cwd=str(dst.parent), stdout=subprocess.DEVNULL)
    with sqlite3.connect(dst) as d:
        d.execute("ATTACH DATABASE ? AS src", (str(src),))
        for table in ("runs", "series", "predictions"):
            cols = [r[1] for r in d.execute(f"PRAGMA main.table_info({table})")]
            have = {r[1] for r in d.execute(f"PRAGMA src.table_info({table})")}
            common = ", ".join(c for c in cols if c in have)
            d.execute(f"INSERT INTO main.{table} ({common}) SELECT {common} FROM src.{table}")
        d.commit()


# the lowest-scored nodule of another series than the "missing" one (the lowest-scored case)
GAP_CASE = ("SELECT prediction_id, series_uid, z_mm FROM predictions WHERE z_mm IS NOT NULL AND series_uid != "
            "(SELECT series_uid FROM predictions ORDER BY probability LIMIT 1) ORDER BY probability LIMIT 1")


def with_gap(db: Path, folder: Path, n: int = 3) -> int:
    """For the "interpolated slices" view: copy the DICOM series of the `GAP_CASE` nodule to ``folder``
    without its ``n`` slices nearest the nodule, and point the (copied) database at the copy; the reader then
    fills the gap by interpolation. Returns the case's prediction id."""
    import shutil

    import pydicom

    sys.path.insert(0, str(HERE))
    from medsuite.io.phi import Pseudonymizer

    with sqlite3.connect(db) as conn:
        pid, uid, z = conn.execute(GAP_CASE).fetchone()
        src = Path(Pseudonymizer.from_key_file().unseal(conn.execute(
            "SELECT source FROM series WHERE series_uid = ? AND source IS NOT NULL", (uid,)).fetchone()[0]))
        shutil.copytree(src, folder)
        files = sorted(folder.rglob("*.dcm"))
        zs = {f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files}
        for f in sorted(files, key=lambda f: abs(zs[f] - z))[:n]:
            f.unlink()
        conn.execute("UPDATE series SET source = ? WHERE series_uid = ?", (str(folder), uid))
    return int(pid)


def start(tree: Path, db: Path, bundle: Path, cache: Path, users: Path | None = None,
          log: Path | None = None) -> tuple[subprocess.Popen, str, float]:
    """The tree's viewer on a free loopback port, in its own process group (`stop` ends the whole group); its
    output goes to ``log`` (default: discarded)."""
    port = free_port()
    app = tree / "medsuite" / "viewer" / "app.py"
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", "127.0.0.1", "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal", "--theme.base", "dark", "--", "--db", str(db), "--bundle", str(bundle),
            "--cache", str(cache)] + (["--auth-users", str(users)] if users else [])
    t0 = time.time()
    # cwd: the cache's folder, never a source tree (`python -m` puts the working directory first on sys.path)
    with open(log or os.devnull, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=str(cache.parent), start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    while time.time() - t0 < 180:
        if proc.poll() is not None:
            raise RuntimeError(f"viewer exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
                return proc, url, t0
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("viewer not healthy after 180 s")


def stop(proc: subprocess.Popen) -> None:
    """End the viewer's process group: SIGTERM, then SIGKILL for whatever is left after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


class LoadSampler:
    """The machine's 1-minute load average every ``every_s`` seconds while a measurement runs (the figures are only
    comparable at similar load: report it with them)."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s, self.values = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.values.append(os.getloadavg()[0])
            self._stop.wait(self.every_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        v = sorted(self.values) or [os.getloadavg()[0]]
        return {"min": round(v[0], 1), "median": round(statistics.median(v), 1), "max": round(v[-1], 1), "samples": len(v)}


# --------------------------------------------------------------------------------------------- adapters
OLD_JS = """() => {
  if (window.__bench) return;
  const imgs = () => Array.from(document.querySelectorAll('[data-testid="stImage"] img')).slice(0, 3);
  const caption = () => { const m = document.body.innerText.match(/Slice (\\d+) of 0–(\\d+)/); return m ? [+m[1], +m[2]] : null; };
  const b = window.__bench = { lat: [], pending: null, caption, imgs };
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
    b.pending = { t0: e.timeStamp, before: JSON.stringify(caption()), srcs: imgs().map((i) => i.src) };
  }, true);
  const check = () => {
    const p = b.pending;
    if (!p || JSON.stringify(caption()) === p.before) return;
    const now = imgs();
    if (now.length < 3 || now.some((i, k) => i.src === p.srcs[k] || !i.complete || !i.naturalWidth)) return;
    b.pending = null;
    requestAnimationFrame(() => requestAnimationFrame((t) => b.lat.push(t - p.t0)));
  };
  new MutationObserver(check).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
  document.addEventListener('load', check, true);
}"""


class Old:
    """The server-rendered viewer (Streamlit buttons with shortcuts, three st.image views)."""

    name = "old"

    def __init__(self, page):
        self.page = page

    def idle(self, timeout_ms: int = 120_000) -> None:
        self.page.wait_for_timeout(100)
        self.page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)

    def ready(self) -> None:
        self.page.wait_for_function("() => { const i = Array.from(document.querySelectorAll('[data-testid=\"stImage\"] img')).slice(0, 3);"
                                    " return i.length === 3 && i.every((x) => x.complete && x.naturalWidth > 0)"
                                    " && /Slice \\d+ of/.test(document.body.innerText); }", timeout=120_000)
        self.idle()
        self.page.evaluate(OLD_JS)

    def open_first(self) -> float:
        self.page.get_by_role("button", name="Next unreviewed ▶").first.wait_for(timeout=600_000)
        self.idle(600_000)
        t = time.perf_counter()
        self.page.get_by_role("button", name="Next unreviewed ▶").first.click()
        self.ready()
        return time.perf_counter() - t

    def open_next(self) -> float:
        title = self.page.locator("h3").first.inner_text()
        t = time.perf_counter()
        self.page.get_by_role("button", name="Next unreviewed ▶").first.click()
        self.page.wait_for_function("t => document.querySelector('h3') && document.querySelector('h3').innerText !== t", arg=title,
                                    timeout=120_000)
        self.ready()
        return time.perf_counter() - t

    def focus(self) -> None:
        self.page.mouse.click(5, 400)  # the page, outside any widget: shortcuts apply

    def slice(self) -> int:
        c = self.page.evaluate("window.__bench.caption()")
        return int(c[0])

    def n_slices(self) -> int:
        return int(self.page.evaluate("window.__bench.caption()")[1]) + 1

    def latency(self, key: str, timeout_s: float = 15.0) -> float | None:
        n = self.page.evaluate("window.__bench.lat.length")
        self.page.keyboard.press(key)
        end = time.time() + timeout_s
        while time.time() < end:
            if self.page.evaluate("window.__bench.lat.length") > n:
                self.idle()
                return float(self.page.evaluate("window.__bench.lat[window.__bench.lat.length - 1]"))
            time.sleep(0.01)
        self.idle()
        return None

    def wheel_latency(self) -> float | None:
        return None  # the old viewer has no wheel scrolling (the wheel scrolls the page)

    def settle(self) -> None:
        self.idle()


class New:
    """This tree's viewer: the reading view component (its own counters in window.medsuiteViewer)."""

    name = "new"

    def __init__(self, page):
        self.page = page
        self.frame = None

    def _frame(self, timeout_s: float = 120.0):
        end = time.time() + timeout_s
        while time.time() < end:
            for f in self.page.frames:
                try:
                    if f.evaluate("!!(window.medsuiteViewer && window.medsuiteViewer.stats.ready)"):
                        self.frame = f
                        return f
                except Exception:  # noqa: BLE001 - frames come and go while Streamlit renders
                    continue
            time.sleep(0.01)
        raise TimeoutError("the reading view did not show a scan")

    def _ready_at(self) -> float:
        try:
            return float(self.frame.evaluate("window.medsuiteViewer.stats.ready || 0")) if self.frame else 0.0
        except Exception:  # noqa: BLE001 - the frame was replaced
            return 0.0

    def open_first(self) -> float:
        self.page.get_by_role("button", name="Next unreviewed ▶").first.wait_for(timeout=600_000)
        t = time.perf_counter()
        self.page.get_by_role("button", name="Next unreviewed ▶").first.click()
        self._frame()
        return time.perf_counter() - t

    def open_next(self) -> float:
        r0 = self._ready_at()
        t = time.perf_counter()
        self.page.get_by_role("button", name="Next unreviewed ▶").first.click()
        end = time.time() + 120
        while time.time() < end and self._ready_at() <= r0:
            time.sleep(0.01)
        return time.perf_counter() - t

    def focus(self) -> None:
        # measure reading, not page loading: wait until Streamlit has finished the case page (as Old does)
        self.page.wait_for_timeout(100)
        self.page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=600_000)
        handle = self.page.locator("iframe").first.bounding_box()
        self.axial = (handle["x"] + handle["width"] * 0.25, handle["y"] + handle["height"] * 0.5)
        self.page.mouse.click(*self.axial)
        self.page.wait_for_timeout(700)

    def slice(self) -> int:
        return int(self.frame.evaluate("document.body.dataset.slice"))

    def n_slices(self) -> int:
        return int(self.frame.evaluate("(window.medsuiteViewer.vol || window.medsuiteViewer.raw).dims[2]"))  # raw: NiiVue build

    def _wait_change(self, n: int, timeout_s: float) -> float | None:
        end = time.time() + timeout_s
        while time.time() < end:
            r = self.frame.evaluate(f"(() => {{ const c = window.medsuiteViewer.stats.changes; return c.length > {n} && "
                                    "c[c.length - 1].frame !== null ? c[c.length - 1].frame - c[c.length - 1].t0 : null; })()")
            if r is not None:
                return float(r)
            time.sleep(0.005)
        return None

    def latency(self, key: str, timeout_s: float = 15.0) -> float | None:
        n = self.frame.evaluate("window.medsuiteViewer.stats.changes.length")
        self.page.keyboard.press(key)
        return self._wait_change(n, timeout_s)

    def wheel_latency(self, up: bool = False) -> float | None:
        n = self.frame.evaluate("window.medsuiteViewer.stats.changes.length")
        self.page.mouse.move(*self.axial)
        self.page.mouse.wheel(0, -100 if up else 100)
        return self._wait_change(n, 15.0)

    def settle(self) -> None:
        self.page.wait_for_timeout(50)


# -------------------------------------------------------------------------------------------- procedures

def stats(values: list[float | None]) -> dict[str, Any]:
    got = sorted(v for v in values if v is not None)
    if not got:
        return {"n": len(values), "lost": len(values)}
    return {"n": len(values), "lost": len(values) - len(got), "median_ms": round(statistics.median(got), 1),
            "p90_ms": round(got[min(len(got) - 1, int(0.9 * len(got)))], 1), "max_ms": round(got[-1], 1)}


def key_series(v, n: int) -> list[float | None]:
    """n slice changes, alternating 5 down and 5 up so the position stays in the scan."""
    out = []
    for i in range(n):
        out.append(v.latency("ArrowDown" if (i // 5) % 2 == 0 else "ArrowUp"))
        v.settle()
    return out


def wheel_series(v, n: int) -> list[float | None]:
    out = []
    for i in range(n):
        out.append(v.wheel_latency(up=(i // 5) % 2 == 1) if v.name == "new" else None)
        v.settle()
    return out


def bursts(v, n_bursts: int = 5, presses: int = 8, seed: int = 0) -> list[dict[str, int]]:
    """Press a key 8 times at random 33-100 ms intervals without waiting; how far did the slice move?"""
    rng = random.Random(seed)
    total = v.n_slices()
    out = []
    for b in range(n_bursts):
        key = "ArrowDown" if b % 2 == 0 else "ArrowUp"
        before = v.slice()
        for _ in range(presses):
            v.page.keyboard.press(key)
            time.sleep(rng.uniform(0.033, 0.100))
        time.sleep(3.0)
        v.settle()
        after = v.slice()
        room = before if after < before else total - 1 - before  # a move stops at the first or last slice
        out.append({"pressed": presses, "moved": abs(after - before), "possible": min(presses, room) if after != before else presses,
                    "from": before, "to": after, "slices": total})
    return out


def new_page(pw, url: str):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(120_000)
    page.goto(url)
    return browser, page


def adapter(kind: str, page):
    return New(page) if kind == "new" else Old(page)


def reviewer(kind: str, url: str, n: int, barrier: Any, out: Any, who: int) -> None:
    """One of two concurrent reviewers (its own browser): open a case, then slice changes in step with the other."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser, page = new_page(pw, url)
        v = adapter(kind, page)
        v.open_first()
        v.focus()
        barrier.wait(timeout=300)
        out[who] = key_series(v, n)
        browser.close()


def measure(kind: str, url: str, n: int, t_start: float, dwell_s: float = 0.0) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    res: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser, page = new_page(pw, url)
        v = adapter(kind, page)
        res["first_case_s"] = round(v.open_first(), 2)
        res["first_case_since_start_s"] = round(time.time() - t_start, 1)
        v.focus()
        res["key_alone"] = stats(key_series(v, n))
        res["wheel_alone"] = stats(wheel_series(v, n)) if kind == "new" else "no wheel scrolling: the wheel scrolls the page"
        res["bursts"] = bursts(v)
        opens = []
        for _ in range(5):  # dwell_s: the time a reader spends on a case before asking for the next one
            if dwell_s:
                v.settle()
                time.sleep(dwell_s)
            opens.append(v.open_next())
        res["next_case_s"] = {"median": round(statistics.median(opens), 2), "min": round(min(opens), 2), "max": round(max(opens), 2)}
        browser.close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    with ctx.Manager() as manager:
        out = manager.dict()
        procs = [ctx.Process(target=reviewer, args=(kind, url, n, barrier, out, i)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=900)
        both = [v for i in range(2) for v in out.get(i, [])]
    res["key_two_reviewers"] = stats(both)
    return res


# ------------------------------------------------------------------------------------------ screenshots

def _idle(page, settle_ms: int = 800) -> None:
    """Streamlit has finished the page (its status widget is gone), then a moment for the last paint."""
    page.wait_for_timeout(200)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=600_000)
    page.wait_for_timeout(settle_ms)


def _frame_where(page, condition: str, timeout_s: float):
    """The first frame of the page where the JavaScript ``condition`` holds (Streamlit may replace the iframe)."""
    end = time.time() + timeout_s
    while time.time() < end:
        for f in page.frames:
            try:
                if f.evaluate(condition):
                    return f
            except Exception:  # noqa: BLE001 - frames come and go while Streamlit renders
                continue
        time.sleep(0.2)
    raise TimeoutError(f"no frame where {condition} after {timeout_s} s")


def shots(url: str, out: Path, db: Path) -> None:
    """Each view of this tree's viewer, for docs/viewer-clinicians.md."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser, page = new_page(pw, url)
        v = New(page)
        page.get_by_label("User name").fill("dr.demo")
        page.get_by_role("textbox", name="Password").fill("demo password")
        page.screenshot(path=str(out / "viewer-login.png"))
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("button", name="Next unreviewed ▶").first.wait_for()

        def goto(query: str) -> None:
            """A link opened in a new session: the log-in first, then the linked case."""
            page.goto(f"{url}/?{query}")
            page.get_by_label("User name").fill("dr.demo")
            page.get_by_role("textbox", name="Password").fill("demo password")
            page.get_by_role("button", name="Log in").click()

        _idle(page)
        page.screenshot(path=str(out / "viewer-worklist.png"))
        v.open_first()
        page.get_by_text("Similar cases", exact=True).wait_for(timeout=600_000)  # the whole case page, not a part of it
        _idle(page, 1500)
        page.screenshot(path=str(out / "viewer-case.png"))
        v.focus()
        frame = v.frame
        frame.locator("[data-preset='2']").click()
        box = page.locator("iframe").first.bounding_box()
        x, y = box["x"] + box["width"] * 0.18, box["y"] + box["height"] * 0.55
        page.keyboard.down("Shift")
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 90, y + 40, steps=5)
        page.mouse.up()
        page.keyboard.up("Shift")
        page.mouse.move(x + 30, y - 30)
        _idle(page)
        page.screenshot(path=str(out / "viewer-ruler-window.png"))
        frame.locator("[data-layout='axial']").click()
        _idle(page)
        page.screenshot(path=str(out / "viewer-1up.png"))
        frame.locator("[data-layout='3up']").click()
        frame.locator("[data-preset='1']").click()
        page.get_by_text("Why (attributions)").click()
        page.get_by_role("button", name="Show attribution").click()
        frame = _frame_where(page, "!!(window.medsuiteViewer && window.medsuiteViewer.overlays.heat)", 600)  # may be new
        frame.locator("button.nodule.current").click()  # the crosshair back on the nodule: the map on every plane
        _idle(page, 1500)
        page.screenshot(path=str(out / "viewer-heat.png"))
        page.get_by_text("What the threshold means").click()
        _idle(page)
        page.screenshot(path=str(out / "viewer-score.png"))
        page.get_by_text("Similar cases", exact=True).evaluate("e => e.scrollIntoView({block: 'start'})")  # the heading at the top: all cards in view
        _idle(page, 1500)
        page.screenshot(path=str(out / "viewer-similar.png"))
        # the first neighbour's Open button, by its widget key (a select box's arrow is also a button named "open")
        page.locator("[class*='st-key-sim_open_'] button").first.click()
        page.get_by_text("the model's input patch as stored").wait_for(timeout=300_000)
        page.mouse.wheel(0, -4000)
        _idle(page, 2000)
        page.screenshot(path=str(out / "viewer-reference.png"))
        page.get_by_role("button", name="◀ Back to this case").click()
        _idle(page)
        with sqlite3.connect(db) as conn:
            broken = conn.execute("SELECT p.prediction_id FROM predictions p ORDER BY p.probability LIMIT 1").fetchone()[0]
        goto(f"case={broken}")
        page.get_by_text("cannot be shown").wait_for(timeout=300_000)
        _idle(page)
        page.screenshot(path=str(out / "viewer-missing.png"))
        with sqlite3.connect(db) as conn:
            gap = conn.execute(GAP_CASE).fetchone()[0]
        goto(f"case={gap}")
        _frame_where(page, "document.body && document.body.dataset.ready || ''", 300)
        _idle(page, 1500)
        page.screenshot(path=str(out / "viewer-interpolated.png"))
        page.get_by_text("Audit trail", exact=True).click()
        _idle(page, 1500)
        page.screenshot(path=str(out / "viewer-audit.png"))
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, required=True, help="scored database (e.g. demo_out/scores/medsuite.db)")
    ap.add_argument("--bundle", type=Path, required=True, help="the model bundle")
    ap.add_argument("--tree", type=Path, default=HERE, help="source tree whose viewer to run (default: this one)")
    ap.add_argument("--label", default=None, help="name of this run in the output (default: before/after by viewer kind)")
    ap.add_argument("--changes", type=int, default=40, help="slice changes per measurement (>= 40)")
    ap.add_argument("--dwell", type=float, default=0.0, help="seconds on each case before 'Next unreviewed' (default 0: back to back)")
    ap.add_argument("--shots", type=Path, default=None, help="save screenshots of every view here instead of measuring")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--log", type=Path, default=None, help="save the viewer server's output here")
    a = ap.parse_args()
    tree = a.tree.resolve()
    kind = "new" if is_new(tree) else "old"
    with tempfile.TemporaryDirectory(prefix="viewer-bench-") as tmp:
        db = Path(tmp) / "medsuite.db"
        prepare_db(a.db, db, tree)
        users = None
        if a.shots:
            if kind != "new":
                sys.exit("--shots is for this tree's viewer")
            users = Path(tmp) / "users.json"
            subprocess.check_call([sys.executable, "-c", "import sys; from medsuite.records.access import set_password; "
                                   "set_password(sys.argv[1], 'dr.demo', 'demo password')", str(users)],
                                  env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tmp)
            with sqlite3.connect(db) as conn:  # one case whose images are gone, for the "missing" view
                conn.execute("UPDATE series SET source = '/nonexistent/series' WHERE series_uid = (SELECT series_uid FROM "
                             "predictions ORDER BY probability LIMIT 1)")
            with_gap(db, Path(tmp) / "gap")
        proc, url, t0 = start(tree, db, a.bundle, Path(tmp) / "cache", users, a.log)
        try:
            if a.shots:
                shots(url, a.shots, db)
                print(f"screenshots in {a.shots}")
                return
            with LoadSampler() as load:
                res = measure(kind, url, a.changes, t0, a.dwell)
        finally:
            stop(proc)
    res = {"label": a.label or ("after" if kind == "new" else "before"), "viewer": kind, "tree": str(tree),
           "viewport": VIEWPORT, "changes": a.changes, "dwell_s": a.dwell, **res, "load_average": load.summary(), "cpus": os.cpu_count()}
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
