"""A synthetic product inventory for packaging inference: the training data's products, and a few new ones every day.

Day 0 (`start_date`) holds the products of `packaging_data.products` (the same ids, groups and
features the labels are drawn from, so every product group has its models); each later day adds
`new_per_day` products to random groups, their features drawn around their group's traits
(`packaging_data.group_traits`). A day's products come from a stream seeded by (seed, day), so
generating more days never changes the earlier ones.

Layout: `<root>/<dataset name>/day=YYYY-MM-DD/part-0.parquet`, with `added_on` the day.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from operators.pipelines.packaging import packaging_data

COLUMNS = ("product_id", "product_group", "added_on", *packaging_data.FEATURES)


def dataset_name(*, groups: int, products_per_group: int, new_per_day: int, start_date: str, seed: int) -> str:
    return f"groups{groups}-products{products_per_group}-new{new_per_day}-from{start_date}-seed{seed}"


def day_products(day: int, *, groups: int, products_per_group: int, new_per_day: int, start_date: str,
                 seed: int = 0) -> pd.DataFrame:
    """The products added on day `day` (0 = `start_date`: the initial inventory)."""
    added_on = dt.date.fromisoformat(start_date) + dt.timedelta(days=day)
    if day == 0:
        frame = packaging_data.products(groups, products_per_group, seed)
    else:
        traits = packaging_data.group_traits(groups, np.random.default_rng([seed, 0]))
        rng = np.random.default_rng([seed, 3, day])
        group = np.sort(rng.integers(0, groups, new_per_day))
        names = np.asarray(packaging_data.group_names(groups), dtype=object)
        stamp = added_on.strftime("%Y%m%d")
        frame = pd.DataFrame({
            "product_id": [f"{names[g]}-D{stamp}-{i:06d}" for i, g in enumerate(group)],
            "product_group": names[group],
            **packaging_data.product_features(traits, group, rng),
        })
    frame.insert(2, "added_on", np.full(len(frame), added_on, dtype=object))
    return frame.loc[:, list(COLUMNS)]


def ensure(root: str, *, until: str, groups: int, products_per_group: int, new_per_day: int, start_date: str,
           seed: int = 0, storage_options: dict | None = None) -> str:
    """The inventory folder under `root` holding every day from `start_date` before `until`; returns its URI.

    Days already written are kept (they never change for the same arguments); missing ones are generated.
    """
    from batch_worker.runtime import parquet_bytes
    from batch_worker.storage import Location

    start, end = dt.date.fromisoformat(start_date), dt.date.fromisoformat(until)
    if end <= start:
        raise ValueError(f"packaging inventory: the run's day ({until}) must be after dataset_start_date "
                         f"({start_date}); choose an earlier dataset_start_date")
    arguments = dict(groups=groups, products_per_group=products_per_group, new_per_day=new_per_day,
                     start_date=start_date, seed=seed)
    folder = Location.parse(f"{root.rstrip('/')}/{dataset_name(**arguments)}", storage_options)
    for day in range((end - start).days):
        path = folder.join(f"day={(start + dt.timedelta(days=day)).isoformat()}", "part-0.parquet")
        if not folder.fs.exists(path):
            folder.write_bytes(path, parquet_bytes(day_products(day, **arguments)))
    return folder.uri


def products_added(*, since: str, until: str, groups: int, products_per_group: int, new_per_day: int,
                   start_date: str) -> int:
    """How many products the inventory gains in the days [since, until): what a daily run scores."""
    start = dt.date.fromisoformat(start_date)
    first, end = dt.date.fromisoformat(since), dt.date.fromisoformat(until)
    days = [start + dt.timedelta(days=k) for k in range((end - start).days)]
    return sum(groups * products_per_group if day == start else new_per_day for day in days if day >= first)


def true_models(groups: int, seed: int = 0) -> pd.DataFrame:
    """The generator's own damage models (per package type and group) as a `packaging` artifact's rows, on the
    raw feature scale: a known-good model version for benchmarks and tests of inference."""
    truth = packaging_data.unit_truth(groups, seed)
    e = truth[[f"effect_{f}" for f in packaging_data.FEATURES]].to_numpy()
    # standard_features: (w - 2) / 2, (s - 40) / 20, (f - 0.5) * 4, liquid
    coef = np.column_stack([e[:, 0] / 2.0, e[:, 1] / 20.0, e[:, 2] * 4.0, e[:, 3]])
    intercept = truth["intercept"].to_numpy() - e[:, 0] - 2.0 * e[:, 1] - 2.0 * e[:, 2]
    return pd.DataFrame({
        "package_type": truth["package_type"].to_numpy(), "product_group": truth["product_group"].to_numpy(),
        "intercept": intercept, **{f"coef_{f}": coef[:, i] for i, f in enumerate(packaging_data.FEATURES)},
        "status": "ok",
    })
