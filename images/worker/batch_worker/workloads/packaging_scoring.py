"""Packaging scoring: the damage probability of every product in every package type, and a recommendation.

A unit is one product group: a batch carries whole groups, and each group's models are the rows
of one published `packaging` version (one per package type; see `workloads/packaging.py`). For
every product of a batch:

    p_damage_<type> = sigmoid(intercept + sum(coef_<feature> * feature))   for each package type

from the model of (type, the product's group), NaN where that model is missing or degenerate. The
recommended package is the first type, in `PACKAGE_PREFERENCE` (least packaging first), whose
probability is at most `max_damage_probability`; when none is, the type with the lowest probability
(`within_limit` is then false); with no model at all, none.

The models come from the version's artifact `.../published/packaging/versions/<model_version>/models.parquet`
(`model_uri`, local or s3://), read once per process. The pipeline sets `model_version` and
`model_uri` at run time from the registry's latest approved version, so both are part of every
batch's cache key: the same products and model compute nothing again, a new model recomputes.
The worker refuses a `model_uri` that is not that version's artifact, or that lies outside its
data root (DATA_ROOT or BATCH_DATA_ROOT) when one is set.

Every product is scored at once on NumPy or CuPy (`batch_worker.xp`).

Version rule: bump `version` whenever the output for the same products and model changes.
"""
from __future__ import annotations

import os
import posixpath
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, OutputColumn, OutputSchema, Parameter, Workload, register
from batch_worker.workloads.packaging import FEATURE_COLUMNS, FEATURES

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: Package types from the least packaging to the most: the recommendation takes the first one that is safe enough.
PACKAGE_PREFERENCE = ("own_container", "bag", "mailer", "box")
MODEL_NAME = "packaging"
ARTIFACT = "models.parquet"
_VERSION = re.compile(r"^[A-Za-z0-9_.=-]+$")

SCHEMA = InputSchema(
    columns=(
        Column("product_id", "string"),
        Column("product_group", "string"),
        Column("added_on", "date"),
        *FEATURE_COLUMNS,
    ),
    unit_key=("product_group",),
    unique_key=("product_id",),
    time_column="added_on",
)

OUTPUT = OutputSchema((
    OutputColumn("product_id", "string", nullable=False, description="the product"),
    OutputColumn("product_group", "string", nullable=False, description="its group: the unit"),
    OutputColumn("added_on", "date", nullable=False, description="when the product was added to the inventory"),
    *(OutputColumn(f"p_damage_{package}", "float",
                   description=f"probability of damage in a {package} (null without a fitted model)")
      for package in PACKAGE_PREFERENCE),
    OutputColumn("recommended_package", "string",
                 description="the least packaging within max_damage_probability, else the safest type; null "
                             "without any model"),
    OutputColumn("within_limit", "bool", nullable=False,
                 description="whether the recommended package is within max_damage_probability"),
    OutputColumn("model_version", "string", nullable=False, description="the model version that scored it"),
))

PARAMETERS = (
    Parameter("max_damage_probability", "number", 0.05,
              "The recommendation is the least packaging whose damage probability is at most this",
              exclusive_minimum=0, maximum=1),
    Parameter("model_version", "string", None,
              "The approved packaging model version to score with (set by the pipeline at run time)", nullable=True),
    Parameter("model_uri", "string", None,
              "That version's models.parquet under the data root (set by the pipeline at run time)", nullable=True),
)


def artifact_path(data_root: str, version: str) -> str:
    """Where a published version's models lie under `data_root`: the only place `model_uri` may point at."""
    return f"{data_root.rstrip('/')}/published/{MODEL_NAME}/versions/{version}/{ARTIFACT}"


def model_location_problems(model_uri: str | None, model_version: str | None,
                            data_root: str | None = None) -> list[str]:
    """Why `model_uri` may not be read for `model_version` (empty when it may)."""
    if not model_version or not model_uri:
        return ["model_version and model_uri must both be set: the pipeline resolves them from the registry's "
                "latest approved packaging version; with batch-worker try give both in --params"]
    if not _VERSION.match(model_version) or model_version in (".", ".."):
        return [f"model_version {model_version!r} must be letters, digits, '_', '.', '=' or '-'"]
    scheme, sep, rest = model_uri.partition("://")
    scheme, path = (scheme, rest) if sep else ("", model_uri)
    if sep and scheme not in ("s3", "file"):
        return [f"model_uri {model_uri!r}: use a local path, file:// or s3://"]
    if ".." in path.split("/") or posixpath.normpath(path) != path.rstrip("/"):
        return [f"model_uri {model_uri!r} must be a normalised path (no '..', '.', or '//')"]
    expected = f"/published/{MODEL_NAME}/versions/{model_version}/{ARTIFACT}"
    if not path.endswith(expected):
        return [f"model_uri {model_uri!r} is not the artifact of version {model_version}: it must end with {expected}"]
    if data_root:
        root = data_root.rstrip("/")
        root_scheme, root_sep, root_rest = root.partition("://")
        same_kind = root_scheme == scheme if root_sep else scheme in ("", "file")
        root_path = root_rest if root_sep else os.path.abspath(root)
        if not same_kind or not path.startswith(root_path.rstrip("/") + "/"):
            return [f"model_uri {model_uri!r} lies outside the data root {data_root}"]
    return []


#: The columns a model artifact must have: the unit, the package type and the coefficients on the raw scale.
MODEL_COLUMNS = ("package_type", "product_group", "intercept", *(f"coef_{f}" for f in FEATURES))


def check_model_artifact(model_uri: str, model_version: str, shown: str | None = None) -> None:
    """Open a version's artifact and read its Parquet footer: BadData naming the file (`shown`, else the uri) and
    the version when it is missing, is not Parquet (a truncated or overwritten file) or lacks a model column.

    Reads the footer only, not the models: the pipeline's first task calls it before anything is submitted, and
    the worker before it reads the models, so a bad file fails once, by name, instead of in every batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batch_worker.storage import Location

    shown = shown or model_uri
    location = Location.parse(model_uri)
    try:
        with location.fs.open(location.uri, "rb") as handle:
            schema = pq.read_schema(handle)
    except FileNotFoundError:
        raise BadData(f"model version {model_version}: its artifact {shown} does not exist") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BadData(f"model version {model_version}: its artifact {shown} cannot be read as Parquet "
                      f"({type(exc).__name__}: {str(exc).strip()}); the file is damaged or is not the published "
                      "models") from None
    missing = [c for c in MODEL_COLUMNS if c not in schema.names]
    if missing:
        raise BadData(f"model version {model_version}: its artifact {shown} lacks column(s) {missing}; it holds "
                      f"{schema.names}")


def worker_data_root() -> str | None:
    return os.environ.get("BATCH_DATA_ROOT") or os.environ.get("DATA_ROOT") or None


@lru_cache(maxsize=4)
def load_models(model_uri: str, model_version: str) -> tuple[tuple[str, ...], "np.ndarray"]:
    """(groups, weights) of a version's artifact: weights[g, t] = (intercept, coef per FEATURES) of the model of
    group g and package type PACKAGE_PREFERENCE[t], NaN where there is none. Read once per process and version."""
    import numpy as np
    import pandas as pd

    from batch_worker.storage import Location

    try:
        check_model_artifact(model_uri, model_version)
    except BadData as exc:
        raise BadData(f"{exc}; publish the version again (packaging_training's publish task) before scoring with "
                      "it") from None
    location = Location.parse(model_uri)
    with location.fs.open(location.uri, "rb") as handle:
        models = pd.read_parquet(handle)
    needed = list(MODEL_COLUMNS)
    groups = tuple(sorted(models["product_group"].astype(str).unique()))
    group = pd.Categorical(models["product_group"].astype(str), categories=groups).codes
    package = pd.Categorical(models["package_type"].astype(str), categories=PACKAGE_PREFERENCE).codes
    known = package >= 0
    weights = np.full((len(groups), len(PACKAGE_PREFERENCE), 1 + len(FEATURES)), np.nan)
    weights[group[known], package[known]] = models.loc[known, needed[2:]].to_numpy(dtype="float64")
    return groups, weights


def score(xp, group: Any, features: Any, weights: Any) -> Any:
    """Damage probabilities (rows, package types) of products with group ids `group` (-1: no model) and
    `features` (rows, F) under `weights` (groups, types, 1 + F); `xp` arrays in and out, NaN without a model."""
    safe = xp.where(group >= 0, group, 0)
    w = weights[safe]  # (rows, types, 1 + F)
    eta = w[:, :, 0] + xp.einsum("rf,rtf->rt", features, w[:, :, 1:])
    p = 1.0 / (1.0 + xp.exp(-eta))
    return xp.where((group >= 0)[:, None], p, xp.nan)


def recommend(p: "np.ndarray", limit: float) -> tuple["np.ndarray", "np.ndarray"]:
    """(index into PACKAGE_PREFERENCE or -1, within limit) per row of probabilities (rows, types)."""
    import numpy as np

    ok = np.nan_to_num(p, nan=2.0) <= limit
    within = ok.any(axis=1)
    first_ok = np.argmax(ok, axis=1)
    safest = np.argmin(np.nan_to_num(p, nan=np.inf), axis=1)
    scored = ~np.isnan(p).all(axis=1)
    choice = np.where(within, first_ok, np.where(scored, safest, -1))
    return choice, within


@register
class PackagingScoringWorkload(Workload):
    """Score products with an approved packaging model version: damage probability per package type, a recommendation."""

    name = "packaging_scoring"
    version = "1"
    schema = SCHEMA
    parameters = PARAMETERS
    output = OUTPUT

    def combines_batches(self, params: dict[str, Any]) -> bool:
        return True  # each product is scored on its own, whatever else the call holds

    def run(self, batch: "pd.DataFrame", params: dict[str, Any]) -> "pd.DataFrame":
        import numpy as np
        import pandas as pd

        from batch_worker.xp import get_xp, to_numpy

        params = self.resolve_params(params)
        problems = model_location_problems(params["model_uri"], params["model_version"], worker_data_root())
        if problems:
            raise BadData("packaging_scoring: " + "; ".join(problems))
        missing = [name for name in ("product_id", "product_group", "added_on", *FEATURES) if name not in batch.columns]
        if missing:
            raise BadData(f"packaging_scoring batch lacks column(s) {missing}; has {list(batch.columns)}")
        groups, weights = load_models(params["model_uri"], params["model_version"])
        product_group = batch["product_group"].astype(str)
        group = pd.Categorical(product_group, categories=groups).codes.astype(np.int64)
        features = batch[list(FEATURES)].to_numpy(dtype="float64")

        xp = get_xp()
        with np.errstate(all="ignore"):
            p = to_numpy(score(xp, xp.asarray(group), xp.asarray(features), xp.asarray(weights)))
        choice, within = recommend(p, params["max_damage_probability"])
        names = np.asarray([*PACKAGE_PREFERENCE, None], dtype=object)
        return pd.DataFrame({
            "product_id": batch["product_id"].astype(str).to_numpy(),
            "product_group": product_group.to_numpy(),
            "added_on": pd.to_datetime(batch["added_on"]).to_numpy(dtype="datetime64[s]"),
            **{f"p_damage_{package}": p[:, t] for t, package in enumerate(PACKAGE_PREFERENCE)},
            "recommended_package": pd.Series(names[choice], dtype="string"),
            "within_limit": within,
            "model_version": np.full(len(batch), params["model_version"], dtype=object),
        })
