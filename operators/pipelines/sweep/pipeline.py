"""The training sweep on the kit: a spec of configurations -> batches per resource class -> array jobs -> history.

    prepare -> plan -> run_shard (mapped; the kit's shard operator) -> summary -> notify

- **prepare** checks the spec as a whole (`spec.load`: every problem named, nothing trained when
  one is found), fixes the data slice (the `input_uri` labels through the kit's prep, or
  synthetic labels) as one content-named Parquet file, gives each configuration its key
  (canonical hyper-parameters + trainer + data + code version), trains once the configurations of
  the sweep that share a key (the repeats get the first one's outcome, status `duplicate`), takes
  out those the history has already seen trained with the same key, and writes the rest as
  batches of `configs_per_batch`, one manifest per resource class.
- **plan** cuts each class's batches into shards on its queue (CPU or GPU), each with the run's
  `runnable_timeout_s`: a shard whose children sit RUNNABLE that long moves its unstarted
  work to the queue's fallback (`config/batch_resources.json`).
- **summary** reads every configuration's outcome (its batch's result row, the kit's failure
  class and first error when the batch failed, or the earlier sweep's row when reused), the
  Batch jobs' status changes, capacity shortages and throttled submissions, writes the job
  history (`operators.kit.history`) and a report with the leaderboard and failures by class.
- **notify** sends one message per sweep, and one per terminally failed configuration when the
  run asks (`notify_each_failure`).

This is not `unit_pipeline`: the units come from a spec, not an input table, land on two queues by
resource class, and end in a history and a leaderboard instead of an evaluation and approval.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from airflow.sdk import DAG, Param

from operators.kit import check_conf, dag_params, stage
from operators.kit.batch import run_shards
from operators.kit.notify import FailureNotifier
from operators.kit.pipeline import kit_params, params_doc
from operators.pipelines.sweep.outcome import FAILURE_MESSAGES_MAX
from operators.pipelines.sweep.spec import WORKLOAD

#: Repeated configurations named in prepare's log line and the summary (all are in configurations.parquet).
DUPLICATES_SHOWN = 20
KIT_PARAMS_USED = ("batches_per_shard", "batches_per_child", "shard_timeout_minutes")
#: The form's default sweep: a small grid of the packaging trainer (6 configurations, one batch, seconds on the
#: default synthetic labels), so that Trigger with the defaults runs a whole sweep. It gives way to a file: a run
#: that names `sweep_uri` and leaves `sweep` at this default trains the file.
DEFAULT_SWEEP = {"grid": {"l2": [0.1, 1.0, 10.0], "holdout_days": [14, 28]}, "resource_class": "CPU",
                 "id_prefix": "default-"}


def sweep_params() -> dict[str, Param]:
    kit = kit_params("synthetic packaging labels (the dataset_* params)")
    return dag_params({
        "sweep": Param(json.loads(json.dumps(DEFAULT_SWEEP)), type=["object", "null"],
                       description='the sweep inline: {"grid": {"l2": [0.1, 1]}, "resource_class": "CPU"} or '
                                   '{"configurations": [{"id": "a", "hyperparameters": {"l2": 1}, '
                                   '"resource_class": "GPU"}]}; the default is a small built-in grid of 6 '
                                   'configurations, which gives way to sweep_uri when that is set'),
        "sweep_uri": Param(None, type=["string", "null"], minLength=1,
                           description="the sweep as a JSON or CSV file under DATA_ROOT or AIRBATCH_INPUT_PREFIXES "
                                       "(up to 100,000 configurations); it replaces the built-in grid of sweep; "
                                       "empty: sweep"),
        "trainer": Param("packaging", type="string", enum=["packaging", "trivial"],
                         description="what a configuration trains: packaging (the damage model on the data slice) "
                                     "or trivial (no data: the engine's own load)"),
        "input_uri": kit["input_uri"],
        "dataset_groups": Param(5, type="integer", minimum=1, maximum=10_000,
                                description="synthetic labels: product groups (units are 4 package types x groups)"),
        "dataset_weeks": Param(8, type="integer", minimum=1, maximum=520, description="synthetic labels: weeks"),
        "dataset_labels_per_week": Param(2000, type="integer", minimum=1, maximum=10_000_000,
                                         description="synthetic labels: labels each week"),
        "dataset_seed": Param(0, type="integer", minimum=0, maximum=2**31 - 1,
                              description="synthetic labels: the same seed gives the same labels"),
        "configs_per_batch": Param(20, type="integer", minimum=1, maximum=10_000,
                                   description="configurations trained one after another in one batch (one cache "
                                               "entry)"),
        "runnable_timeout_s": Param(600, type=["number", "null"], exclusiveMinimum=0,
                                    description="a shard whose children sit RUNNABLE this long with none starting "
                                                "has a capacity shortage: its unstarted work moves to the queue's "
                                                "fallback; empty: wait"),
        "notify_each_failure": Param(False, type="boolean",
                                     description="also one message per configuration that failed terminally "
                                                 f"(at most {FAILURE_MESSAGES_MAX})"),
        "leaderboard_size": Param(5, type="integer", minimum=1, maximum=100,
                                  description="best configurations shown in the report and notification"),
        **{name: kit[name] for name in KIT_PARAMS_USED},
    })


def chosen_spec(params: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(inline spec, spec file) the run trains: the form's built-in grid gives way to a `sweep_uri` (the form and
    the REST API both send `sweep` at its default when only the file was given); both given otherwise stays an
    error of `spec.load`."""
    inline, uri = params.get("sweep"), params.get("sweep_uri")
    if uri and inline == DEFAULT_SWEEP:
        return None, uri
    return inline, uri


class SweepPipeline:
    def __init__(self, dag_id: str, *, poll_interval: float = 2, **dag_kwargs: Any):
        self.dag_id, self.poll_interval, self.dag_kwargs = dag_id, poll_interval, dag_kwargs
        self.params = sweep_params()

    # --- prepare ----------------------------------------------------------------------------------------------------
    def prepare(self, params: dict[str, Any], conf: dict[str, Any] | None, run_id: str) -> dict[str, Any]:
        from batch_worker.workloads import get_workload

        from operators.kit import engine
        from operators.pipelines.sweep import outcome, spec

        started = time.time()
        check_conf(self.dag_id, conf, self.params)
        configurations = spec.load(*chosen_spec(params))
        root = engine.own_run_root(self.dag_id, run_id)
        workload = get_workload(WORKLOAD)
        data_uri = self.data_slice(params, root) if params["trainer"] == "packaging" else None
        data_hash = data_uri.rsplit("/", 1)[-1].removesuffix(".parquet") if data_uri else None
        keyed = [(c, c.key(params["trainer"], data_hash, workload.version)) for c in configurations]
        # Before fan-out: a configuration that repeats an earlier one of this sweep (same key) is trained once.
        duplicate_of = spec.duplicates(keyed)
        unique = [(c, key) for c, key in keyed if c.id not in duplicate_of]
        earlier = outcome.trained_before([key for _, key in unique])
        fresh = [(c, key) for c, key in unique if key not in earlier]
        manifests, batch_of = self.write_batches(root, fresh, params["configs_per_batch"])
        table = self.write_configurations(root, keyed, earlier, batch_of, duplicate_of)
        repeated = ""
        if duplicate_of:
            shown = ", ".join(f"{c} as {first}" for c, first in list(duplicate_of.items())[:DUPLICATES_SHOWN])
            more = f" and {len(duplicate_of) - DUPLICATES_SHOWN:,} more" if len(duplicate_of) > DUPLICATES_SHOWN else ""
            repeated = (f"{len(duplicate_of)} repeat an earlier configuration's hyper-parameters and get its outcome, "
                        f"not trained again ({shown}{more}); ")
        reused = len(unique) - len(fresh)
        print(f"{len(configurations)} configurations: {repeated}{reused} trained before with the same data, code "
              f"and parameters (reused); "
              + (f"{len(fresh)} to train in " + ", ".join(f"{m['batches']} {cls} batches"
                                                        for cls, m in manifests.items()) if fresh
                 else "nothing to train"))
        return {"run_root": root, "started_at": started, "data_uri": data_uri, "configurations": table,
                "manifests": manifests, "count": len(configurations), "reused": reused,
                "duplicates": len(duplicate_of),
                "duplicates_shown": dict(list(duplicate_of.items())[:DUPLICATES_SHOWN])}

    def data_slice(self, params: dict[str, Any], root: str) -> str:
        """The labels every configuration trains on, as one Parquet file named by its content under the outputs."""
        import io

        import pandas as pd
        from batch_worker.runtime import parquet_bytes
        from batch_worker.workloads import get_workload

        from operators.kit import engine, prep

        if params.get("input_uri"):
            result = prep.prepare_configured(params["input_uri"], get_workload("packaging").schema, f"{root}/labels",
                                             1, storage_options=engine.options_for(root, "aws_default"))
            if not result.rows_ok:
                raise ValueError(f"input_uri {params['input_uri']}: no usable labels ({result.rows_in} rows read, "
                                 f"{result.rows_quarantined} quarantined {result.quarantined_by_reason})")
            manifest = prep.read_manifest(result.manifest_uri, engine.options_for(root, "aws_default"))
            frames = [pd.read_parquet(io.BytesIO(engine.location(uri).read_bytes())) for uri in manifest["uri"]]
            labels = pd.concat(frames, ignore_index=True)
        else:
            from operators.pipelines.packaging import packaging_data

            weeks = [packaging_data.week_labels(week, groups=params["dataset_groups"], products_per_group=50,
                                                labels_per_week=params["dataset_labels_per_week"],
                                                start_date="2026-01-05", seed=params["dataset_seed"])
                     for week in range(params["dataset_weeks"])]
            labels = pd.concat(weeks, ignore_index=True)
        labels = labels.sort_values("label_id", kind="stable", ignore_index=True) if "label_id" in labels else labels
        data = parquet_bytes(labels)
        out = engine.location(engine.output_root(WORKLOAD))
        uri = out.join("_data", f"{hashlib.sha256(data).hexdigest()[:32]}.parquet")
        if not out.read_many([uri]):
            out.write_bytes(uri, data)
        return uri

    def write_batches(self, root: str, fresh: list, per_batch: int) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        """The configurations to train as batch files and one manifest per resource class (batch ids unique in the
        run); and each configuration's batch by configuration key."""
        import pandas as pd
        from batch_worker.runtime import parquet_bytes

        from operators.kit import engine
        from operators.kit.prep import MANIFEST_COLUMNS, MANIFEST_FILE

        folder = engine.location(f"{root}/prep")
        manifests: dict[str, dict[str, Any]] = {}
        batch_of: dict[str, int] = {}
        batch_id = 0
        for resource_class in sorted({c.resource_class for c, _ in fresh}):
            mine = sorted(((c, key) for c, key in fresh if c.resource_class == resource_class), key=lambda p: p[1])
            rows = []
            for start in range(0, len(mine), per_batch):
                chunk = mine[start:start + per_batch]
                frame = pd.DataFrame({"config_id": [c.id for c, _ in chunk], "config_key": [k for _, k in chunk],
                                      "hyperparameters": [json.dumps(c.hyperparameters, sort_keys=True)
                                                          for c, _ in chunk]})
                data = parquet_bytes(frame)
                uri = folder.join(resource_class, f"batch-{batch_id}.parquet")
                folder.write_bytes(uri, data)
                batch_of.update((key, batch_id) for _, key in chunk)
                rows.append({"batch_id": batch_id, "uri": uri, "rows": len(chunk), "units": len(chunk),
                             "content_hash": hashlib.sha256(data).hexdigest()})
                batch_id += 1
            manifest_uri = folder.join(resource_class, MANIFEST_FILE)
            folder.write_bytes(manifest_uri, parquet_bytes(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))))
            manifests[resource_class] = {"manifest_uri": manifest_uri, "batches": len(rows), "configurations": len(mine)}
        return manifests, batch_of

    def write_configurations(self, root: str, keyed: list, earlier: dict[str, dict[str, Any]],
                             batch_of: dict[str, int], duplicate_of: dict[str, str] | None = None) -> str:
        """Every configuration of the spec, in its order: key, class, queue, batch, whether reused from an earlier
        sweep, and `duplicate_of` (the id of the earlier configuration of this sweep it repeats, or null)."""
        import pandas as pd
        from batch_worker.runtime import parquet_bytes

        from operators.kit import engine

        frame = pd.DataFrame({
            "config_id": [c.id for c, _ in keyed], "config_key": [k for _, k in keyed],
            "resource_class": [c.resource_class for c, _ in keyed], "queue": [c.queue for c, _ in keyed],
            "hyperparameters": [json.dumps(c.hyperparameters, sort_keys=True) for c, _ in keyed],
            "batch_id": pd.array([batch_of.get(k) for _, k in keyed], dtype="Int64"),
            "reused": [k in earlier and c.id not in (duplicate_of or {}) for c, k in keyed],
            "duplicate_of": pd.array([(duplicate_of or {}).get(c.id) for c, _ in keyed], dtype="string")})
        folder = engine.location(root)
        uri = folder.join("configurations.parquet")
        folder.write_bytes(uri, parquet_bytes(frame))
        return uri

    # --- plan -------------------------------------------------------------------------------------------------------
    def plan(self, prepared: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        from operators.kit import engine
        from operators.pipelines.sweep.spec import RESOURCE_QUEUES

        shards = []
        for resource_class, manifest in sorted(prepared["manifests"].items()):
            planned = engine.plan_shards(
                manifest["manifest_uri"], workload=WORKLOAD,
                params={"trainer": params["trainer"], "data_uri": prepared["data_uri"]},
                out_root=engine.output_root(WORKLOAD), run_dir=prepared["run_root"],
                queue=RESOURCE_QUEUES[resource_class], batches_per_shard=params["batches_per_shard"],
                min_success_ratio=0.0, batches_per_child=params["batches_per_child"] or None,
                timeout_minutes=params["shard_timeout_minutes"])
            for shard in planned:
                # shard indexes name results files: unique across the classes' shards
                shard["shard"]["index"] = len(shards)
                batches = shard["shard"]["label"].split("batches ", 1)[1]
                shard["shard"]["label"] = f"{resource_class} shard {len(shards)}: batches {batches}"
                shard["runnable_timeout_s"] = params["runnable_timeout_s"]
                shards.append(shard)
        print(f"{sum(m['batches'] for m in prepared['manifests'].values())} batches in {len(shards)} shard(s)")
        return shards

    # --- summary ----------------------------------------------------------------------------------------------------
    def summary(self, shard_summaries: list[dict[str, Any]], prepared: dict[str, Any], params: dict[str, Any],
                dag_id: str, run_id: str) -> dict[str, Any]:
        from operators.pipelines.sweep import outcome

        return outcome.summarise(shard_summaries, prepared, params, dag_id, run_id)

    def notify(self, summary: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        from operators.kit import alarms
        from operators.pipelines.sweep import outcome

        # the run's figures to CloudWatch and its alarms' states, as a unit pipeline's last summary stage does
        published = alarms.publish_summary(self.dag_id, summary["run_id"], outcome.metric_figures(summary),
                                           summary.get("run_root"))
        return {**outcome.notify(summary, each_failure=params["notify_each_failure"]), "metrics": published}

    # --- wiring -----------------------------------------------------------------------------------------------------
    def build(self) -> DAG:
        pipeline = self
        kwargs = {**self.dag_kwargs, "doc_md": (self.dag_kwargs.get("doc_md") or "") + params_doc(self.params)}
        with DAG(self.dag_id, params=self.params, default_args={"on_failure_callback": FailureNotifier()},
                 **kwargs) as dag:

            @stage()
            def prepare(params=None, dag_run=None, run_id=None) -> dict:
                return pipeline.prepare(params, dag_run.conf if dag_run else None, run_id)

            @stage()
            def plan(prepared: dict, params=None) -> list[dict]:
                return pipeline.plan(prepared, params)

            # Runs when every configuration was reused, too (run_shard then maps over nothing and is skipped).
            # Its log shows the leaderboard as a table (outcome.log_text), not the returned dict.
            @stage(trigger_rule="none_failed", show_return_value_in_logs=False)
            def summary(shard_summaries, prepared: dict, params=None, ti=None) -> dict:
                return pipeline.summary(list(shard_summaries or []), prepared, params, ti.dag_id, ti.run_id)

            @stage()
            def notify(result: dict, params=None) -> dict:
                return pipeline.notify(result, params)

            prepared = prepare()
            shards = run_shards(plan(prepared), poll_interval=self.poll_interval)
            notify(summary(shards.output, prepared))
        return dag


def sweep_pipeline(dag_id: str, **options: Any) -> DAG:
    return SweepPipeline(dag_id, **options).build()
