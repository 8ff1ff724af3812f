"""
### gpu_batch_benchmark: the same kernels on the CPU queue and on the GPU queue, side by side

The `gpu_cases` suite covers float32 (and TF32) matrix multiplication at n = 1000..10000, an image
pipeline at 2048 and 4096 in batches of 1 and 2, and a Gaussian blur. It runs as two AWS Batch
jobs: one on `airbatch-cpu`, and one on `airbatch-gpu` with the GPU job definition
(`resourceRequirements` GPU=1). Each job runs all its cases in one process, so CUDA warm-up is
paid once, and the first call of each case is timed on its own.

**compare** joins both sides into a table (CPU seconds, GPU seconds, speedup, percent of the
device's peak) and a log-scale bar chart, stores both under
`DATA_ROOT/gpu_benchmark/<run>/`, and notifies. Where no CUDA device is visible, the GPU rows say
"no CUDA device"; no number is made up.

**Params**: `small` (shrink every case for a quick pass; on by default on the local endpoint, whose
"GPU" queue is this machine's CPU too and the full suite holds it for over half an hour), `cases`
(ids; empty: all), `repeats`. `plan` refuses a conf key the DAG does not have (naming the closest
param), an unknown case id and a repeated one, before any job is submitted.
"""
from __future__ import annotations

import os

import pendulum

from airflow.sdk import Param, dag

from operators.kit import check_conf, dag_params, stage
from operators.kit.batch import SHARD_LABEL, UnitsOfWorkOperator
from operators.kit.notify import FailureNotifier


@dag(
    dag_id="gpu_batch_benchmark",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["gpu", "benchmark", "batch"],
    default_args={"on_failure_callback": FailureNotifier()},
    params=dag_params({
        "small": Param(os.environ.get("BATCH_ENV_TYPE") == "UNMANAGED", type="boolean", description="matmul n/10, images side/16: a quick pass"),
        "cases": Param([], type="array", items={"type": "string"}, description="case ids; empty: every case"),
        "repeats": Param(3, type="integer", minimum=1, maximum=20,
                         description="steady-state calls timed per case (their median is reported; the first call apart)"),
    }),
)
def gpu_batch_benchmark():
    @stage()
    def plan(params=None, dag=None, dag_run=None, run_id=None) -> list[dict]:
        from operators.kit import engine
        from operators.pipelines.gpu import gpu_benchmark

        check_conf(dag.dag_id, dag_run.conf, dag.params)  # before any batch is written or job submitted
        return gpu_benchmark.plan(params["cases"], small=params["small"], repeats=params["repeats"],
                                  run_dir=engine.own_run_root(dag.dag_id, run_id),
                                  out_root=engine.output_root("gpu_benchmark"), nonce=run_id)

    @stage()
    def compare(shard_summaries, dag=None, run_id=None, params=None) -> dict:
        from operators.kit import engine, notify
        from operators.pipelines.gpu import gpu_benchmark

        out_dir = f"{engine.data_root()}/gpu_benchmark/{engine.safe_name(run_id)}"
        result = gpu_benchmark.report(list(shard_summaries), out_dir)
        speedup = result["suite_speedup"]
        subject = (f"[{dag.dag_id}] {len(result['table'])} cases: CPU {result['cpu_device']} vs GPU "
                   f"{result['gpu_device'] or 'none'}; suite speedup "
                   + (f"{speedup:.3g}x" if speedup else "n/a (no CUDA device)"))
        body = result["text"] + "\n\n" + "\n".join(f"{k}: {v}" for k, v in result["files"].items())
        notify.send("success", subject, body, {"dag_id": dag.dag_id, "run_id": run_id, "files": result["files"],
                                                "small": params["small"]})
        print(body)
        return {k: result[k] for k in ("files", "suite_speedup", "cpu_device", "gpu_device")} | {
            "statuses": [row["status"] for row in result["table"]]}

    runs = UnitsOfWorkOperator.partial(task_id="run_cases", map_index_template=SHARD_LABEL,
                                       poll_interval=2).expand_kwargs(plan())
    compare(runs.output)


gpu_batch_benchmark()
