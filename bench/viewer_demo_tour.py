"""Drive the viewer on a scored demo in headless Chromium: worklist, a case with an attribution overlay, similar
cases, a review and the audit page; saves screenshots and prints browser-side timings (open a case, change a
slice, compute/show an attribution). The database is copied first, so the demo outputs stay untouched.

Run: python bench/viewer_demo_tour.py --db DEMO/scores/medsuite.db --bundle DEMO/malignancy.bundle --out DIR
Needs the playwright package and Debian's chromium (/usr/bin/chromium); never runs `playwright install`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
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
    raise TimeoutError(f"viewer at {url} not healthy after {timeout} s")


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished the current rerun (its status widget shows 'Running' meanwhile)."""
    page.wait_for_timeout(150)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def tour(url: str, out: Path, timings: dict[str, float]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(url)
        page.get_by_role("button", name="Next unreviewed ▶").first.wait_for()
        wait_idle(page)
        page.screenshot(path=str(out / "viewer-worklist.png"))
        page.get_by_label("Your name (recorded with reviews)").fill("Dr Demo")
        page.get_by_label("Your name (recorded with reviews)").press("Enter")
        wait_idle(page)
        t = time.perf_counter()
        page.get_by_role("button", name="Next unreviewed ▶").first.click()
        page.get_by_text("world (x, y, z)").wait_for()
        wait_idle(page)
        timings["open a case (click to idle)"] = time.perf_counter() - t
        steps = []
        for name in ["▼"] * 5 + ["▲"] * 5:  # move and come back to the nodule's slice
            before = page.get_by_text("world (x, y, z)").inner_text().split(" · ")[0]
            t = time.perf_counter()
            page.get_by_role("button", name=name).click()
            page.wait_for_function("b => !document.body.innerText.includes(b + ' ·')", arg=before)
            wait_idle(page)
            steps.append(time.perf_counter() - t)
        timings["change a slice (click to idle, median of 10)"] = sorted(steps)[len(steps) // 2]
        page.get_by_text("2×", exact=True).click()
        wait_idle(page)
        page.get_by_text("Why (attributions)").click()
        for method in ("Integrated gradients", "Occlusion", "Grad-CAM"):
            if method != "Integrated gradients":  # the default
                page.locator('[data-testid="stSelectbox"]').filter(has_text="Method").locator("input").click()
                page.get_by_role("option", name=method).click()
                wait_idle(page)
            t = time.perf_counter()
            page.get_by_role("button", name="Show attribution").click()
            page.get_by_text(f"{method} |attribution|: 0").wait_for()
            wait_idle(page)
            timings[f"show attribution, {method} (first time)"] = time.perf_counter() - t
            slug = {"Integrated gradients": "ig", "Occlusion": "occlusion", "Grad-CAM": "gradcam"}[method]
            page.screenshot(path=str(out / f"viewer-case-{slug}.png"))
        similar = page.get_by_text("similar cases were")
        similar.scroll_into_view_if_needed()
        wait_idle(page)
        page.screenshot(path=str(out / "viewer-similar.png"))
        page.get_by_text("Agree", exact=True).click()
        page.get_by_label("Note (optional)").fill("demo tour")
        page.get_by_role("button", name="Save review").click()
        page.get_by_text("Saved review").wait_for()
        page.get_by_text("Audit trail").click()
        page.get_by_text("Hash chain intact").wait_for()
        wait_idle(page)
        page.screenshot(path=str(out / "viewer-audit.png"))
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "medsuite.db"
        with sqlite3.connect(a.db) as src, sqlite3.connect(db) as dst:
            src.backup(dst)
        cache = a.db.parent / "viewer-cache"
        if cache.is_dir():  # reuse the demo's volume cache read-only by copying it (first opens then hit it)
            shutil.copytree(cache, Path(tmp) / "viewer-cache")
        port = free_port()
        exe = shutil.which("medsuite") or sys.exit("the `medsuite` command is not on PATH (pip install -e .)")
        argv = [exe, "view", "--db", str(db), "--bundle", str(a.bundle), "--port", str(port)]
        # own process group: `medsuite view` runs streamlit as a child, both are stopped together below
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        timings: dict[str, float] = {}
        try:
            wait_healthy(url, proc)
            tour(url, a.out, timings)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        with sqlite3.connect(db) as conn:
            reviews = conn.execute("SELECT reviewer, verdict, note FROM reviews").fetchall()
            actions = [r for (r,) in conn.execute("SELECT action FROM audit ORDER BY audit_id")]
    for name, sec in timings.items():
        print(f"{name}: {sec * 1000:.0f} ms")
    print(f"reviews saved: {reviews}; audit actions: {actions}")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; screenshots in {a.out}")


if __name__ == "__main__":
    main()
