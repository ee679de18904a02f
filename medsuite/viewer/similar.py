"""Similar cases: the reference cases nearest to this one in the model's feature space (the bundle's predictor,
centred features, see `medsuite.interpret.index`), shown beside the query at the same window and millimetre
scale (the model's own input, first window), each with its id, diameter and label, its rank and how close it is
compared with the reference cases' own nearest neighbours; the base rate next to "k of n malignant". A click
opens the neighbour's input patch in the reading view.

Pictures are inline images (data URIs in the page), never URLs served by the app.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import streamlit as st

K_CHOICES = (5, 10, 20)
DEFAULT_K = 10
OPEN_KEY = "open_neighbour"
PER_ROW = 7
SCALE_MM = 10.0


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 greyscale image as an inline PNG (no file, no URL)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def summary(labels: Sequence[str], positive: str, base_rate: float | None) -> str:
    """E.g. '7 of 10 similar cases were malignant (base rate: 31% of the 744 reference cases)'."""
    n_pos = sum(str(v) == positive for v in labels)
    return f"{n_pos} of {len(labels)} similar cases were {positive}" + (
        "" if base_rate is None else f" — base rate: {base_rate:.0%} of all reference cases are")


def label_of(value: Any, labels: Sequence[str]) -> str:
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(labels):
        return str(labels[int(value)])
    return str(value)


def field_mm(block_spec: dict[str, Any]) -> float | None:
    """Width in mm of the model's input plane (what a thumbnail shows), when the block says."""
    size, px = block_spec.get("size"), block_spec.get("pixel_mm")
    if isinstance(size, (list, tuple)):
        size = size[-1]
    if isinstance(px, (list, tuple)):
        px = px[-1]
    if px is None:
        sp = block_spec.get("spacing_mm")
        px = sp[-1] if isinstance(sp, (list, tuple)) else sp
    return float(size) * float(px) if size and px else None


def neighbours(predictor: Any, block: Any, index: Any, volume: Any, center: Any, k: int,
               labels: Sequence[str], positive: str) -> dict[str, Any]:
    """Top-``k`` reference cases of the case at ``center``: rank, id, label, diameter, similarity and closeness
    percentile, pictures (query and neighbours alike), the base rate."""
    from medsuite.interpret.index import thumbnail

    x = np.asarray(block.sample(volume, None if center is None else np.asarray(center)), dtype=np.float32)
    emb = predictor.embed(x[None])
    rows, sims = index.query_rows(emb, k)
    names = [label_of(v, labels) for v in index.labels]
    base = sum(v == positive for v in names) / len(names) if names else None
    fixed = index.meta.get("thumbnail_scale") == "fixed"
    size = index.thumbnails.shape[-1] if index.thumbnails is not None else 64
    query = thumbnail(x, size, preview=block.preview, value_range=(0.0, 1.0) if fixed else None)
    cases = []
    for rank, (r, s) in enumerate(zip(rows[0], sims[0], strict=True), start=1):
        r = int(r)
        d = index.info[r].get("diameter_mm") if index.info else None
        cases.append({"rank": rank, "row": r, "case_id": index.case_ids[r], "label": names[r], "similarity": float(s),
                      "closeness": index.closeness_percentile(float(s)), "diameter_mm": d,
                      "thumbnail": None if index.thumbnails is None else np.asarray(index.thumbnails[r])})
    return {"cases": cases, "base_rate": base, "n_reference": len(index), "query": query, "fixed_scale": fixed,
            "openable": index.stacks is not None}


@st.cache_data(max_entries=256, show_spinner=False)  # the page shows a spinner; the background warmer has no page
def cached_neighbours(bundle_path: str, prediction_id: int, k: int, _predictor: Any, _block: Any, _index: Any,
                      _volume: Any, center: tuple[float, float, float] | None, _labels: Sequence[str],
                      positive: str) -> dict[str, Any]:
    return neighbours(_predictor, _block, _index, _volume, center, k, _labels, positive)


def _card(thumb: np.ndarray | None, lines: list[str], accent: str, width: int, bar_px: float | None) -> str:
    if thumb is None:
        img = (f'<div style="width:{width}px;height:{width}px;background:#222;color:#999;display:flex;'
               'align-items:center;justify-content:center;font-size:12px">no picture</div>')
    else:
        bar = (f'<div style="position:absolute;right:6px;bottom:6px;width:{bar_px:.1f}px;border-top:2px solid #fff;'
               f'box-shadow:0 0 2px #000" title="{SCALE_MM:g} mm"></div>' if bar_px else "")
        img = (f'<div style="position:relative;width:{width}px;height:{width}px">'
               f'<img src="{png_data_uri(thumb)}" width="{width}" height="{width}" style="display:block;border-radius:3px">'
               f"{bar}</div>")
    text = "".join(f'<div style="font-size:12px;line-height:1.3;white-space:nowrap;overflow:hidden;'
                   f'text-overflow:ellipsis;color:#ddd">{line}</div>' for line in lines)
    return (f'<div style="border:2px solid {accent};border-radius:5px;padding:3px;width:{width + 6}px;'
            f'background:#111">{img}{text}</div>')


def section(cfg: Any, pred: dict[str, Any], bpath: str | None, bundle: Any, volume: Any) -> None:
    """The similar-cases section under the reading view."""
    from medsuite.viewer import resources

    index = resources.case_index(bpath) if bundle is not None else None
    st.markdown("##### Similar cases")
    if index is None:
        st.caption("No similar-case index: the bundle is missing or has none.")
        return
    pid = int(pred["prediction_id"])
    predictor = resources.predictor(bpath)
    positive = str(predictor.positive or bundle.labels[-1])
    c1, c2 = st.columns([1, 5], vertical_alignment="center")
    k = c1.segmented_control("How many", K_CHOICES, default=DEFAULT_K, key="sim_k", label_visibility="collapsed") or DEFAULT_K
    center = None if pred.get("x_mm") is None else (pred["x_mm"], pred["y_mm"], pred["z_mm"])
    with st.spinner("Finding similar cases …"):
        res = cached_neighbours(str(bpath), pid, int(k), predictor, bundle.block, index, volume, center,
                                list(predictor.labels), positive)
    c2.markdown(f"**{summary([c['label'] for c in res['cases']], positive, res['base_rate'])}** "
                f"({res['n_reference']} reference cases)")
    width = 132
    fmm = field_mm(bundle.block.spec())
    bar_px = width * SCALE_MM / fmm if fmm else None
    cells = [("query", _card(res["query"], ["<b>this case</b>", f"score {float(pred['probability']):.2f}",
                                             html.escape(f"{pred['diameter_mm']:.1f} mm" if pred.get("diameter_mm") else "")],
                             "#3d8fd1", width, bar_px))]
    for c in res["cases"]:
        accent = "#d9534f" if c["label"] == positive else "#5cb85c"
        size = f"{c['diameter_mm']:.1f} mm" if c.get("diameter_mm") else "size not recorded"
        close = (f"closer than {c['closeness']:.0f}% of pairs" if np.isfinite(c["closeness"]) else "")
        cells.append((c, _card(c["thumbnail"], [f"#{c['rank']} · <b>{html.escape(c['label'])}</b> · {size}",
                                                html.escape(c["case_id"]), close], accent, width, bar_px)))
    for start in range(0, len(cells), PER_ROW):
        cols = st.columns(PER_ROW)
        for col, (case, card) in zip(cols, cells[start:start + PER_ROW], strict=False):
            with col:
                st.html(card)
                if case != "query" and res["openable"]:
                    st.button("Open", key=f"sim_open_{case['row']}", help="show this reference case's input patch "
                              "in the viewer", on_click=_open, args=(pid, case))
    window = index.meta.get("window")
    st.caption(
        ("Pictures: the model's input around each nodule, centre plane, "
         + (f"window {window[0] if isinstance(window, list) else window}" if window else "first window")
         + (f", {fmm:g} mm across (bar: {SCALE_MM:g} mm); the same contrast and scale for every case. " if fmm else ". ")
         if res["fixed_scale"] else
         "This bundle's index has per-picture contrast (built before fixed-window thumbnails): compare shapes, not "
         "brightness. ")
        + "Similarity: cosine of the model's centred features; 'closer than X% of pairs' compares it with each "
          "reference case's similarity to its own nearest neighbour (50% = a typical nearest neighbour).")


def _open(pid: int, case: dict[str, Any]) -> None:
    st.session_state[OPEN_KEY] = {"pid": pid, "row": case["row"], "case_id": case["case_id"], "label": case["label"],
                                  "diameter_mm": case.get("diameter_mm"), "rank": case["rank"]}


def opened(pid: int) -> dict[str, Any] | None:
    """The reference case the reader opened from this case's similar cases (None: the case itself)."""
    o = st.session_state.get(OPEN_KEY)
    return o if o and o.get("pid") == pid else None


def close() -> None:
    st.session_state.pop(OPEN_KEY, None)
