"""The login gate: nothing of the app renders before it passes. OIDC through Streamlit's ``st.login`` (secrets.toml
``[auth]``), or a local users file of salted scrypt hashes, or (loopback only) no login with a typed name.
An idle session is logged out after ``idle_minutes``."""

from __future__ import annotations

import time
from contextlib import closing
from typing import Any

import streamlit as st

from medsuite.records import access, reviews

SESSION_USER = "viewer_user"
SESSION_SEEN = "viewer_last_seen"


def _audit(cfg: Any, actor: str, action: str, detail: str = "") -> None:
    from resources import connect

    with closing(connect(cfg.db)) as conn:
        reviews.append_audit(conn, actor, action, detail=detail)


def _logout(cfg: Any, reason: str) -> None:
    user = st.session_state.pop(SESSION_USER, None)
    st.session_state.pop(SESSION_SEEN, None)
    if user:
        _audit(cfg, user, "logout", reason)


def _idle_check(cfg: Any) -> bool:
    """True when the session was idle too long (and is now logged out)."""
    seen = st.session_state.get(SESSION_SEEN)
    if seen is not None and time.time() - seen > cfg.idle_minutes * 60:
        _logout(cfg, f"idle for more than {cfg.idle_minutes:g} min")
        if cfg.auth_mode == "oidc":
            st.logout()
        return True
    st.session_state[SESSION_SEEN] = time.time()
    return False


def _local_login(cfg: Any) -> None:
    st.title("medsuite viewer")
    with st.form("login"):
        name = st.text_input("User name")
        password = st.text_input("Password", type="password")
        ok = st.form_submit_button("Log in")
    if ok:
        try:
            users = access.load_users(cfg.auth_users)
        except access.UsersError as exc:
            st.error(str(exc))
            st.stop()
        if access.verify_password(users, name, password):
            st.session_state[SESSION_USER] = name
            st.session_state[SESSION_SEEN] = time.time()
            _audit(cfg, name, "login", "local users file")
            st.rerun()
        st.error("Unknown user name or wrong password.")
    st.stop()


def gate(cfg: Any) -> str | None:
    """Return the logged-in user's identity (None when auth is off); stops the script until login."""
    if cfg.auth_mode == "none":
        return None
    expired = SESSION_USER in st.session_state and _idle_check(cfg)
    if expired:
        st.warning(f"You were logged out after {cfg.idle_minutes:g} minutes without activity.")
    if cfg.auth_mode == "oidc":
        if not st.user.is_logged_in:
            st.title("medsuite viewer")
            st.button("Log in", on_click=st.login)
            st.stop()
        identity = str(st.user.get("email") or st.user.get("name") or st.user.get("sub"))
        if st.session_state.get(SESSION_USER) != identity:
            st.session_state[SESSION_USER] = identity
            st.session_state[SESSION_SEEN] = time.time()
            _audit(cfg, identity, "login", "oidc")
        return identity
    if SESSION_USER not in st.session_state:
        _local_login(cfg)
    return st.session_state[SESSION_USER]


def logout_button(cfg: Any) -> None:
    """A sidebar button that ends the session (and the OIDC login)."""
    if st.sidebar.button("Log out"):
        _logout(cfg, "user")
        if cfg.auth_mode == "oidc":
            st.logout()
        st.rerun()


@st.fragment(run_every=30)
def idle_watch(cfg: Any) -> None:
    """Every 30 s, end an idle session even if the user never clicks again (does not count as activity)."""
    seen = st.session_state.get(SESSION_SEEN)
    if seen is not None and time.time() - seen > cfg.idle_minutes * 60:
        st.rerun(scope="app")


def touch() -> None:
    """Mark activity (slice scrolling inside a fragment counts as use)."""
    if SESSION_SEEN in st.session_state:
        st.session_state[SESSION_SEEN] = time.time()
