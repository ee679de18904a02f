"""The review form (agree / disagree / uncertain, a note, the reviewer), the prediction's review history, and the
flag form (for a case that needs attention, e.g. images missing: a ``flag`` row in the audit trail)."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import streamlit as st

from medsuite.records import reviews
from medsuite.viewer.resources import connect

VERDICT_LABELS = {"agree": "Agree", "disagree": "Disagree", "uncertain": "Uncertain"}
NAME_KEY = "reviewer_name"
FLAG_REASONS = ("images missing or unreadable", "wrong series or wrong nodule position", "image quality", "other")


def _name_field(identity: str | None) -> None:
    if identity:
        st.caption(f"Reviewing as {identity}")
    else:
        st.text_input("Your name (recorded with reviews)", key=NAME_KEY)


def _reviewer(identity: str | None) -> str:
    return identity or str(st.session_state.get(NAME_KEY, "")).strip()


def render(cfg: Any, pred: dict[str, Any], identity: str | None, info: dict[str, str] | None, *,
           with_flag: bool = True) -> None:
    """Save a review in one transaction (with time, model version and bundle sha256); show every earlier one."""
    pid = int(pred["prediction_id"])
    _name_field(identity)
    with st.form(f"review_{pid}", clear_on_submit=True, border=False):
        verdict = st.radio("Your verdict", list(reviews.VERDICTS), format_func=VERDICT_LABELS.get, horizontal=True,
                           index=None, key=f"verdict_{pid}")
        note = st.text_area("Note (optional)", max_chars=reviews.MAX_NOTE, key=f"note_{pid}", height=68)
        submitted = st.form_submit_button("Save review", type="primary", key=f"save_{pid}")
    if submitted:
        reviewer = _reviewer(identity)
        if not reviewer:
            st.error("Enter your name above before saving a review.")
        elif verdict is None:
            st.error("Choose agree, disagree or uncertain.")
        else:
            try:
                with closing(connect(cfg.db)) as conn:
                    rid = reviews.add_review(conn, pid, reviewer=reviewer, verdict=verdict, note=note,
                                             model_name=info["name"] if info else None,
                                             model_version=info["version"] if info else None,
                                             bundle_sha256=info["sha256"] if info else pred["bundle_sha256"])
                st.success(f"Saved review {rid}: {verdict}.")
            except reviews.ReviewError as exc:
                st.error(str(exc))
    with closing(connect(cfg.db)) as conn:
        history = reviews.review_history(conn, pid)
    if history.empty:
        st.caption("No reviews yet.")
    else:
        st.caption("History (oldest first; the last one is the current status)")
        st.dataframe(history[["created_at", "reviewer", "verdict", "note", "model_version"]], hide_index=True,
                     width="stretch", key=f"history_{pid}")
    if with_flag:
        flag_form(cfg, pred, identity)


def flag_form(cfg: Any, pred: dict[str, Any], identity: str | None, *, expanded: bool = False,
              default_reason: str | None = None) -> None:
    """Flag the case for attention: an audited ``flag`` entry with the reason and a note."""
    pid = int(pred["prediction_id"])
    with st.expander("Flag this case", expanded=expanded):
        with st.form(f"flag_{pid}", clear_on_submit=True, border=False):
            reason = st.selectbox("Reason", FLAG_REASONS, key=f"flag_reason_{pid}",
                                  index=FLAG_REASONS.index(default_reason) if default_reason in FLAG_REASONS else 0)
            note = st.text_input("What is wrong (optional)", max_chars=500, key=f"flag_note_{pid}")
            sent = st.form_submit_button("Flag", key=f"flag_save_{pid}")
        if sent:
            reviewer = _reviewer(identity)
            if not reviewer:
                st.error("Enter your name (with the review form) before flagging.")
                return
            detail = f"prediction {pid}: {reason}" + (f" — {note.strip()}" if note.strip() else "")
            with closing(connect(cfg.db)) as conn:
                reviews.append_audit(conn, reviewer, "flag", series_uid=pred["series_uid"], nodule_id=pred["nodule_id"],
                                     detail=detail)
            st.success(f"Flagged: {reason}.")
        with closing(connect(cfg.db)) as conn:
            flags = reviews.audit_rows(conn, series_uid=pred["series_uid"], limit=50)
        flags = flags[(flags["action"] == "flag") & (flags["nodule_id"] == pred["nodule_id"])]
        if not flags.empty:
            st.dataframe(flags[["at", "actor", "detail"]], hide_index=True, width="stretch", key=f"flags_{pid}")
