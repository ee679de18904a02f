"""The reading view's renderer alone, on a synthetic CT of the size you choose (default 300x512x512, a full chest
CT), in real Chromium with software WebGL: time to show the scan, slice-change latency (keys), and window-change
latency (presets 1/2 alternated). Compares builds of the component: this tree's ``medsuite/viewer/static`` and
any other (e.g. the first, NiiVue-based build of commit d9c33f9, ``git archive d9c33f9 | tar -x -C /tmp/niivue``).

    python bench/viewer_renderer.py                                   # this tree's build
    python bench/viewer_renderer.py --static /tmp/niivue/medsuite/viewer/static --shape 300x512x512

The page is served from a local folder and given the scan the way Streamlit gives it (a render message with the
gzip NIfTI bytes); latency is measured by the bench's own listener (the same for every build): from the key
event to the second animation frame after the component's handler has drawn.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(HERE), str(HERE / "bench")]
from viewer_browser import ARGS, CHROMIUM  # noqa: E402

from medsuite.viewer import payload as P  # noqa: E402


def phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A chest-like int16 CT: body, two lungs, noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((y - shape[1] / 2) ** 2 / (0.42 * shape[1]) ** 2 + (x - shape[2] / 2) ** 2 / (0.47 * shape[2]) ** 2) < 1
    lung = ((y - shape[1] / 2) ** 2 / (0.3 * shape[1]) ** 2 + (np.abs(x - shape[2] / 2) - 0.22 * shape[2]) ** 2
            / (0.17 * shape[2]) ** 2) < 1
    return (np.where(body, 40, -1000) + np.where(lung & body, -860, 0) + rng.normal(0, 25, shape)).astype(np.int16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--static", type=Path, default=HERE / "medsuite" / "viewer" / "static")
    ap.add_argument("--shape", default="300x512x512", help="z x y x x voxels")
    ap.add_argument("--changes", type=int, default=40)
    a = ap.parse_args()
    shape = tuple(int(v) for v in a.shape.split("x"))
    arr = phantom(shape)
    grid = P.Grid((1.25, 0.7, 0.7), (0.0, 0.0, 0.0), np.eye(3)[:, ::-1].copy())
    t = time.perf_counter()
    data = P.encode(arr, grid)
    encode_s = time.perf_counter() - t
    spec = {"case": {"id": "1"}, "volume": {"id": "v1"}, "window": {"width": 1500, "level": -600},
            "presets": [{"key": "1", "name": "lung", "width": 1500, "level": -600},
                        {"key": "2", "name": "mediastinum", "width": 350, "level": 50}],
            "init": {"token": 1, "zyx": [shape[0] // 2, shape[1] // 2, shape[2] // 2]}, "nodules": [], "interpolated": [],
            "overlays": {}}
    class Handler(http.server.SimpleHTTPRequestHandler):
        """The component's files, plus the scan at /scan.bin (what Streamlit would hand over as bytes)."""

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/scan.bin":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            super().do_GET()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(a.static)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    from playwright.sync_api import sync_playwright

    res: dict = {"static": str(a.static), "shape": shape, "gzip_mb": round(len(data) / 1e6, 1),
                 "raw_mb": round(arr.nbytes / 1e6, 1), "encode_s": round(encode_s, 2)}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"http://127.0.0.1:{srv.server_address[1]}/index.html")
            page.wait_for_function("window.medsuiteViewer !== undefined")
            page.evaluate("document.documentElement.style.setProperty('--frame-height', '880px')")
            page.evaluate("""async (spec) => { const u8 = new Uint8Array(await (await fetch('/scan.bin')).arrayBuffer());
                window.__t0 = performance.now(); window.postMessage({type: "streamlit:render", args: {spec, volume: u8}}, "*"); }""",
                          json.dumps(spec))
            page.wait_for_function("document.body.dataset.ready === 'v1'", timeout=600_000, polling=50)
            res["show_scan_ms"] = round(page.evaluate("window.medsuiteViewer.stats.ready - window.__t0"))
            page.mouse.click(300, 450)
            page.wait_for_timeout(1000)
            # registered after the component's own capture listener: runs once the slice has been drawn
            page.evaluate("""() => { window.__lat = []; window.addEventListener('keydown', (e) => {
                if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
                const t0 = e.timeStamp;
                requestAnimationFrame(() => requestAnimationFrame(() => window.__lat.push(performance.now() - t0))); }, true); }""")
            lat = []
            for i in range(a.changes):
                n = page.evaluate("window.__lat.length")
                page.keyboard.press("ArrowDown" if (i // 5) % 2 == 0 else "ArrowUp")
                end = time.time() + 30
                v = None
                while time.time() < end and v is None:
                    v = page.evaluate(f"window.__lat.length > {n} ? window.__lat[{n}] : null")
                lat.append(v)
                page.wait_for_timeout(50)
            got = sorted(v for v in lat if v is not None)
            res["slice_change_ms"] = {"n": len(lat), "median": round(statistics.median(got), 1),
                                      "p90": round(got[int(0.9 * len(got))], 1)} if got else "no change seen"
            win = []
            for i in range(10):  # window presets: time from the key to two frames later, as measured in the page
                t0 = page.evaluate("""k => new Promise(r => { const t = performance.now();
                    window.dispatchEvent(new KeyboardEvent('keydown', {key: k}));
                    requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now() - t))); })""", "2" if i % 2 == 0 else "1")
                win.append(t0)
            res["window_change_ms"] = {"n": len(win), "median": round(statistics.median(win), 1), "max": round(max(win), 1)}
            browser.close()
    finally:
        srv.shutdown()
    res["load_average"] = round(os.getloadavg()[0], 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
