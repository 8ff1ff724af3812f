"""Weekly packaging training through the pipeline against one process fitting every unit, in one run.

    python benchmarks/packaging_training.py [--groups G] [--labels-per-week L] [--weeks W] [--buckets B] [--vcpus V]

Generates synthetic labels (operators.pipelines.packaging.packaging_data) for 4 package types x G
product groups (2,000 units by default), L labels a week for the W weeks before Monday 2026-01-12
(the defaults are the DAG's dataset defaults but for the groups), then times

  pipeline  `dag.test()` of `packaging_training` on those labels (`input_uri`), end to end on the
            local endpoint: prep with quarantine into B batches, one array job per shard, the
            evaluation with its report, decision by thresholds (limits loose enough to approve),
            register, publish, notify; its task times are printed
  floors    one process, no orchestration, over the batches prep wrote, read and concatenated
            with pandas (the labels per unit are what prep kept):
            loop        the `packaging` workload's `run` on each unit's rows in turn: "one
                        process fitting all units in a loop", the floor the target is stated
                        against (pipeline <= 2x)
            vectorised  one `run` on all units' rows (every unit's Newton steps in one
                        vectorised loop): the fastest this machine fits them, printed beside it

The pipeline is timed through `dag.test()` rather than the kit's engine functions alone because the
target is a weekly training run as it is scheduled: prep, evaluation, registry and publish are
part of what a week costs, not only the fan-out. The pipeline's clock starts after `dag.test()`'s
in-process execution API has started, in a bundle holding only this DAG (benchmarks/harness.py
says why); the API's start is printed, and the last line also gives the ratio counting it. The
outputs are checked equal to both floors: the same units, statuses and label counts, coefficients
within 1e-6 relative. Ends with one line: units, labels, the times, the ratios and the target.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.harness import PipelineRun

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The Monday ending the week trained on (logical date of the run; its data interval ends here).
END = "2026-01-12"
TARGET_RATIO = 2.0
#: Limits loose enough that any result is approved: the benchmark times the run, not the decision.
APPROVE_ALL = {"approve_auc_p50": 0, "reject_auc_p50": 0, "approve_failed_unit_share": 1,
               "reject_failed_unit_share": 1, "approve_auc_p50_drop": 1, "reject_auc_p50_drop": 1,
               "approve_log_loss_increase": 100, "reject_log_loss_increase": 100, "approve_label_shift": 100,
               "reject_label_shift": 100, "approve_labels_change": 100, "reject_labels_change": 100,
               "approve_units_change": 100, "reject_units_change": 100, "review": "auto"}
COMPARED = ("labels", "train_labels", "holdout_labels", "positives", "status", "reason")


def floors(manifest_uri: str) -> dict[str, tuple["pd.DataFrame", float]]:
    """Both floors' outputs and seconds, each counting the one read of every batch prep wrote:
    "loop", the workload fitted unit by unit in one process (the floor the target is stated against),
    and "vectorised", one call fitting every unit at once (the fastest this machine fits them)."""
    import pandas as pd

    from batch_worker.workloads import get_workload
    from batch_worker.workloads.packaging import UNIT_KEY
    from operators.kit.prep import read_manifest

    started = time.perf_counter()
    rows = pd.concat([pd.read_parquet(uri) for uri in read_manifest(manifest_uri)["uri"]], ignore_index=True)
    read_s = time.perf_counter() - started
    workload = get_workload("packaging")
    params = workload.resolve_params({})
    started = time.perf_counter()
    looped = pd.concat([workload.run(unit_rows, params) for _, unit_rows in rows.groupby(list(UNIT_KEY), sort=False)],
                       ignore_index=True)
    loop_s = time.perf_counter() - started
    started = time.perf_counter()
    vectorised = workload.run(rows, params)
    vectorised_s = time.perf_counter() - started
    return {"loop": (looped, read_s + loop_s), "vectorised": (vectorised, read_s + vectorised_s)}


def differences(pipeline: "pd.DataFrame", single: "pd.DataFrame") -> list[str]:
    from batch_worker.workloads.packaging import FEATURES, UNIT_KEY

    from benchmarks.compare import differences as compared

    return compared(pipeline, single, key=UNIT_KEY, exact=COMPARED, names=("the pipeline", "the floor"),
                    close=("intercept", *(f"coef_{f}" for f in FEATURES), "holdout_log_loss", "holdout_auc"))


def training_pipeline(scratch: Path, *, groups: int = 500, products_per_group: int = 200,
                      labels_per_week: int = 50_000, weeks: int = 27, buckets: int | None = None,
                      vcpus: int | None = 2) -> "PipelineRun":
    """Generate labels under `scratch` (4 package types x `groups` units, `labels_per_week` for the `weeks`
    before END) and time `packaging_training` on them (`harness.run_pipeline`: `vcpus` None runs on the
    endpoint already running). Call after `harness.airflow_home` (or the tests' Airflow set-up)."""
    import pendulum

    from benchmarks.harness import DAGS, run_pipeline
    from operators.pipelines.packaging import packaging_data

    start_date = (dt.date.fromisoformat(END) - dt.timedelta(weeks=weeks)).isoformat()
    conf: dict = {"queue": "airbatch-cpu", **APPROVE_ALL}
    if buckets is not None:
        conf["bucket_count"] = buckets
    started = time.perf_counter()
    labels = packaging_data.ensure(str(scratch / "labels"), until=END, groups=groups,
                                   products_per_group=products_per_group, labels_per_week=labels_per_week,
                                   start_date=start_date)
    print(f"generated {weeks} weeks x {labels_per_week:,} labels for {4 * groups:,} units in "
          f"{time.perf_counter() - started:.1f} s")
    return run_pipeline(DAGS / "packaging_training.py", logical_date=pendulum.parse(END),
                        run_conf={"input_uri": labels, **conf}, data_root=scratch / "root",
                        input_prefix=str(scratch / "labels"), vcpus=vcpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=500, help="product groups; units = 4 x groups")
    parser.add_argument("--products-per-group", type=int, default=200)
    parser.add_argument("--labels-per-week", type=int, default=50_000)
    parser.add_argument("--weeks", type=int, default=27, help="weeks of labels before the trained week's end")
    parser.add_argument("--buckets", type=int, default=None, help="bucket_count: the most batches (DAG default)")
    parser.add_argument("--vcpus", type=int, default=2)
    args = parser.parse_args()
    if min(args.groups, args.products_per_group, args.labels_per_week, args.weeks) < 1:
        parser.error("--groups, --products-per-group, --labels-per-week and --weeks must be at least 1")

    from benchmarks.harness import DAGS, airflow_home, harness_line

    airflow_home("bench-packaging-training", [DAGS / "packaging_training.py"])
    with tempfile.TemporaryDirectory(prefix="packaging-bench-") as scratch:
        pipeline = training_pipeline(Path(scratch), groups=args.groups, products_per_group=args.products_per_group,
                                     labels_per_week=args.labels_per_week, weeks=args.weeks, buckets=args.buckets,
                                     vcpus=args.vcpus)
        pipeline_s, api_start_s, pipeline_out = pipeline.seconds, pipeline.api_start_s, pipeline.outputs
        prepared, fanout, decision = pipeline.prepared, pipeline.fanout, pipeline.xcom("decide")
        floor = floors(prepared["manifest_uri"])

    problems = [f"{name}: {problem}" for name, (out, _) in floor.items() for problem in differences(pipeline_out, out)]
    loop_s, vectorised_s = floor["loop"][1], floor["vectorised"][1]
    print(f"floors: {len(floor['loop'][0]):,} units, {prepared['rows_ok']:,} labels, read once: fitted unit by unit "
          f"{loop_s:.1f} s, all units in one vectorised call {vectorised_s:.1f} s")
    print(f"pipeline: {len(pipeline_out):,} units in {pipeline_s:.1f} s, {fanout['batches']} batches, "
          f"{fanout['shards']} shard(s), {prepared['rows_quarantined']} rows quarantined by prep, "
          f"decision {decision['status']}")
    print(harness_line(api_start_s))
    print("outputs: " + ("equal to both floors (units, statuses, label counts; coefficients and metrics within 1e-6)"
                         if not problems else "DIFFER: " + "; ".join(problems)))
    ratio = pipeline_s / loop_s
    print(f"units={len(pipeline_out)} labels={prepared['rows_ok']} batches={fanout['batches']} floor_s={loop_s:.1f} "
          f"pipeline_s={pipeline_s:.1f} ratio={ratio:.2f}x target<={TARGET_RATIO:g}x "
          f"met={'yes' if ratio <= TARGET_RATIO else 'no'} vcpus={args.vcpus} "
          f"ratio_counting_api_start={(pipeline_s + api_start_s) / loop_s:.2f}x "
          f"vectorised_floor_s={vectorised_s:.1f} ratio_to_vectorised={pipeline_s / vectorised_s:.2f}x")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
