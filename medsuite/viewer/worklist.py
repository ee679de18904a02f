"""The worklist: scored predictions with their review status, who is on them now (leases) and flags; filters
(status, score range, run), sorting by score and "next unreviewed", which claims the case it opens."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import pandas as pd
import streamlit as st

from medsuite.records import leases, reviews
from medsuite.viewer import navigation
from medsuite.viewer.resources import connect

COLUMNS = ["status", "probability", "label", "in_review_by", "flagged", "series_uid", "nodule_id", "diameter_mm",
           "description", "run_id", "last_reviewer", "reviewed_at", "prediction_id"]


def _label(row: pd.Series) -> str:
    where = f"{row['series_uid'][-12:]}" + (f" / {row['nodule_id']}" if row["nodule_id"] else "")
    return f"{row['probability']:.3f} · {where} · {row['status']}"


def with_leases_and_flags(conn: Any, table: pd.DataFrame, holder: str) -> pd.DataFrame:
    """Add ``in_review_by`` (another reviewer's lease in force) and ``flagged`` (flags in the audit trail)."""
    held = leases.active(conn)
    held = {int(r.prediction_id): str(r.reviewer) for r in held.itertuples() if r.holder != holder}
    out = table.copy()
    out["in_review_by"] = [held.get(int(p), "") for p in out["prediction_id"]]
    flags = pd.read_sql_query("SELECT series_uid, nodule_id, COUNT(*) AS n FROM audit WHERE action = 'flag' "
                              "GROUP BY series_uid, nodule_id", conn)
    keyed = {(r.series_uid, r.nodule_id or ""): int(r.n) for r in flags.itertuples()}
    out["flagged"] = [keyed.get((s, n or ""), 0) for s, n in zip(out["series_uid"], out["nodule_id"], strict=True)]
    return out


def render(cfg: Any, identity: str | None) -> None:
    """The worklist; opening a case sets ``st.session_state.prediction_id`` (and the URL)."""
    from medsuite.viewer.case_page import reviewer_name

    reviewer = reviewer_name(identity)
    holder = navigation.holder(identity)
    with closing(connect(cfg.db)) as conn:
        runs = reviews.runs(conn)
        c1, c2, c3, c4 = st.columns([3, 3, 3, 2])
        statuses = c1.multiselect("Review status", list(reviews.STATUSES), default=list(reviews.STATUSES), key="wl_status")
        lo, hi = c2.slider("Score range", 0.0, 1.0, (0.0, 1.0), step=0.01, key="wl_score")
        run_ids = c3.multiselect("Run", list(runs["run_id"]), default=[], key="wl_runs", help="empty = all runs")
        order = c4.radio("Sort by score", ["highest first", "lowest first"], key="wl_order")
        table = reviews.worklist(conn, statuses=statuses, min_score=lo, max_score=hi, run_ids=run_ids or None,
                                 descending=order == "highest first")
        table = with_leases_and_flags(conn, table, holder)
        free = table[(table["status"] == "unreviewed") & (table["in_review_by"] == "")]
        prefetch_uids = list(dict.fromkeys(free["series_uid"].head(3)))
        first = reviews.prediction(conn, int(free["prediction_id"].iloc[0])) if len(free) else None
    from medsuite.viewer import resources

    resources.prefetch(str(cfg.db), str(cfg.cache_root), prefetch_uids,
                       resources.bundle_path_for(cfg.bundle, first) if first else None)
    b1, b2 = st.columns([2, 8], vertical_alignment="center")
    b1.button("Next unreviewed ▶", type="primary", key="wl_next", shortcut="n",
              help="opens the highest-scoring unreviewed case nobody else is reviewing, and claims it (N)",
              on_click=_next, args=(cfg, identity, reviewer, run_ids or None))
    n_unrev = int((table["status"] == "unreviewed").sum())
    busy = int((table["in_review_by"] != "").sum())
    b2.caption(f"{len(table)} predictions shown · {n_unrev} unreviewed · {busy} being reviewed by others"
               + (" · no free unreviewed case" if st.session_state.get("wl_none") else ""))

    def _from_table() -> None:
        rows = st.session_state["wl_table"].selection.rows
        if rows:
            navigation.open_case(int(table.iloc[rows[0]]["prediction_id"]))

    def _from_pick() -> None:
        picked = st.session_state.get("wl_pick")
        if picked is not None:
            navigation.open_case(int(picked.rsplit("#", 1)[1]))

    st.dataframe(table[COLUMNS], hide_index=True, width="stretch", on_select=_from_table,
                 selection_mode="single-row", key="wl_table", height=min(38 + 35 * max(len(table), 1), 640),
                 column_config={
                     "probability": st.column_config.ProgressColumn("score", min_value=0.0, max_value=1.0, format="%.3f"),
                     "in_review_by": st.column_config.TextColumn("in review by", width="small"),
                     "flagged": st.column_config.NumberColumn("flags", width="small"),
                     "series_uid": st.column_config.TextColumn("series", width="medium"),
                     "diameter_mm": st.column_config.NumberColumn("diameter mm", format="%.1f", width="small"),
                     "prediction_id": st.column_config.NumberColumn("case", width="small"),
                 })
    if len(table):
        labels = [f"{_label(r)} · #{int(r['prediction_id'])}" for _, r in table.iterrows()]
        st.selectbox("Open case", labels, index=None, key="wl_pick", placeholder="choose a prediction",
                     on_change=_from_pick)


def _next(cfg: Any, identity: str | None, reviewer: str, run_ids: list[str] | None) -> None:
    pid = navigation.claim_next(cfg.db, identity, reviewer, after=None, run_ids=run_ids)
    st.session_state["wl_none"] = pid is None
    if pid is not None:
        navigation.open_case(pid)
