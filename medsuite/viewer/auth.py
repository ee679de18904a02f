"""The login gate: nothing of the app renders before it passes. OIDC through Streamlit's ``st.login`` (secrets.toml
``[auth]``), or a local users file of salted scrypt hashes, or (loopback only) no login with a typed name.
An idle session is logged out after ``idle_minutes``.

Local log-ins are throttled (`medsuite.records.access.login_wait_s`): after 5 failures for one user name within
15 minutes that name is locked for 15 minutes (the right password is refused too), and 20 failures from one
client address lock that address. Every failure, unknown user name and refusal is written to the audit trail
(unknown names as a hash, never as typed: it may be a password typed into the wrong field)."""

from __future__ import annotations

import time
from contextlib import closing
from typing import Any

import streamlit as st

from medsuite.records import access, reviews
from medsuite.viewer.resources import connect

SESSION_USER = "viewer_user"
SESSION_SEEN = "viewer_last_seen"


def _audit(cfg: Any, actor: str, action: str, detail: str = "") -> None:
    with closing(connect(cfg.db)) as conn:
        reviews.append_audit(conn, actor, action, detail=detail)


def _client() -> str:
    """The client's address as the server sees it (a reverse proxy's address when behind one)."""
    try:
        return str(st.context.ip_address or "unknown")
    except Exception:  # noqa: BLE001 - outside a browser session (tests) there is no address
        return "unknown"


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
        _try_login(cfg, users, name.strip(), password)
    st.stop()


def _try_login(cfg: Any, users: dict[str, Any], name: str, password: str) -> None:
    """Check one log-in attempt against the throttle and the users file; audit every outcome."""
    client, now = _client(), time.time()
    known = name in users
    actor = name if known else "(unknown user)"
    who = "" if known else f"user name not in the users file (sha256 {access.name_key(name)[:12]}); "
    with closing(connect(cfg.db)) as conn:
        wait = access.login_wait_s(conn, name, client, now=now)
        if wait > 0:
            reviews.append_audit(conn, actor, "login_refused", detail=f"{who}locked after repeated failures; "
                                 f"{wait / 60:.0f} min left (client {client})")
            st.error(f"Too many failed log-ins. Try again in {max(1, round(wait / 60))} minutes, or ask your administrator.")
            return
        if access.verify_password(users, name, password):
            access.clear_login_failures(conn, name)
            st.session_state[SESSION_USER] = name
            st.session_state[SESSION_SEEN] = now
            reviews.append_audit(conn, name, "login", detail="local users file")
            st.rerun()
        access.record_login_failure(conn, name, client, now=now)
        reviews.append_audit(conn, actor, "login_failed", detail=f"{who or 'wrong password; '}client {client}")
        if access.login_wait_s(conn, name, client, now=now) > 0:
            reviews.append_audit(conn, actor, "login_locked", detail=f"{who}{access.LOCK_AFTER} failures: locked for "
                                 f"{access.LOCK_S // 60} min (client {client})")
    st.error("Unknown user name or wrong password.")


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
    """A button that ends the session (and the OIDC login)."""
    if st.button("Log out", key="logout"):
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
    """Mark activity (reading in the browser, reported by the reading view, counts as use)."""
    if SESSION_SEEN in st.session_state:
        st.session_state[SESSION_SEEN] = time.time()
