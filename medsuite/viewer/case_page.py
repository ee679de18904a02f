"""One case: a header (back, next unreviewed, what this is, who else is on it), the reading view on the left
(three large linked planes in the browser), the score, why and the review on the right, similar cases below.

A series whose images cannot be opened shows the reason (never a server path), is audited as ``open_failed``
(not ``open``), and can still be flagged or reviewed.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import closing
from typing import Any

import numpy as np
import streamlit as st

from medsuite.data.windows import WINDOWS
from medsuite.io.volume import Volume
from medsuite.records import reviews
from medsuite.viewer import auth, navigation, resources, review_panel, score_panel, similar, why
from medsuite.viewer import payload as P
from medsuite.viewer.reading_view import reading_view, view_state
from medsuite.viewer.resources import connect

ANON = "anonymous"
VIEW_KEY = "reading_view"
OPENED_KEY = "opened"
RENEW_KEY = "lease_renewed_at"
RENEW_EVERY_S = 60.0
# keys 1-5 as in OHIF: lung, mediastinum, bone, brain, then the DICOM file's own window
PRESETS: tuple[tuple[str, str], ...] = (("1", "lung"), ("2", "mediastinum"), ("3", "bone"), ("4", "brain"))


def reviewer_name(identity: str | None) -> str:
    """Who is reviewing: the login, else the name typed in this session, else 'anonymous'."""
    return identity or str(st.session_state.get(review_panel.NAME_KEY, "")).strip() or ANON


def dicom_window(meta: dict[str, Any]) -> tuple[float, float] | None:
    """(width, level) from the series' own WindowWidth/WindowCenter (first value when several), or None."""
    w, c = meta.get("window_width"), meta.get("window_center")
    w = w[0] if isinstance(w, (list, tuple)) and w else w
    c = c[0] if isinstance(c, (list, tuple)) and c else c
    try:
        w, c = float(w), float(c)
    except (TypeError, ValueError):
        return None
    return (w, c) if w > 0 else None


def presets(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The window presets on keys 1-5 (the 5th is the file's own window; width None when it has none)."""
    out = [{"key": k, "name": n, "width": WINDOWS[n].width, "level": WINDOWS[n].level} for k, n in PRESETS]
    dw = dicom_window(meta)
    out.append({"key": "5", "name": "DICOM", "width": dw[0] if dw else None, "level": dw[1] if dw else None})
    return out


def _short_id(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def interpolated_slices(vol: Volume) -> list[int]:
    """The z indices the reader interpolated or filled (`Volume.meta['interpolated_slices']`)."""
    return sorted(int(z) for z in vol.meta.get("interpolated_slices") or [])


# ----------------------------------------------------------------------------------------------- header
def header(cfg: Any, pred: dict[str, Any], identity: str | None, reviewer: str) -> None:
    pid = int(pred["prediction_id"])
    b1, b2, b3, b4 = st.columns([1.1, 1.6, 6, 3], vertical_alignment="center")
    b1.button("◀ Worklist", key="back", on_click=_leave, args=(cfg, identity, pid))
    b2.button("Next unreviewed ▶", key="case_next", shortcut="n", help="claims the next case nobody else is on (N)",
              on_click=_next, args=(cfg, identity, reviewer, pid))
    where = f"{pred['description'] or 'Series'} · …{pred['series_uid'][-12:]}"
    b3.markdown(f"**{where}**" + (f" · nodule **{pred['nodule_id']}**" if pred["nodule_id"] else "")
                + f" · case #{pid}")
    if st.session_state.get("next_none"):
        b4.caption("No other unreviewed case is free.")


def _leave(cfg: Any, identity: str | None, pid: int) -> None:
    navigation.release(cfg.db, identity, pid)
    navigation.open_case(None)


def _next(cfg: Any, identity: str | None, reviewer: str, pid: int) -> None:
    nxt = navigation.claim_next(cfg.db, identity, reviewer, after=pid)
    st.session_state["next_none"] = nxt is None
    if nxt is not None:
        navigation.open_case(nxt)


def lease_notice(cfg: Any, pid: int, identity: str | None, reviewer: str) -> None:
    """Claim (or renew) this case; say so when another reviewer holds it."""
    other = navigation.claim(cfg.db, pid, identity, reviewer)
    st.session_state[RENEW_KEY] = time.time()
    if other is not None:
        until = other.expires_at[11:16]
        st.warning(f"**{other.reviewer}** is reviewing this case (claimed until {until} UTC). "
                   "You can read it; saving a review records both opinions.")


# -------------------------------------------------------------------------------------------- the page
def render(cfg: Any, pid: int, identity: str | None) -> None:
    reviewer = reviewer_name(identity)
    with closing(connect(cfg.db)) as conn:
        try:
            pred = reviews.prediction(conn, pid)
        except reviews.ReviewError as exc:
            st.error(str(exc))
            st.button("◀ Worklist", key="back_missing", on_click=navigation.open_case, args=(None,))
            return
    header(cfg, pred, identity, reviewer)
    lease_notice(cfg, pid, identity, reviewer)
    try:
        vol = resources.volume(str(cfg.db), str(cfg.cache_root), pred["series_uid"])
    except resources.ImagesUnavailable as exc:
        unavailable(cfg, pred, identity, str(exc))
        return
    _audit_once(cfg, pred, reviewer, "open", f"prediction {pid}")
    bpath = resources.bundle_path_for(cfg.bundle, pred)
    left, right = st.columns([3.3, 1], gap="small")
    # the reading view goes out first: the model (and torch) is loaded only afterwards, unless a heat map is asked for
    method = why.requested(pid)
    ref = similar.opened(pid)
    loaded = _bundle(bpath) if method or ref else None
    heat = why.overlay(bpath, loaded[0], vol, pred, method) if method and loaded else None
    reference = reference_view(bpath, ref) if ref and loaded and loaded[0] is not None else None
    with left:
        scan_fragment(cfg, pred, vol, identity, reviewer, heat, reference)
    _prefetch_next(cfg, pid, bpath)
    bundle, info = loaded or _bundle(bpath)
    with right:
        why.controls(pid, bundle is not None)
        if heat is not None:
            why.legend(heat)
        score_panel.render(pred, bundle, info, vol, bpath)
        st.divider()
        review_panel.render(cfg, pred, identity, info)
    similar.section(cfg, pred, bpath, bundle, vol)


def _prefetch_next(cfg: Any, pid: int, bpath: str | None) -> None:
    """Prepare the next unreviewed cases while the reader reads this one: their scans (decoded and compressed)
    and, for the very next one, its score's stability range and similar cases."""
    with closing(connect(cfg.db)) as conn:
        table = reviews.worklist(conn, statuses=["unreviewed"])
        ids = [int(p) for p in table["prediction_id"] if int(p) != pid][:1]
        nxt = [reviews.prediction(conn, p) for p in ids]
    uids = [u for u in dict.fromkeys(table["series_uid"]) if u][:3]
    resources.prefetch(str(cfg.db), str(cfg.cache_root), uids, bpath)
    if bpath:
        for row in nxt:
            resources.prefetch_task(_warm_case, str(cfg.db), str(cfg.cache_root), row, bpath)


def _warm_case(db: str, cache_root: str, pred: dict[str, Any], bpath: str) -> None:
    """Fill the caches the case page of ``pred`` reads (run in the background warmer)."""
    vol = resources.volume(db, cache_root, pred["series_uid"])
    bundle = resources.bundle(bpath)
    predictor = resources.predictor(bpath)
    center = None if pred.get("x_mm") is None else (pred["x_mm"], pred["y_mm"], pred["z_mm"])
    pid = int(pred["prediction_id"])
    score_panel.stability_for(pred, bpath, bundle.block, vol)
    index = resources.case_index(bpath)
    if index is not None:
        positive = str(predictor.positive or bundle.labels[-1])
        similar.cached_neighbours(bpath, pid, similar.DEFAULT_K, predictor, bundle.block, index, vol, center,
                                  list(predictor.labels), positive)


def _bundle(bpath: str | None) -> tuple[Any, dict[str, str] | None]:
    if not bpath:
        return None, None
    try:
        with st.spinner("Loading the model bundle …"):  # shown only if it takes over half a second
            b = resources.bundle(bpath)
        return b, resources.model_info(b)
    except Exception as exc:  # noqa: BLE001 - the reading works without the model; say why it is missing
        st.warning(f"Model bundle could not be loaded: {type(exc).__name__}: {exc}")
        return None, None


def _audit_once(cfg: Any, pred: dict[str, Any], actor: str, action: str, detail: str) -> None:
    """One audit row per case and session (re-runs of the page are not new openings)."""
    opened = st.session_state.setdefault(OPENED_KEY, set())
    key = (int(pred["prediction_id"]), action)
    if key in opened:
        return
    with closing(connect(cfg.db)) as conn:
        reviews.append_audit(conn, actor, action, series_uid=pred["series_uid"], nodule_id=pred["nodule_id"],
                             detail=detail)
    opened.add(key)


def unavailable(cfg: Any, pred: dict[str, Any], identity: str | None, reason: str) -> None:
    """No images: the reason in words, the audit says so, and the case can still be flagged or reviewed."""
    pid = int(pred["prediction_id"])
    reviewer = reviewer_name(identity)
    _audit_once(cfg, pred, reviewer, "open_failed", f"prediction {pid}: images unavailable: {reason}")
    st.error(f"The images of this series cannot be shown: {reason}. The score below is the one recorded at "
             "scoring time. Flag the case so that it is fixed, or record your review.")
    navigation.sync_url(pid, None)
    left, right = st.columns([2, 1])
    with right:
        st.metric("Recorded score", f"{pred['probability']:.3f}")
        review_panel.render(cfg, pred, identity, None, with_flag=False)
    with left:
        review_panel.flag_form(cfg, pred, identity, expanded=True, default_reason="images missing or unreadable")


# ------------------------------------------------------------------------------------------- the scan
def nodules_of(cfg: Any, vol: Volume, pred: dict[str, Any]) -> list[dict[str, Any]]:
    """Every nodule of the series (from the predictions table), the reviewed one first, with voxel centres."""
    with closing(connect(cfg.db)) as conn:
        rows = resources.series_nodules(conn, pred["series_uid"])
    out = []
    for r in rows:
        zyx = vol.world_to_index(np.array([r["x_mm"], r["y_mm"], r["z_mm"]], dtype=float))
        current = r["nodule_id"] == pred["nodule_id"]
        d = r["diameter_mm"]
        out.append({"id": r["nodule_id"], "zyx": [float(v) for v in zyx], "diameter_mm": d, "current": current,
                    "probability": r["probability"]})
    out.sort(key=lambda n: (not n["current"], n["id"]))
    for i, n in enumerate(out, start=1):
        size = f"{n['diameter_mm']:.1f} mm" if n["diameter_mm"] else "size ?"
        n["name"] = f"{'●' if n['current'] else '○'} {n['id'] or f'N{i}'} · {size}"
        n["title"] = (f"nodule {n['id']}: {size}, score {n['probability']:.2f}"
                      + (" (the one under review)" if n["current"] else ""))
    return out


def _centre(vol: Volume, pred: dict[str, Any]) -> list[int]:
    shape = np.array(vol.shape)
    if pred.get("x_mm") is None:
        c = (shape - 1) / 2
    else:
        c = vol.world_to_index(np.array([pred["x_mm"], pred["y_mm"], pred["z_mm"]], dtype=float))
    return [int(v) for v in np.clip(np.rint(c), 0, shape - 1)]


def reference_view(bpath: str | None, ref: dict[str, Any]) -> dict[str, Any] | None:
    """What the reading view needs to show a reference case's stored input patch (see `similar`)."""
    index = resources.case_index(bpath)
    if index is None or index.stacks is None or not 0 <= ref["row"] < len(index):
        return None
    spacing = tuple(float(v) for v in index.meta.get("stack_spacing_mm", (1.0, 1.0, 1.0)))
    stack = np.asarray(index.stacks[ref["row"]])
    grid = P.Grid(spacing, (0.0, 0.0, 0.0), np.eye(3)[:, ::-1].copy())
    return dict(ref, id=_short_id("reference", bpath, ref["row"]), shape=list(stack.shape), spacing=list(spacing),
                make=lambda: P.encode(stack, grid, description="medsuite reference patch"))


@st.fragment
def scan_fragment(cfg: Any, pred: dict[str, Any], vol: Volume, identity: str | None, reviewer: str,
                  overlay: dict[str, Any] | None, reference: dict[str, Any] | None = None) -> None:
    """The reading view. Its reports (the view state, every ~0.5 s of reading) re-run only this fragment: the
    URL follows the view, the lease is renewed and the session counts as active."""
    pid = int(pred["prediction_id"])
    if reference is not None:
        c1, c2 = st.columns([5, 1], vertical_alignment="center")
        size = f", {reference['diameter_mm']:.1f} mm" if reference.get("diameter_mm") else ""
        c1.info(f"Similar case #{reference['rank']}: **{reference['case_id']}** ({reference['label']}{size}) — "
                f"the model's input patch as stored in the bundle ({reference['shape'][0]} slices "
                f"{reference['spacing'][0]:g} mm apart, {reference['spacing'][1]:g} mm pixels, the model's window); "
                "its full scan is not part of this database.")
        c2.button("◀ Back to this case", key="ref_back", on_click=similar.close)
        spec = {"case": {"title": reference["case_id"]}, "volume": {"id": reference["id"], "shape": reference["shape"],
                "spacing": reference["spacing"]}, "window": {"width": 255.0, "level": 127.5},
                "presets": [{"key": "1", "name": "model window", "width": 255.0, "level": 127.5}],
                "init": {"token": f"ref-{reference['id']}", "zyx": [v // 2 for v in reference["shape"]], "layout": "3up"},
                "nodules": [], "interpolated": [], "overlays": {}}
        reading_view(key=VIEW_KEY, case_id=f"reference:{reference['id']}", spec=spec,
                     payloads={"volume": (reference["id"], reference["make"])})
        return
    value = st.session_state.get(VIEW_KEY)
    state = view_state(value, str(pid))
    if state is not None:
        auth.touch()
        if time.time() - st.session_state.get(RENEW_KEY, 0.0) > RENEW_EVERY_S:
            navigation.claim(cfg.db, pid, identity, reviewer)
            st.session_state[RENEW_KEY] = time.time()
    navigation.sync_url(pid, state)
    spec, payloads = scan_spec(cfg, pred, vol, overlay)
    interp = spec["interpolated"]
    if interp:
        st.warning(f"{len(interp)} of {vol.shape[0]} slices were interpolated or filled, not acquired "
                   f"(axial slices {_ranges([z + 1 for z in interp])}, numbered from 1 as in the views); they are "
                   "marked amber in the views. "
                   + (vol.meta.get("resampled") or ""))
    elif vol.meta.get("resampled"):
        st.warning(f"This scan was resampled when it was read: {vol.meta['resampled']}.")
    reading_view(key=VIEW_KEY, case_id=str(pid), spec=spec, payloads=payloads)


def scan_spec(cfg: Any, pred: dict[str, Any], vol: Volume, overlay: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The component's description of this case and the payload makers (called only when the page needs them)."""
    pid = int(pred["prediction_id"])
    grid = P.Grid.of(vol)
    uid = pred["series_uid"]
    vid = _short_id(uid, resources.VOLUME_PARAMS, vol.shape)
    init = navigation.case_init(pid)
    nods = nodules_of(cfg, vol, pred) if pred.get("x_mm") is not None else []
    interp = interpolated_slices(vol)
    pre = presets(vol.meta)
    window = {"width": pre[0]["width"], "level": pre[0]["level"]}
    wanted = init.get("zyx") or [None, None, None]
    zyx = [int(np.clip(c if v is None else v, 0, n - 1)) for v, c, n in zip(wanted, _centre(vol, pred), vol.shape, strict=True)]
    spec: dict[str, Any] = {
        "case": {"title": f"case {pid}"},
        "volume": {"id": vid, "shape": list(vol.shape), "spacing": list(vol.spacing)},
        "window": window,
        "presets": pre,
        "init": {"token": init["token"], "zyx": zyx, "window": init.get("window"), "layout": init.get("layout", "3up")},
        "nodules": [{k: n[k] for k in ("name", "title", "zyx", "current")} for n in nods],
        "interpolated": interp,
        "overlays": {},
    }
    db, cache = str(cfg.db), str(cfg.cache_root)
    payloads: dict[str, Any] = {"volume": (vid, lambda: resources.scan_bytes(db, cache, uid))}
    if nods:
        nid = _short_id("nodules", vid, [(n["id"], n["zyx"], n["diameter_mm"], n["current"]) for n in nods])
        marks = [P.Nodule(tuple(n["zyx"]), n["diameter_mm"], n["current"]) for n in nods]
        spec["overlays"]["nodules"] = {"id": nid}
        payloads["nodules"] = (nid, lambda: P.nodule_overlay(marks, grid, vol.shape))
    if interp:
        mid = _short_id("marks", vid, interp)
        spec["overlays"]["marks"] = {"id": mid}
        payloads["marks"] = (mid, lambda: P.slice_marks(interp, grid, vol.shape))
    if overlay is not None:
        hid = _short_id("heat", vid, overlay["key"])
        spec["overlays"]["heat"] = {"id": hid, "opacity": overlay["opacity"], "cal_min": 0.02, "cal_max": 1.0,
                                    "label": overlay["title"]}
        payloads["heat"] = (hid, lambda: P.heat_overlay(overlay["array"], overlay["offset"], grid, overlay["scale"]))
    return spec, payloads


def _ranges(values: list[int]) -> str:
    """[3, 4, 5, 9] -> '3–5, 9'."""
    out, start, prev = [], None, None
    for v in [*values, None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            out.append(f"{start}–{prev}" if prev != start else f"{start}")
        start = prev = v
    return ", ".join(out)
