"""Pricing's plots for the evaluation report (the page itself is `operators.kit.report.render`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from operators.kit import figure_png

if TYPE_CHECKING:
    import pandas as pd


def plots(prices: "pd.DataFrame") -> dict[str, str]:
    """Base64 PNGs: elasticity histogram, uplift by segment, price-change distribution."""
    import numpy as np

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

    return {"elasticity": figure_png(elasticity), "uplift_by_segment": figure_png(uplift),
            "price_change": figure_png(change)}
