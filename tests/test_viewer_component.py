"""The reading view's committed build (medsuite/viewer/static) is the build of the committed sources
(medsuite/viewer/frontend): build.mjs records the SHA-256 of every source and output in static/BUILD.json; an
edited source without a rebuild, or a hand-edited viewer.js, fails here (no Node needed). `npm run check` in
the frontend folder rebuilds in memory and compares byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

VIEWER = Path(__file__).resolve().parents[1] / "medsuite" / "viewer"
FRONTEND, STATIC = VIEWER / "frontend", VIEWER / "static"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_static_build_is_the_build_of_the_sources():
    stamp = json.loads((STATIC / "BUILD.json").read_text())
    sources = ["build.mjs", "index.html", "package.json", "package-lock.json",
               *sorted(f"src/{p.name}" for p in (FRONTEND / "src").glob("*.js"))]
    assert sorted(stamp["sources"]) == sorted(sources), "sources added or removed since the last `npm run build`"
    stale = [f for f in sources if _sha(FRONTEND / f) != stamp["sources"][f]]
    assert not stale, f"sources changed since the last build: {stale} (cd medsuite/viewer/frontend && npm run build)"
    assert sorted(stamp["outputs"]) == ["index.html", "viewer.js"]
    edited = [f for f, h in stamp["outputs"].items() if _sha(STATIC / f) != h]
    assert not edited, f"static files differ from the build: {edited}"
    # what the app serves: exactly the build's files (no stray bundle or licence file of an older build)
    assert sorted(p.name for p in STATIC.iterdir()) == ["BUILD.json", "index.html", "viewer.js"]
