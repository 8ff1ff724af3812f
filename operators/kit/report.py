"""The evaluation report: one self-contained HTML page (plots inlined as PNG) stored with the version.

`render` lays out what every evaluation has (the proposal and its reasons, the limits with the
levels applied, the values, the lineage); an evaluator adds its own `ReportSection`s, built with
`table` and `figure_png`. Every text from data is escaped here; a section's `html` is the
evaluator's own markup and must escape what it takes from data (`table` does).
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable

#: How many significant digits a number in the report shows.
SHOWN_DIGITS = 4


@dataclass(frozen=True)
class ReportSection:
    title: str
    html: str = ""
    #: name -> PNG as base64 (what `figure_png` returns)
    figures: dict[str, str] = field(default_factory=dict)


def shown(value: Any) -> str:
    """A value as a person reads it: floats rounded, missing ones "n/a"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{SHOWN_DIGITS}g}"
    return str(value)


def table(values: dict[str, Any]) -> str:
    """A two-column table of name and value, escaped."""
    rows = "\n".join(f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(shown(value))}</td></tr>"
                     for name, value in values.items())
    return f"<table>{rows}</table>"


def rows_table(header: list[str], rows: list[list[Any]]) -> str:
    """A table with a header row, escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(shown(cell))}</td>" for cell in row) + "</tr>"
                     for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (6.4, 3.6)) -> str:
    """Base64 PNG of what `draw(ax)` plots on one matplotlib axis (matplotlib is imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _figures(figures: dict[str, str]) -> str:
    return "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{html.escape(data)}">'
        f"<figcaption>{html.escape(name.replace('_', ' '))}</figcaption></figure>" for name, data in figures.items())


def render(*, title: str, version: str, proposal: str, reasons: list[str], limits: list[dict[str, Any]],
           values: dict[str, dict[str, Any]], sections: list[ReportSection], lineage: dict[str, Any]) -> str:
    """The page: proposal and reasons, the evaluator's sections, the limits, the values by group, the lineage.

    `limits` are rows of `evaluation.limit_table`; `values` maps a heading to its name -> value table.
    """
    limit_rows = [[row["name"], row["direction"], row["value"], row["approve"], row["reject"], row["outcome"],
                   row["description"]] for row in limits]
    parts = [f"<section><h2>{html.escape(s.title)}</h2>\n{_figures(s.figures)}\n{s.html}</section>" for s in sections]
    groups = [f"<h2>{html.escape(heading)}</h2>{table(group)}" for heading, group in values.items()]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:2px 8px;text-align:left}}figure{{display:inline-block;margin:0 1em 1em 0}}
.proposal{{font-size:1.3em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="proposal">Version <b>{html.escape(version)}</b>: proposed <b>{html.escape(proposal)}</b></p>
<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in reasons)}</ul>
{''.join(parts)}
<h2>Limits</h2>{rows_table(["limit", "direction", "value", "approve level", "reject level", "outcome", "meaning"],
                            limit_rows)}
{''.join(groups)}
<h2>Lineage</h2>{table(lineage)}
</body></html>
"""
