"""
### naive_mapping: the baseline the engine is measured against (benchmarks/fanout_overhead.py)

One mapped task instance per unit, each running the no-op workload on its unit: what a team
writes first. It stops at `[core] max_map_length` (1024) and costs scheduler and API time per
task instance.
"""
from __future__ import annotations

import pendulum

from airflow.sdk import Param, dag, task


@dag(dag_id="naive_mapping", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     doc_md=__doc__, tags=["benchmark"], params={"units": Param(100, type="integer", minimum=1)})
def naive_mapping():
    @task
    def units(params=None) -> list[str]:
        width = max(6, len(str(params["units"] - 1)))
        return [f"u{i:0{width}d}" for i in range(params["units"])]

    @task
    def work(unit_id: str) -> int:
        import pandas as pd
        from batch_worker.workloads import get_workload

        workload = get_workload("noop")
        frame = pd.DataFrame({"unit_id": [unit_id], "seq": [0], "value": [1.0]})
        return len(workload.run(frame, workload.resolve_params({})))

    @task
    def collect(counts) -> int:
        return sum(counts)

    collect(work.expand(unit_id=units()))


naive_mapping()
