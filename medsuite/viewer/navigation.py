"""Where the reader is: the open case and the view in the URL (reload and sharing work), and case leases.

URL parameters: ``case`` (prediction id), ``z``, ``y``, ``x`` (voxel of the crosshair, array order), ``w``/``l``
(window width/level) and ``layout`` (``3up``: axial large + coronal and sagittal, ``row``: 1×3, ``axial``,
``coronal``, ``sagittal``: 1-up). Bad values are ignored,
never trusted: the case is looked up in the database, the voxel clipped to the scan.

"Next unreviewed" claims the case it opens (`medsuite.records.leases`), so two reviewers get different cases;
opening a case directly claims it too when nobody else holds it.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Mapping
from contextlib import closing
from typing import Any

import streamlit as st

from medsuite.records import leases
from medsuite.viewer.resources import connect

CASE_KEY = "prediction_id"
INIT_KEY = "case_init"
HOLDER_KEY = "lease_holder"
VIEW_KEYS = ("z", "y", "x", "w", "l", "layout")
LAYOUTS = ("3up", "row", "axial", "coronal", "sagittal")
_tokens = itertools.count(1)


def _num(value: Any, kind: type) -> Any:
    try:
        v = kind(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def parse_view(params: Mapping[str, Any]) -> dict[str, Any]:
    """The view parts of URL parameters: ``zyx`` (each None when absent or invalid; y and x need z), ``window``
    (w > 0) and ``layout``."""
    out: dict[str, Any] = {}
    zyx = [_num(params.get(k), int) for k in ("z", "y", "x")]
    zyx = [v if v is not None and v >= 0 else None for v in zyx]
    if zyx[0] is not None:
        out["zyx"] = zyx
    w, lv = _num(params.get("w"), float), _num(params.get("l"), float)
    if w is not None and lv is not None and w > 0:
        out["window"] = [w, lv]
    if params.get("layout") in LAYOUTS:
        out["layout"] = params["layout"]
    return out


def url_case() -> int | None:
    """The case id in the URL, if it is a number."""
    v = _num(st.query_params.get("case"), int)
    return v if v is not None and v > 0 else None


def current_case() -> int | None:
    """The open case: this session's choice, else (first visit, reload, shared link) the URL's."""
    if CASE_KEY not in st.session_state:
        pid = url_case()
        st.session_state[CASE_KEY] = pid
        if pid is not None:
            st.session_state[INIT_KEY] = {"pid": pid, "token": next(_tokens), **parse_view(st.query_params)}
    pid = st.session_state.get(CASE_KEY)
    return None if pid is None else int(pid)


def open_case(pid: int | None, view: Mapping[str, Any] | None = None) -> None:
    """Switch to case ``pid`` (None: the worklist); the view starts at the nodule unless ``view`` says otherwise."""
    st.session_state[CASE_KEY] = None if pid is None else int(pid)
    st.session_state[INIT_KEY] = None if pid is None else {"pid": int(pid), "token": next(_tokens), **(view or {})}


def case_init(pid: int) -> dict[str, Any]:
    """How the view of case ``pid`` starts (a token, and the URL's view when it was opened from the URL)."""
    init = st.session_state.get(INIT_KEY)
    if not init or init.get("pid") != pid:
        init = {"pid": pid, "token": next(_tokens)}
        st.session_state[INIT_KEY] = init
    return init


def sync_url(pid: int | None, view: Mapping[str, Any] | None) -> None:
    """Write the case and its view into the URL (only what changed, so the browser history stays calm)."""
    want: dict[str, str] = {}
    if pid is not None:
        want["case"] = str(pid)
        if view:
            if view.get("zyx"):
                want.update(zip(("z", "y", "x"), (str(int(v)) for v in view["zyx"]), strict=True))
            if view.get("window"):
                want["w"], want["l"] = (f"{float(v):g}" for v in view["window"])
            if view.get("layout"):
                want["layout"] = str(view["layout"])
    current = {k: st.query_params.get(k) for k in ("case", *VIEW_KEYS) if k in st.query_params}
    if pid is not None and not view:
        # no view reported yet: keep the URL's view if it belongs to this case
        if current.get("case") == str(pid):
            return
    if current != want:
        for k in ("case", *VIEW_KEYS):
            if k in st.query_params and k not in want:
                del st.query_params[k]
        st.query_params.update(want)


# ------------------------------------------------------------------------------------------------ leases
def holder(identity: str | None) -> str:
    """Whose lease: the login name, or (without logins) this browser session."""
    if identity:
        return f"user:{identity}"
    return st.session_state.setdefault(HOLDER_KEY, f"session:{uuid.uuid4().hex[:16]}")


def claim_next(db: Any, identity: str | None, reviewer: str, *, after: int | None, run_ids: list[str] | None = None) -> int | None:
    with closing(connect(db)) as conn:
        return leases.claim_next(conn, holder(identity), reviewer, after=after, run_ids=run_ids)


def claim(db: Any, pid: int, identity: str | None, reviewer: str) -> leases.Lease | None:
    """Claim or renew case ``pid``; the other reviewer's lease when someone else holds it."""
    with closing(connect(db)) as conn:
        return leases.claim(conn, pid, holder(identity), reviewer)


def release(db: Any, identity: str | None, pid: int | None = None) -> None:
    with closing(connect(db)) as conn:
        leases.release(conn, holder(identity), pid)
