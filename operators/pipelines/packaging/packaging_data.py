"""Synthetic labels for the packaging workload: products shipped in a package type, damaged or not.

A unit is one (package type, product group). Every product group has `products_per_group` products
with fixed features (`products`); every unit has a true damage model (`unit_truth`): a logit
linear in the features, with a base rate by package type (a box protects more than a bag) and a
per-unit deviation.

Labels accumulate week by week: week k (from `start_date`) holds `labels_per_week` labels spread
over the units by their popularity (some units get few labels), each a random product of the
group on a random day of the week. A week's rows come from a stream seeded by (seed, k), so
generating more weeks never changes the earlier ones: a dataset grows, as a label store does.

Drift: labels dated on or after `drift_from` get `drift * (1 + fragility)` added to their logit (a
rougher carrier, hardest on fragile products). The draws are the same with or without drift, so
labels before `drift_from` are identical and only the drifted ones change.

Layout: `week=YYYY-MM-DD/part-0.parquet` (the week's Monday), each file complete on its own (it
carries `labelled_on`), written atomically; local or s3:// through `batch_worker.storage`.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

from batch_worker.workloads.packaging import FEATURES, LABEL

PACKAGE_TYPES = ("bag", "box", "mailer", "own_container")
#: Per package type: base logit, and the effects of (weight, size, fragility, liquid) on standard scales.
BASE_LOGIT = {"bag": -1.2, "box": -3.0, "mailer": -1.8, "own_container": -2.2}
EFFECTS = {
    "bag": (1.0, 0.5, 2.5, 2.0),
    "box": (0.2, 0.1, 0.8, 0.5),
    "mailer": (0.6, 0.8, 2.0, 1.5),
    "own_container": (0.3, 0.4, 1.5, 1.0),
}
COLUMNS = ("package_type", "product_group", "product_id", "label_id", "labelled_on", *FEATURES, LABEL)


def group_names(groups: int) -> list[str]:
    return [f"G{i:04d}" for i in range(groups)]


def group_traits(groups: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per product group: its typical weight and size, fragility's beta shape, and its share of liquids."""
    return {
        "typical_weight": np.exp(rng.normal(np.log(1.5), 0.6, groups)),
        "typical_side": np.exp(rng.normal(np.log(35.0), 0.4, groups)),
        "fragile": rng.uniform(0.5, 5.0, groups),
        "sturdy": rng.uniform(0.5, 5.0, groups),
        "liquid_share": np.where(rng.random(groups) < 0.2, rng.uniform(0.2, 0.8, groups), 0.0),
    }


def product_features(traits: dict[str, np.ndarray], group: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The features of products of groups `group` (indices), drawn around their group's traits."""
    n = len(group)
    return {
        "weight_kg": np.round(traits["typical_weight"][group] * np.exp(rng.normal(0.0, 0.5, n)), 3),
        "longest_side_cm": np.round(traits["typical_side"][group] * np.exp(rng.normal(0.0, 0.3, n)), 1),
        "fragility": np.round(rng.beta(traits["fragile"][group], traits["sturdy"][group]), 3),
        "liquid": (rng.random(n) < traits["liquid_share"][group]).astype(np.float64),
    }


def products(groups: int, products_per_group: int, seed: int = 0) -> pd.DataFrame:
    """The product inventory: product_id, product_group and the features, fixed for a seed."""
    rng = np.random.default_rng([seed, 0])
    group = np.repeat(np.arange(groups), products_per_group)
    traits = group_traits(groups, rng)
    names = np.asarray(group_names(groups), dtype=object)
    return pd.DataFrame({
        "product_id": [f"{names[g]}-P{i % products_per_group:05d}" for i, g in enumerate(group)],
        "product_group": names[group],
        **product_features(traits, group, rng),
    })


def standard_features(frame: pd.DataFrame) -> np.ndarray:
    """The features on the scales the true effects are given in: (rows, 4)."""
    return np.column_stack([
        (frame["weight_kg"].to_numpy() - 2.0) / 2.0,
        (frame["longest_side_cm"].to_numpy() - 40.0) / 20.0,
        (frame["fragility"].to_numpy() - 0.5) * 4.0,
        frame["liquid"].to_numpy(),
    ])


def unit_truth(groups: int, seed: int = 0) -> pd.DataFrame:
    """Per unit (package type, product group): popularity and the true logit's intercept and effects."""
    rng = np.random.default_rng([seed, 1])
    n = len(PACKAGE_TYPES) * groups
    package = np.repeat(np.asarray(PACKAGE_TYPES, dtype=object), groups)
    effects = np.asarray([EFFECTS[p] for p in package]) * np.exp(rng.normal(0.0, 0.2, (n, 4)))
    return pd.DataFrame({
        "package_type": package,
        "product_group": np.tile(np.asarray(group_names(groups), dtype=object), len(PACKAGE_TYPES)),
        "popularity": np.exp(rng.normal(0.0, 1.0, n)),
        "intercept": np.asarray([BASE_LOGIT[p] for p in package]) + rng.normal(0.0, 0.4, n),
        **{f"effect_{feature}": effects[:, i] for i, feature in enumerate(FEATURES)},
    })


def week_start(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def week_labels(week: int, *, groups: int, products_per_group: int, labels_per_week: int, start_date: str,
                seed: int = 0, drift: float = 0.0, drift_from: str | None = None,
                inventory: pd.DataFrame | None = None, truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """The labels of week `week` (0 = the week of `start_date`), in the input schema's columns."""
    inventory = products(groups, products_per_group, seed) if inventory is None else inventory
    truth = unit_truth(groups, seed) if truth is None else truth
    rng = np.random.default_rng([seed, 2, week])
    first = week_start(dt.date.fromisoformat(start_date)) + dt.timedelta(weeks=week)
    share = truth["popularity"].to_numpy() / truth["popularity"].sum()
    unit = np.repeat(np.arange(len(truth)), rng.multinomial(labels_per_week, share))
    n = len(unit)
    group = unit % groups
    product = group * products_per_group + rng.integers(0, products_per_group, n)
    day = rng.integers(0, 7, n)
    draw = rng.random(n)
    rows = inventory.iloc[product].reset_index(drop=True)
    units = truth.iloc[unit].reset_index(drop=True)
    effects = units[[f"effect_{feature}" for feature in FEATURES]].to_numpy()
    logit = units["intercept"].to_numpy() + (standard_features(rows) * effects).sum(axis=1)
    labelled_on = np.asarray([first + dt.timedelta(days=int(d)) for d in range(7)], dtype=object)[day]
    if drift and drift_from is not None:
        drifted = np.asarray([d >= dt.date.fromisoformat(drift_from) for d in labelled_on])
        logit = logit + np.where(drifted, drift * (1.0 + rows["fragility"].to_numpy()), 0.0)
    return pd.DataFrame({
        "package_type": units["package_type"].to_numpy(),
        "product_group": rows["product_group"].to_numpy(),
        "product_id": rows["product_id"].to_numpy(),
        "label_id": [f"{first.isoformat()}-{i:07d}" for i in range(n)],
        "labelled_on": labelled_on,
        **{feature: rows[feature].to_numpy() for feature in FEATURES},
        LABEL: (draw < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64),
    }, columns=list(COLUMNS))


def dataset_name(*, groups: int, products_per_group: int, labels_per_week: int, start_date: str, seed: int,
                 drift: float, drift_from: str | None) -> str:
    drifted = f"-drift{drift:g}-from{drift_from}" if drift and drift_from else ""
    return f"groups{groups}-products{products_per_group}-labels{labels_per_week}-from{start_date}-seed{seed}{drifted}"


def ensure(root: str, *, until: str, groups: int, products_per_group: int, labels_per_week: int, start_date: str,
           seed: int = 0, drift: float = 0.0, drift_from: str | None = None,
           storage_options: dict | None = None) -> str:
    """The dataset folder under `root` holding every week from `start_date` whose Monday is before `until`.

    Weeks already written are kept (they never change for the same arguments); missing ones are
    generated. Returns the folder's URI.
    """
    from batch_worker.runtime import parquet_bytes
    from batch_worker.storage import Location

    start, end = dt.date.fromisoformat(start_date), dt.date.fromisoformat(until)
    if end <= start:
        raise ValueError(f"packaging labels: until ({until}) must be after start_date ({start_date})")
    arguments = dict(groups=groups, products_per_group=products_per_group, labels_per_week=labels_per_week,
                     start_date=start_date, seed=seed, drift=drift, drift_from=drift_from)
    folder = Location.parse(f"{root.rstrip('/')}/{dataset_name(**arguments)}", storage_options)
    inventory, truth = products(groups, products_per_group, seed), unit_truth(groups, seed)
    weeks = (end - week_start(start)).days // 7 + (1 if (end - week_start(start)).days % 7 else 0)
    for week in range(weeks):
        monday = week_start(start) + dt.timedelta(weeks=week)
        path = folder.join(f"week={monday.isoformat()}", "part-0.parquet")
        if folder.fs.exists(path):
            continue
        labels = week_labels(week, **arguments, inventory=inventory, truth=truth)
        folder.write_bytes(path, parquet_bytes(labels))
    return folder.uri


def label_balance(frame: pd.DataFrame) -> dict[str, Any]:
    """Damaged share by package type and overall, with the label count: what drift moves."""
    by_type = frame.groupby("package_type")[LABEL].mean()
    return {"labels": int(len(frame)), "positive_share": float(frame[LABEL].mean()) if len(frame) else None,
            "by_package_type": {str(k): float(v) for k, v in by_type.items()}}

