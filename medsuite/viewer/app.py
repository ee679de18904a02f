"""medsuite clinician viewer (Streamlit): worklist, case view with linked planes, prediction, why, similar cases,
review and a hash-chained audit trail.

Run: ``medsuite view --db DIR/medsuite.db``, which starts ``streamlit run`` on this file. Without authentication it
serves loopback only.
"""

from __future__ import annotations

import sys
from contextlib import closing

import streamlit as st

from medsuite.records import access, reviews, store
from medsuite.viewer import analysis, auth, case_view, resources, review_panel, worklist
from medsuite.viewer.config import ViewerConfig, parse

ANON = "anonymous@loopback"


def _config() -> ViewerConfig:
    try:
        return parse(sys.argv[1:])
    except SystemExit:
        st.error("medsuite viewer: bad options. Usage: medsuite view --db DIR/medsuite.db "
                 "[--bundle B] [--auth-users FILE | --oidc] [--idle-minutes M] [--cache DIR]")
        st.stop()


def _check_setup(cfg: ViewerConfig) -> None:
    """Refuse to serve without authentication on a non-loopback address, and check the database opens."""
    address = st.get_option("server.address") or "0.0.0.0 (all interfaces)"
    try:
        access.check_binding(address.split(" ")[0], auth_configured=cfg.auth_mode != "none")
        with closing(store.connect(cfg.db, create=False)):
            pass
    except (access.UsersError, store.StoreError) as exc:
        st.error(str(exc))
        st.stop()


def audit_page(cfg: ViewerConfig) -> None:
    st.header("Audit trail")
    with closing(resources.connect(cfg.db)) as conn:
        check = reviews.verify_records(conn)  # chain + every review's content hash + the anchored head
        rows = reviews.audit_rows(conn, limit=500)
    details = "\n".join(f"- {p}" for p in check.problems + check.notes)
    show = st.success if check.ok else st.warning if check.status == "unanchored" else st.error
    show(check.summary + (f"\n\n{details}" if details else ""))
    st.dataframe(rows, hide_index=True, width="stretch")


def case_page(cfg: ViewerConfig, pid: int, identity: str | None) -> None:
    actor = identity or st.session_state.get(review_panel.NAME_KEY, "").strip() or ANON
    with closing(resources.connect(cfg.db)) as conn:
        try:
            pred = reviews.prediction(conn, pid)
        except reviews.ReviewError as exc:
            st.error(str(exc))
            return
        opened = st.session_state.setdefault("opened", set())
        if pid not in opened:
            reviews.append_audit(conn, actor, "open", series_uid=pred["series_uid"], nodule_id=pred["nodule_id"],
                                 detail=f"prediction {pid}")
            opened.add(pid)
        nxt = reviews.next_unreviewed(conn, after=pid)
    b1, b2, b3 = st.columns([2, 2, 6])
    b1.button("◀ Worklist", key="back", on_click=worklist.open_case, args=(None,))
    b2.button("Next unreviewed ▶", key="case_next", disabled=nxt is None, on_click=worklist.open_case, args=(nxt,),
              shortcut="n")
    b3.subheader(f"{pred['description'] or 'Series'} · …{pred['series_uid'][-16:]}"
                 + (f" · nodule {pred['nodule_id']}" if pred["nodule_id"] else ""))
    try:
        vol = resources.volume(str(cfg.db), str(cfg.cache_root), pred["series_uid"])
    except Exception as exc:  # noqa: BLE001 - any read failure is shown to the user, the app keeps running
        st.error(f"Cannot open series …{pred['series_uid'][-16:]}: {exc}")
        return
    bpath = resources.bundle_path_for(cfg.bundle, pred)
    bundle = info = None
    if bpath:
        try:
            bundle = resources.bundle(bpath)
            info = resources.model_info(bundle)
        except Exception as exc:  # noqa: BLE001
            st.warning(f"Model bundle could not be loaded: {exc}")
    positive = bundle.labels[-1] if bundle is not None else None
    nod = resources.nodule_index(vol, pred)
    center = None if pred.get("x_mm") is None else (pred["x_mm"], pred["y_mm"], pred["z_mm"])
    left, right = st.columns([3, 1])
    with right:
        analysis.prediction_panel(pred, info, positive)
        with st.expander("Why (attributions)", expanded=False):
            method, opacity = analysis.why_controls(pid, bundle is not None)
    overlay = None
    if method and bundle is not None:
        try:
            overlay = dict(analysis.attribution(bpath, pid, method, bundle, vol, center), opacity=opacity)
        except Exception as exc:  # noqa: BLE001
            right.error(f"Attribution failed: {exc}")
        else:
            with right:
                analysis.overlay_legend(overlay, opacity)
    ctx = {"volume": vol, "prediction_id": pid, "nodule_zyx": nod, "radius_mm": (pred.get("diameter_mm") or 0) / 2 or None,
           "cache_key": f"{pred['series_uid']}:{resources.VOLUME_PARAMS}", "overlay": overlay}
    with left:
        case_view.viewer(ctx)
    with right:
        st.divider()
        review_panel.render(cfg, pred, identity, info)
    index = resources.case_index(bpath) if bundle is not None else None
    with st.expander("Similar cases", expanded=index is not None):
        if index is None:
            st.caption("This bundle has no similar-case index.")
        else:
            k = st.select_slider("How many", [5, 10, 20], value=10, key="sim_k")
            cases = analysis.similar(bpath, pid, k, bundle, index, vol, center)
            analysis.similar_panel(cases, positive)


def main() -> None:
    st.set_page_config(page_title="medsuite viewer", layout="wide")
    cfg = _config()
    _check_setup(cfg)
    identity = auth.gate(cfg)  # nothing below renders before login
    auth.idle_watch(cfg)
    with st.sidebar:
        st.title("medsuite viewer")
        if identity:
            st.write(f"Logged in as **{identity}**")
            auth.logout_button(cfg)
        else:
            st.text_input("Your name (recorded with reviews)", key=review_panel.NAME_KEY)
            st.caption("No login configured: serving this computer only (loopback).")
        page = st.radio("Page", ["Cases", "Audit trail"], key="page")
    if page == "Audit trail":
        audit_page(cfg)
        return
    pid = st.session_state.get(worklist.CASE_KEY)
    if pid is None:
        st.header("Worklist")
        worklist.render(cfg)
    else:
        case_page(cfg, int(pid), identity)


# Streamlit (and AppTest) run this file as __main__; a process that merely re-imports it (a multiprocessing
# child started from the same interpreter) must not start the app.
if __name__ == "__main__":
    main()
