"""
### packaging_inference_monthly: score the whole inventory with the latest approved model

Runs on the 1st of every month at 00:00 UTC and whenever `packaging_training` approves a version
(the Asset `packaging_models`), so a new model rescores every product.

1. **dataset**: the latest **approved** `packaging` version from the registry (none yet: the run
   skips itself here, before anything is computed, and its note and a `skipped` notification say
   why; a damaged model fails here); every product added before the run's day (`input_uri`, or
   the synthetic inventory: `dataset_*` params).
2. **prepare / plan / run_shard**: batches of whole product groups scored on AWS Batch array jobs:
   the damage probability in every package type and the recommended package. The model version is
   part of every batch's cache key: the same inventory and model compute nothing again.
3. **summary / publish**: predictions to `DATA_ROOT/predictions/packaging/monthly/run_date=YYYY-MM-DD/`
   and `.../monthly/current/` (unless a newer day is current: a backfill), with the run's lineage
   (model version, window, Batch jobs) and an event on the Asset `packaging_predictions`.
"""
from __future__ import annotations

from operators.pipelines.packaging.inference import inference_pipeline

# Airflow parses only files that mention "airflow" and "dag": this comment keeps this one in.
inference_pipeline(
    "packaging_inference_monthly",
    scope="monthly",
    defaults={"bucket_count": 1000},
    doc_md=__doc__,
    tags=["packaging", "inference", "batch"],
)
