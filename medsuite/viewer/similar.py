"""Similar cases: the reference cases nearest to this one in the model's feature space, shown beside the query
at the same window and millimetre scale, each with its id, diameter and label, its rank and how close it is
compared with the reference cases' own nearest neighbours; the base rate next to "k of n malignant".

Thumbnails are inline images (data URIs in the page), never URLs served by the app.
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


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 greyscale image as an inline PNG (no file, no URL)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def summary(labels: Sequence[str], positive: str, base_rate: float | None) -> str:
    """E.g. '7 of 10 similar cases were malignant (31% of all reference cases are)'."""
    n_pos = sum(str(v) == positive for v in labels)
    base = "" if base_rate is None else f" ({base_rate:.0%} of all reference cases are)"
    return f"{n_pos} of {len(labels)} similar cases were {positive}{base}"


def _card(uri: str | None, lines: list[str], accent: str, width: int) -> str:
    img = (f'<img src="{uri}" width="{width}" height="{width}" style="image-rendering:auto;display:block;border-radius:3px">'
           if uri else f'<div style="width:{width}px;height:{width}px;background:#222;color:#999;display:flex;'
           'align-items:center;justify-content:center;font-size:12px">no picture</div>')
    text = "".join(f'<div style="font-size:12px;line-height:1.25;white-space:nowrap;overflow:hidden;'
                   f'text-overflow:ellipsis">{line}</div>' for line in lines)
    return (f'<div style="border:2px solid {accent};border-radius:5px;padding:3px;width:{width + 6}px;'
            f'background:#111">{img}{text}</div>')


def section(cfg: Any, pred: dict[str, Any], bpath: str | None, bundle: Any, volume: Any) -> None:
    """The similar-cases section under the reading view."""
    from medsuite.viewer import resources

    index = resources.case_index(bpath) if bundle is not None else None
    with st.expander("Similar cases", expanded=index is not None):
        if index is None:
            st.caption("No similar-case index: the bundle is missing or has none.")
            return
        k = st.segmented_control("How many", K_CHOICES, default=10, key="sim_k") or 10
        center = None if pred.get("x_mm") is None else (pred["x_mm"], pred["y_mm"], pred["z_mm"])
        res = neighbours(str(bpath), int(pred["prediction_id"]), int(k), bundle, index, volume, center)
        positive = _positive(bundle)
        st.markdown(f"**{summary([c['label'] for c in res['cases']], positive, res['base_rate'])}**")
        cards = [_card(res["query_uri"], ["<b>this case</b>", html.escape(res["query_caption"])], "#3d8fd1", 120)]
        for c in res["cases"]:
            accent = "#d9534f" if c["label"] == positive else "#5cb85c"
            cards.append(_card(c["uri"], [f"#{c['rank']} · <b>{html.escape(c['label'])}</b>", html.escape(c["case_id"]),
                                          html.escape(c["detail"])], accent, 120))
        st.html('<div style="display:flex;flex-wrap:wrap;gap:8px">' + "".join(cards) + "</div>")
        st.caption(res["note"])


@st.cache_data(max_entries=256, show_spinner="Finding similar cases …")
def neighbours(bundle_path: str, prediction_id: int, k: int, _bundle: Any, _index: Any, _volume: Any,
               center: tuple[float, float, float] | None) -> dict[str, Any]:
    """Top-``k`` reference cases of this prediction (cached per bundle, prediction and k)."""
    from medsuite.learn.predict import Predictor

    predictor = Predictor.from_bundle(_bundle)
    x = np.asarray(_bundle.block.sample(_volume, None if center is None else np.asarray(center)), dtype=np.float32)
    emb = predictor.embed(x[None])  # the embedding the bundle's case index was built with
    rows, sims = _index.query_rows(emb, k)
    labels = [_label(_index.labels[int(r)], _bundle.labels) for r in range(len(_index))]
    positive = _positive(_bundle)
    base = sum(v == positive for v in labels) / len(labels) if labels else None
    cases = []
    for rank, (r, s) in enumerate(zip(rows[0], sims[0], strict=True), start=1):
        thumb = None if _index.thumbnails is None else np.asarray(_index.thumbnails[int(r)])
        cases.append({"rank": rank, "case_id": _index.case_ids[int(r)], "label": labels[int(r)],
                      "similarity": float(s), "detail": f"cosine {float(s):.2f}",
                      "uri": png_data_uri(thumb) if thumb is not None else None})
    from medsuite.interpret.index import thumbnail

    return {"cases": cases, "base_rate": base, "query_uri": png_data_uri(thumbnail(x)),
            "query_caption": f"score {float(0):.2f}" if False else "query",
            "note": "Similarity is the cosine of the model's features."}


def _positive(bundle: Any) -> str:
    """The bundle's positive class as its predictor names it (multi-class: the last label)."""
    from medsuite.learn.predict import Predictor

    return str(Predictor.from_bundle(bundle).positive or bundle.labels[-1])


def _label(value: Any, labels: Sequence[str]) -> str:
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(labels):
        return str(labels[int(value)])
    return str(value)
