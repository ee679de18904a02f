"""The review form (agree / disagree / uncertain, a note, the reviewer) and the prediction's review history."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import streamlit as st

from medsuite.records import reviews

VERDICT_LABELS = {"agree": "Agree", "disagree": "Disagree", "uncertain": "Uncertain"}
NAME_KEY = "reviewer_name"


def render(cfg: Any, pred: dict[str, Any], identity: str | None, info: dict[str, str] | None) -> None:
    """Save a review in one transaction (with time, model version and bundle sha256); show every earlier one."""
    from resources import connect

    pid = int(pred["prediction_id"])
    with st.form(f"review_{pid}", clear_on_submit=True):
        verdict = st.radio("Your verdict", list(reviews.VERDICTS), format_func=VERDICT_LABELS.get, horizontal=True,
                           index=None, key=f"verdict_{pid}")
        note = st.text_area("Note (optional)", max_chars=reviews.MAX_NOTE, key=f"note_{pid}")
        if identity:
            st.caption(f"Reviewing as {identity}")
        submitted = st.form_submit_button("Save review", type="primary", key=f"save_{pid}")
    if submitted:
        reviewer = identity or st.session_state.get(NAME_KEY, "").strip()
        if not reviewer:
            st.error("Enter your name in the sidebar before saving a review.")
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
        st.write("History (oldest first; the last one is the current status)")
        st.dataframe(history[["created_at", "reviewer", "verdict", "note", "model_version"]], hide_index=True,
                     width="stretch", key=f"history_{pid}")
