"""medsuite clinician viewer (Streamlit): worklist, the reading view (WebGL, in the browser), the score with its
interval, why (attributions), similar cases, reviews, flags and a hash-chained audit trail.

Run: ``medsuite view --db DIR/medsuite.db``, which starts ``streamlit run`` on this file (dark theme, wide layout).
Without authentication it serves loopback only.
"""

from __future__ import annotations

import sys
from contextlib import closing
from pathlib import Path

import streamlit as st

from medsuite.records import access, reviews, store
from medsuite.viewer import auth, case_page, navigation, worklist
from medsuite.viewer.config import ViewerConfig, parse
from medsuite.viewer.resources import connect

PAGES = ("Cases", "Audit trail")


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
    with closing(connect(cfg.db)) as conn:
        check = reviews.verify_records(conn)  # chain + every review's content hash + the anchored head
        rows = reviews.audit_rows(conn, limit=500)
    text = "\n".join([check.summary, "", *(f"- {p}" for p in check.problems + check.notes)]).strip()
    if check.anchor:  # the reader sees the anchor's file name, never the server's folders
        text = text.replace(str(check.anchor), Path(check.anchor).name)
    show = st.success if check.ok else st.warning if check.status == "unanchored" else st.error
    show(text)
    st.dataframe(rows, hide_index=True, width="stretch")


def top_bar(cfg: ViewerConfig, identity: str | None) -> str:
    """Title, page switch and the logged-in user (no sidebar: the reading view gets the whole width)."""
    c1, c2, c3 = st.columns([2, 5, 3], vertical_alignment="center")
    c1.markdown("**medsuite viewer**")
    page = c2.radio("Page", PAGES, key="page", horizontal=True, label_visibility="collapsed")
    with c3:
        if identity:
            u1, u2 = st.columns([3, 1], vertical_alignment="center")
            u1.caption(f"Logged in as **{identity}**")
            with u2:
                auth.logout_button(cfg)
        else:
            st.caption("No login configured: serving this computer only (loopback).")
    return page


def main() -> None:
    st.set_page_config(page_title="medsuite viewer", layout="wide", initial_sidebar_state="collapsed")
    st.markdown("<style>.block-container{padding-top:0.6rem;padding-bottom:0.5rem;max-width:100%}</style>",
                unsafe_allow_html=True)
    cfg = _config()
    _check_setup(cfg)
    identity = auth.gate(cfg)  # nothing below renders before login
    auth.idle_watch(cfg)
    page = top_bar(cfg, identity)
    if page == "Audit trail":
        audit_page(cfg)
        return
    pid = navigation.current_case()
    if pid is None:
        navigation.sync_url(None, None)
        worklist.render(cfg, identity)
    else:
        case_page.render(cfg, pid, identity)


# Streamlit (and AppTest) run this file as __main__; a process that merely re-imports it (a multiprocessing
# child started from the same interpreter) must not start the app.
if __name__ == "__main__":
    main()
