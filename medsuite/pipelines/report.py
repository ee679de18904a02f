"""A self-contained HTML report: sections of text, tables and PNG figures written beside `report.html`."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medsuite.io.atomic import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}figcaption{font-size:.85em;color:#555;max-width:520px}
img{max-width:520px;border:1px solid #eee}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "figure"


@dataclass
class Report:
    """Collects sections; `write(folder)` saves `report.html` and its PNGs atomically and returns the path."""

    title: str
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)

    def section(self, heading: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((heading, parts))
        return parts

    def text(self, parts: list[str], text: str, *, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, parts: list[str], frame: pd.DataFrame, *, index: bool = False, float_format: str = "{:.4g}") -> None:
        parts.append(frame.to_html(index=index, escape=True, float_format=float_format.format, border=0, na_rep="–"))

    def figure(self, parts: list[str], name: str, fig: Figure, caption: str = "") -> None:
        key = _slug(name)
        while key in self.figures:
            key += "_"
        self.figures[key] = fig
        parts.append(f'<figure><img src="{key}.png" alt="{html.escape(name)}"><figcaption>{html.escape(caption or name)}</figcaption></figure>')

    def write(self, folder: str | Path) -> Path:
        import matplotlib.pyplot as plt

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for key, fig in self.figures.items():
            with atomic_path(folder / f"{key}.png") as tmp:
                fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
            plt.close(fig)
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        toc = "".join(f'<li><a href="#{_slug(h)}">{html.escape(h)}</a></li>' for h, _ in self.sections)
        body.append(f"<ul>{toc}</ul>")
        for heading, parts in self.sections:
            body.append(f'<h2 id="{_slug(heading)}">{html.escape(heading)}</h2>')
            body.extend(parts)
        page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
        return atomic_write_text(folder / "report.html", page)
