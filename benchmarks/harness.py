"""The Airflow side every DAG benchmark shares, so that each times its pipeline and not the test harness.

A benchmark runs its DAG with `dag.test()`: one process, with Airflow's execution API in that process
instead of the api-server. Two of `dag.test()`'s costs belong to that harness, not to a run:

- the in-process execution API's first request builds its versioned routes (cadwyn), 3-5 s on the
  2-core machine. Under the scheduler that is the api-server's start, paid once, not per run.
  `start_execution_api` pays it before the clock starts and returns the seconds, which each
  benchmark prints beside its figures;
- every `dag.test()` parses and serialises each DAG of the bundle its DAG belongs to into the
  metadata DB, which under the scheduler is the dag-processor's standing work. The project's
  `dags/` folder holds eight DAGs (about a second of serialisation); `airflow_home` gives the
  benchmark a bundle holding only the DAG files it runs.

Everything a run does itself stays on the clock: each task's imports, prep, the array jobs, the
polls, the evaluation, the registry and the notification. `run_pipeline` is that run as every
pipeline benchmark does it: on the local endpoint, with what the benchmarks read of it afterwards.
"""
from __future__ import annotations

import bisect
import json
import os
import shutil
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import pandas as pd
    from airflow.models.dagrun import DagRun

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
sys.path.insert(0, str(REPO / "scripts"))  # soak.py's /proc walks


def airflow_home(name: str, dag_files: Sequence[Path]) -> Path:
    """Configure this process's Airflow under `.airflow/<name>` with one DAG bundle holding only `dag_files`
    (links to them), and migrate its DB when Airflow's version changed. Call before anything imports Airflow."""
    from localaws.stack import configure, local_bundle, migrate
    from operators.kit.param_checks import check_param_schemas_once

    home = REPO / ".airflow" / name
    configure(home)
    # dag.test() re-checks every Param's schema before each task, which a scheduler does not: not the pipeline's time
    check_param_schemas_once()
    bundle = home / "bundles" / name
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    for dag_file in dag_files:
        (bundle / dag_file.name).symlink_to(dag_file.resolve())
    os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([local_bundle(f"bench-{name}", bundle)])
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    migrate(home)
    return home


def start_execution_api() -> float:
    """Start `dag.test()`'s in-process execution API and answer its first request; the seconds it took."""
    import httpx
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    started = time.perf_counter()
    api = in_process_api_server()  # cached: the one every later dag.test() in this process uses
    httpx.Client(transport=api.transport, base_url="http://in-process.invalid").get("/health").raise_for_status()
    return time.perf_counter() - started


def timed_run(dag_file: Path, dag_id: str | None = None, **test_kwargs: Any) -> tuple[float, "DagRun"]:
    """One `dag.test()` of the DAG in `dag_file` (its id: the file's name unless given); its seconds and run.
    Exits naming the run when it did not succeed."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    dag_id = dag_id or dag_file.stem
    bag = DagBag(dag_folder=str(dag_file))
    if bag.import_errors:
        raise SystemExit(f"{dag_file}: {bag.import_errors}")
    started = time.perf_counter()
    run = bag.dags[dag_id].test(**test_kwargs)
    elapsed = time.perf_counter() - started
    if run.state != DagRunState.SUCCESS:
        raise SystemExit(f"{dag_id} run {run.run_id} ended {run.state}")
    return elapsed, run


def harness_line(api_start_s: float) -> str:
    return (f"not timed: dag.test()'s in-process execution API started in {api_start_s:.1f} s "
            f"(the api-server's start under the scheduler, once)")


class PeriodicSampler:
    """Calls `sample()` every `interval` seconds in a daemon thread of its own while in a `with` block, and once
    more at its end (so the last reading is taken after what ran inside the block)."""

    name = "sampler"

    def __init__(self, interval: float):
        self.interval = interval
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop_event.wait(self.interval):
                break

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_event.set()
        self._thread.join(timeout=60)
        self.sample()


class CpuClock(PeriodicSampler):
    """The CPU seconds of this process and all its descendants (the endpoint's Batch jobs and their children),
    sampled against the wall clock while a run goes on, so that a task's CPU can be read off its span.

    Each sample reads every live descendant's own utime and stime (`scripts/soak.py`'s walk) and keeps
    the last value seen of each process (by pid and start time), and sums them. A process's reaped
    children's times cannot stand in for what has ended: bubblewrap's init inside a job's namespace
    lets the job's processes go without adding them there. A process that ends loses at most its last
    `interval` s, and one shorter than that is not seen, so the figure is a floor. Walking /proc every
    `interval` s costs about 1% of a core.
    """

    name = "cpu-clock"

    def __init__(self, interval: float = 0.25):
        super().__init__(interval)
        self.samples: list[tuple[float, float]] = []  # (time.time(), CPU seconds)
        self._seen: dict[tuple[int, int], float] = {}  # (pid, start time in ticks) -> its CPU seconds when last seen
        self._lock = threading.Lock()

    def read(self) -> float:
        from soak import with_descendants

        ticks = os.sysconf("SC_CLK_TCK")
        with self._lock:
            for pid in with_descendants({os.getpid(): "this process"}):
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    self._seen[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / ticks
                except (OSError, IndexError, ValueError):  # ended meanwhile: its last value stays
                    pass
            return sum(self._seen.values())

    def sample(self) -> None:
        self.samples.append((time.time(), self.read()))


def cpu_between(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """The CPU seconds spent between two wall-clock times, each end read off the samples by linear interpolation
    (clamped to the first and last sample)."""
    def at(moment: float) -> float:
        times = [t for t, _ in samples]
        i = bisect.bisect_left(times, moment)
        if i == 0:
            return samples[0][1]
        if i == len(samples):
            return samples[-1][1]
        (t0, c0), (t1, c1) = samples[i - 1], samples[i]
        return c0 + (c1 - c0) * (moment - t0) / (t1 - t0) if t1 > t0 else c1

    return max(0.0, at(end) - at(start))


def task_cpu(samples: Sequence[tuple[float, float]], rows) -> dict[str, float]:
    """CPU seconds by task_id over each task's span (its first instance's start to its last one's end), from
    (task_id, start, end) rows (`operators.kit.summary.task_rows`)."""
    from operators.kit.summary import task_windows

    return {task_id: cpu_between(samples, start.timestamp(), end.timestamp())
            for task_id, (start, end, _) in task_windows(rows).items()}


@dataclass
class PipelineRun:
    """One timed `dag.test()` of a pipeline, and what the benchmarks read of it."""

    seconds: float  # `timed_run`'s clock: after the execution API's start to the end of the DAG run
    api_start_s: float  # `start_execution_api`, not on that clock
    run: "DagRun"
    prepared: dict  # the `prepare` task's XCom (manifest_uri, rows_in, rows_ok, rows_quarantined, ...)
    fanout: dict  # the `collect` task's XCom (results, batches, shards, ...)
    outputs: "pd.DataFrame"  # every batch's result, typed by the workload's declared output
    task_times: list[tuple[str, int, float]]  # (task_id, instances, seconds) in the order the tasks started
    cpu_s: float = 0.0  # CPU seconds of the run on `seconds`' clock, this process and its descendants (CpuClock)
    task_cpu_s: dict[str, float] | None = None  # CPU seconds by task, over each task's span

    def xcom(self, task_id: str) -> Any:
        from operators.kit.summary import xcom_value

        return xcom_value(self.run.dag_id, self.run.run_id, task_id)


def run_pipeline(dag_file: Path, *, logical_date: Any, run_conf: dict, data_root: Path, input_prefix: str,
                 vcpus: int | None) -> PipelineRun:
    """`timed_run` of the pipeline in `dag_file` with DATA_ROOT at `data_root` and its input allowed under
    `input_prefix` (the generated input lies outside DATA_ROOT), on a local endpoint of `vcpus` started
    for it (None: the one already running, as in the tests); prints its task times."""
    from localaws.stack import running_endpoint

    os.environ["DATA_ROOT"] = str(data_root)
    os.environ["AIRBATCH_INPUT_PREFIXES"] = input_prefix
    with running_endpoint(vcpus=vcpus) if vcpus is not None else nullcontext():
        from operators.kit.engine import read_run_outputs
        from operators.kit.summary import format_task_times, task_rows, task_spans, xcom_value

        api_start_s = start_execution_api()
        with CpuClock() as clock:
            cpu_before = clock.read()
            seconds, run = timed_run(dag_file, logical_date=logical_date, run_conf=run_conf)
            cpu_s = clock.read() - cpu_before
        fanout = xcom_value(run.dag_id, run.run_id, "collect")
        rows = task_rows(run.dag_id, run.run_id)
        times = task_spans(rows)
        print("pipeline task times:")
        print(format_task_times(times))
        return PipelineRun(seconds=seconds, api_start_s=api_start_s, run=run,
                           prepared=xcom_value(run.dag_id, run.run_id, "prepare"), fanout=fanout,
                           outputs=read_run_outputs(fanout["results"], None), task_times=times, cpu_s=cpu_s,
                           task_cpu_s=task_cpu(clock.samples, rows))
