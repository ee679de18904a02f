"""The worklist: scored predictions with their review status, filters (status, score range, run), sorting by
score and a one-click "next unreviewed"."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import pandas as pd
import streamlit as st

from medsuite.records import reviews

CASE_KEY = "prediction_id"
COLUMNS = ["status", "probability", "label", "series_uid", "nodule_id", "diameter_mm", "description", "run_id",
           "last_reviewer", "reviewed_at", "prediction_id"]


def open_case(prediction_id: int | None) -> None:
    st.session_state[CASE_KEY] = None if prediction_id is None else int(prediction_id)


def _label(row: pd.Series) -> str:
    where = f"{row['series_uid'][-12:]}" + (f" / {row['nodule_id']}" if row["nodule_id"] else "")
    return f"{row['probability']:.3f} · {where} · {row['status']}"


def render(cfg: Any) -> None:
    """The worklist in the sidebar-free main area; sets ``st.session_state.prediction_id`` when a case is chosen."""
    from resources import connect

    with closing(connect(cfg.db)) as conn:
        runs = reviews.runs(conn)
        c1, c2, c3, c4 = st.columns([3, 3, 3, 2])
        statuses = c1.multiselect("Review status", list(reviews.STATUSES), default=list(reviews.STATUSES), key="wl_status")
        lo, hi = c2.slider("Score range", 0.0, 1.0, (0.0, 1.0), step=0.01, key="wl_score")
        run_ids = c3.multiselect("Run", list(runs["run_id"]), default=[], key="wl_runs",
                                 help="empty = all runs")
        order = c4.radio("Sort by score", ["highest first", "lowest first"], key="wl_order")
        table = reviews.worklist(conn, statuses=statuses, min_score=lo, max_score=hi, run_ids=run_ids or None,
                                 descending=order == "highest first")
        nxt = reviews.next_unreviewed(conn, after=st.session_state.get(CASE_KEY), run_ids=run_ids or None)
    b1, b2 = st.columns([2, 8])
    b1.button("Next unreviewed ▶", type="primary", disabled=nxt is None, key="wl_next", shortcut="n",
              on_click=open_case, args=(nxt,))
    total = len(table)
    b2.caption(f"{total} predictions shown · {int((table['status'] == 'unreviewed').sum())} unreviewed"
               + ("" if nxt is not None else " · all reviewed"))
    def _from_table() -> None:
        rows = st.session_state["wl_table"].selection.rows
        if rows:
            open_case(int(table.iloc[rows[0]]["prediction_id"]))

    def _from_pick() -> None:
        picked = st.session_state.get("wl_pick")
        if picked is not None:
            open_case(int(picked.rsplit("#", 1)[1]))

    st.dataframe(table[COLUMNS], hide_index=True, width="stretch", on_select=_from_table,
                 selection_mode="single-row", key="wl_table",
                 column_config={"probability": st.column_config.ProgressColumn(
                     "score", min_value=0.0, max_value=1.0, format="%.3f")})
    if total:
        labels = [f"{_label(r)} · #{int(r['prediction_id'])}" for _, r in table.iterrows()]
        st.selectbox("Open case", labels, index=None, key="wl_pick",
                     placeholder="choose a prediction", on_change=_from_pick)
