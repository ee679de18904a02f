"""The reading view: the medsuite Streamlit component (NiiVue, WebGL2) that shows a scan in the browser.

The scan travels once, over the session's own WebSocket, as a component argument (gzip NIfTI bytes, see
`medsuite.viewer.payload`); there is no URL that serves image data, so nothing is readable without the logged-in
session. The page tells Python which payloads it holds (``have``) and which it lacks (``need``, e.g. after its
frame was re-created); Python sends bytes only for those, so reruns carry no image data. Scrolling, windowing,
zoom/pan, the ruler and the HU readout run in the browser; the resulting view state comes back (debounced) as
the component's value, for the URL.

The built JavaScript lives in ``static/`` (committed; ``frontend/`` holds its sources, lockfile and build script).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st
import streamlit.components.v1 as components

STATIC = Path(__file__).resolve().parent / "static"
SLOTS = ("volume", "heat", "nodules", "marks")

_component = components.declare_component("reading_view", path=str(STATIC))


@dataclass
class Transfer:
    """What this session believes the page holds, per payload id (kept in ``st.session_state``)."""

    sent: set[str] = field(default_factory=set)
    handled_seq: int = -1


def plan(value: Mapping[str, Any] | None, ids: Mapping[str, str | None], transfer: Transfer) -> set[str]:
    """The slots whose bytes must go out with this render: an id the page neither reports holding nor was
    sent already, or one it reports missing (once per report)."""
    have = set((value or {}).get("have", {}).values())
    need = set((value or {}).get("need", []))
    seq = int((value or {}).get("seq", -1))
    fresh_need = need if seq != transfer.handled_seq else set()
    transfer.handled_seq = seq
    out = set()
    for slot, pid in ids.items():
        if pid is None or pid in have:
            continue
        if pid not in transfer.sent or pid in fresh_need:
            out.add(slot)
    return out


def view_state(value: Mapping[str, Any] | None, case_id: str) -> dict[str, Any] | None:
    """The page's view state for ``case_id`` (None before the page reported one for this case)."""
    if not value or value.get("case") != case_id or not isinstance(value.get("state"), dict):
        return None
    s = value["state"]
    try:
        out = {"zyx": [int(v) for v in s["zyx"]], "layout": str(s.get("layout") or "3up")}
        if s.get("window"):
            out["window"] = [float(s["window"][0]), float(s["window"][1])]
        return out
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def reading_view(*, key: str, case_id: str, spec: dict[str, Any], payloads: Mapping[str, tuple[str, Callable[[], bytes]] | None],
                 height: int | None = None) -> dict[str, Any] | None:
    """Mount the reading view; ``payloads[slot] = (id, make_bytes)`` (``make_bytes`` is called only when the
    page needs them). Returns the page's latest value (``have``, ``need``, ``state``) or None."""
    tkey = f"{key}__transfer"
    transfer: Transfer = st.session_state.setdefault(tkey, Transfer())
    value = st.session_state.get(key)
    ids = {slot: (p[0] if p else None) for slot, p in payloads.items()}
    send = plan(value, ids, transfer)
    args: dict[str, Any] = {}
    for slot in SLOTS:
        p = payloads.get(slot)
        args[slot] = p[1]() if p is not None and slot in send else None
        if slot in send:
            transfer.sent.add(p[0])  # type: ignore[index]
    full = dict(spec, case={"id": case_id, **spec.get("case", {})}, height=height)
    return _component(spec=json.dumps(full), key=key, default=None, **args)
