"""The evaluation report: one self-contained HTML page (plots inlined as PNG) stored with the version."""
from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
import pandas as pd


def _figure_png(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def plots(prices: pd.DataFrame) -> dict[str, str]:
    """Base64 PNGs: elasticity histogram, uplift by segment, price-change distribution."""
    ok = prices[prices["status"] == "ok"]

    def elasticity(ax):
        values = ok["elasticity"][np.isfinite(ok["elasticity"])]
        ax.hist(values, bins=40, color="#4c72b0")
        ax.set(title="Fitted price elasticity (priced units)", xlabel="elasticity", ylabel="units")

    def uplift(ax):
        by_segment = ok.groupby("segment")["uplift"].sum().sort_values()
        ax.barh([str(s) for s in by_segment.index], by_segment.to_numpy(), color="#55a868")
        ax.set(title="Expected profit uplift by segment", xlabel="uplift per day (currency)")

    def change(ax):
        ax.hist(ok["price_change_pct"], bins=40, color="#c44e52")
        ax.set(title="Recommended price change", xlabel="% change from current price", ylabel="units")

    return {"elasticity": _figure_png(elasticity), "uplift_by_segment": _figure_png(uplift),
            "price_change": _figure_png(change)}


def _rows(values: dict[str, Any]) -> str:
    out = []
    for name, value in values.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        out.append(f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(value))}</td></tr>")
    return "\n".join(out)


def render(*, title: str, version: str, proposal: str, reasons: list[str], metrics: dict[str, Any],
           comparison: dict[str, Any], input_stats: dict[str, Any], lineage: dict[str, Any],
           prices: pd.DataFrame) -> str:
    images = plots(prices)
    figures = "\n".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name.replace("_", " ")}'
        f"</figcaption></figure>" for name, data in images.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:2px 8px;text-align:left}}figure{{display:inline-block;margin:0 1em 1em 0}}
.proposal{{font-size:1.3em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="proposal">Version <b>{html.escape(version)}</b>: proposed <b>{html.escape(proposal)}</b></p>
<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in reasons)}</ul>
{figures}
<h2>Metrics</h2><table>{_rows(metrics)}</table>
<h2>Against the last approved version</h2><table>{_rows(comparison)}</table>
<h2>Input</h2><table>{_rows(input_stats)}</table>
<h2>Lineage</h2><table>{_rows(lineage)}</table>
</body></html>
"""
