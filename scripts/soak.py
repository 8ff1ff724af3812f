"""make soak: the always-on stack (`make up`) under a day's use at once, checked end to end.

On free ports, in a private home, with everything reached as a user reaches it (the REST API, the
`airflow` CLI, signals to processes):

1. `make up`, then at once: `--runs` triggered `units_of_work` runs (no logical date, as the official
   client sends them), a slow run whose shard fails and is cleared, a backfill of four weeks of
   `pricing_optimization` on a small dataset through the REST API, then one more week through the CLI;
2. mid-run: SIGKILL to the triggerer (make up restarts it), SIGTERM to make up's process group and
   `make up` again;
3. checks: every run ends in success with no step but the clear; every shard attempt submitted at most
   one Batch job and no job is unaccounted for; every batch is done exactly once (computed or cached,
   none failed);
4. figures: trigger-to-first-Batch-submit latency (p50, p95), make up's CPU while idle for
   `--idle-seconds`, the stack's memory (RSS by component), printed and written as JSON.

Exits non-zero with what went wrong and where the logs are. Leaves nothing running.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from rehearsal import Api, RehearsalError, quote, wait_for  # noqa: E402  (scripts/ is not a package)

from localaws.stack import local_env  # noqa: E402

ENGINE_CONF = {"units": 200, "bucket_count": 20, "batches_per_shard": 10}
# Shards that run long enough to fail one on purpose and to restart the stack under them.
SLOW_CONF = {"units": 60, "bucket_count": 6, "batches_per_shard": 3, "sleep_s": 4.0}
# Small pricing runs approved by thresholds (as make rehearsal's).
PRICING_CONF = {"bucket_count": 20, "batches_per_shard": 10, "approve_mape_p50": 10, "approve_coverage": 0,
                "approve_degenerate_share": 1, "approve_mape_p50_increase": 10, "approve_input_shift": 100,
                "approve_dead_letter_share": 1, "reject_mape_p50": 10, "reject_coverage": 0,
                "reject_degenerate_share": 1, "reject_mape_p50_increase": 10, "reject_dead_letter_share": 1}
REST_BACKFILL = ("2026-01-12T00:00:00+00:00", "2026-02-02T00:00:00+00:00")  # four weekly intervals
CLI_BACKFILL = ("2026-02-09T00:00:00+00:00", "2026-02-09T00:00:00+00:00")  # one more
RUN_TIMEOUT = 1800


class SoakError(Exception):
    pass


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def say(text: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


class Stack:
    """`make up` (scripts/up.sh, as the Makefile runs it) in `root`, on free ports."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "airflow"
        self.env = {key: value for key, value in os.environ.items()
                    if key not in local_env() and not key.startswith("AIRFLOW")}
        self.env.update(AIRFLOW_HOME=str(self.home), DATA_ROOT=str(root / "data"), LOCALAWS_PORT=str(free_port()),
                        AIRFLOW__API__PORT=str(free_port()), UP_WATCH_SECONDS="5")
        self.base = f"http://127.0.0.1:{self.env['AIRFLOW__API__PORT']}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def up(self) -> None:
        self.starts += 1
        self.log = self.root / f"up-{self.starts}.out"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(["bash", "-c", "source scripts/env.sh && exec scripts/up.sh"], cwd=REPO,
                                            env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        started = time.monotonic()
        wait_for("make up to say it is ready", self._ready, 900, interval=1)
        say(f"make up #{self.starts} ready in {time.monotonic() - started:.0f} s ({self.base}, log {self.log})")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise SoakError(f"make up exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
        return "Airflow is ready" in self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> float:
        """`sig` to make up's process group; seconds until it and every component are gone."""
        started = time.monotonic()
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=timeout)
        wait_for("every component of the stack to stop", lambda: not self.processes(), timeout, interval=0.5)
        return time.monotonic() - started

    def processes(self) -> dict[int, str]:
        """pid -> command of every live process started for this stack (by its home in the command line,
        environment or log files)."""
        found, needle, mine = {}, str(self.root).encode(), own_ancestry()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in mine:
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                if not cmdline or b"\nState:\tZ" in (proc / "status").read_bytes():
                    continue
                streams = " ".join(os.readlink(proc / "fd" / fd) for fd in ("1", "2") if (proc / "fd" / fd).exists())
                if needle in cmdline or needle in (proc / "environ").read_bytes() or str(self.root) in streams:
                    found[int(proc.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
        return found

    def sessions(self) -> dict[str, int]:
        lines = (self.home / "stack.pids").read_text().split("\n")
        return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}

    def api(self) -> Api:
        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        return Api(self.base, "admin", passwords["admin"])

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", 'source scripts/env.sh && exec airflow "$@"', "airflow", *args], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=300)

    def batch(self):
        import boto3

        from localaws.credentials import Credentials

        client = Credentials.load(str(self.home / "localaws-credentials.json")).client
        return boto3.client("batch", endpoint_url=f"http://127.0.0.1:{self.env['LOCALAWS_PORT']}",
                            region_name="us-east-1", aws_access_key_id=client.access_key_id,
                            aws_secret_access_key=client.secret_access_key)

    def shut_down(self) -> None:
        """Whatever happened: stop make up if it runs, then kill anything of the stack still alive."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.stop(signal.SIGTERM)
            except Exception:  # a stop that fails still ends in the kill below
                pass
        self.kill()

    def kill(self) -> None:
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def parent_pid(pid: int) -> int | None:
    """The parent of a live process; None once it is gone."""
    try:
        # the field after the command name, which may hold spaces and parentheses
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def own_ancestry() -> set[int]:
    """This process and those it runs under (`make soak ... --root DIR` names the folder too)."""
    pids, pid = set(), os.getpid()
    while pid is not None and pid > 1 and pid not in pids:
        pids.add(pid)
        pid = parent_pid(pid)
    return pids


def command_of(pid: int) -> str | None:
    """A live process's command line, its arguments joined by spaces; None once it is gone (or a kernel thread)."""
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                or None)
    except OSError:
        return None


def with_descendants(processes: dict[int, str]) -> dict[int, str]:
    """`processes` (pid -> command) and every live descendant of theirs: a task's own process (forked by an
    executor worker, its title and environment rewritten, its output a pipe) and a Batch job's (under bwrap,
    started by the endpoint) name the stack nowhere themselves."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (parent := parent_pid(int(proc.name))) is not None:
            children.setdefault(parent, []).append(int(proc.name))
    found, pending = dict(processes), list(processes)
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in found and (command := command_of(child)):
                found[child] = command
                pending.append(child)
    return found


def tree_cpu_seconds(pids) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # its own utime and stime, and cutime and cstime: the children it reaped (health checks, tasks)
            total += sum(int(value) for value in fields[11:15]) / ticks
        except (OSError, IndexError):
            pass
    return total


#: How each process of the stack names itself (Airflow's processes rename themselves), and its kind, first
#: match first: an idle LocalExecutor worker is "airflow worker -- LocalExecutor: <idle>", one running a task
#: "airflow supervisor: ...", and the task's own process (forked by the supervisor) "airflow worker -- <id>". A Batch
#: job's processes (bwrap, env, the worker) carry its command, `batch-worker`, and paths of the endpoint's folders.
KINDS = (("batch-worker", "Batch jobs"), ("batch_worker", "Batch jobs"),
         ("api_server", "api-server"), ("api-server", "api-server"), ("dag-processor", "dag-processor"),
         ("dag_processor", "dag-processor"), ("scheduler", "scheduler"), ("triggerer", "triggerer"),
         ("LocalExecutor", "executor workers"), ("supervisor", "task processes"), ("airflow worker", "task processes"),
         ("postgres", "postgres"), ("localaws", "local endpoint"), ("up.sh", "make up"))


def kind_of(command: str) -> str:
    return next((name for needle, name in KINDS if needle in command), "other")


def memory_by_kind(processes: dict[int, str]) -> dict[str, dict[str, float]]:
    """{kind: {"rss_mb", "pss_mb", "processes"}}: PSS shares the pages forked processes have in common, so
    it adds up to what the stack really holds; RSS counts them once per process."""
    kinds: dict[str, dict[str, float]] = {}
    for pid, command in processes.items():
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        values = {line.split()[0].rstrip(":"): int(line.split()[1]) for line in rollup[1:] if len(line.split()) >= 2}
        entry = kinds.setdefault(kind_of(command), {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0})
        entry["rss_mb"] += values.get("Rss", 0) / 1024
        entry["pss_mb"] += values.get("Pss", 0) / 1024
        entry["processes"] += 1
    return {kind: {key: round(value) for key, value in entry.items()} for kind, entry in sorted(kinds.items())}


def memory_figures(processes: dict[int, str]) -> dict:
    memory = memory_by_kind(processes)
    return {"total_pss_mb": sum(entry["pss_mb"] for entry in memory.values()),
            "total_rss_mb": sum(entry["rss_mb"] for entry in memory.values()), "by_kind": memory}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def run_detail(api: Api, dag_id: str, run_id: str) -> dict:
    return api.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}")


def all_runs(api: Api, dag_id: str) -> list[dict]:
    return api.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=1000")["dag_runs"]


def shard_tis(api: Api, dag_id: str, run_id: str) -> list[dict]:
    return [ti for ti in api.task_instances(dag_id, run_id) if ti["task_id"] == "run_shard"]


def fanout_of(api: Api, dag_id: str, run_id: str) -> dict:
    task = "collect" if dag_id == "pricing_optimization" else "summary"
    return api.xcom(dag_id, run_id, task)


def soak(args: argparse.Namespace) -> dict:
    root = Path(args.root or tempfile.mkdtemp(prefix="airbatch-soak-"))
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    stack = Stack(root)
    figures: dict = {"root": str(root)}
    try:
        stack.up()
        api = stack.api()
        dataset = root / "data" / "lake" / "pricing-soak"
        from operators.pipelines.pricing import pricing_data

        # A small market from before the backfills' windows to a week from now: every window has rows (a day
        # holds a row of nearly every unit: 195 of 200).
        days = (datetime.now(timezone.utc).date() - date(2025, 12, 1)).days + 7
        pricing_data.generate(dataset, rows=195 * days, units=200, start_date="2025-12-01", days=days, seed=5,
                              overwrite=True)
        pricing_conf = {**PRICING_CONF, "input_uri": str(dataset)}

        # -- everything at once ---------------------------------------------------------------------
        triggered = {}
        for number in range(args.runs):
            run_id = f"soak__engine__{number:02d}"
            api._call("POST", "/api/v2/dags/units_of_work/dagRuns",
                      {"dag_run_id": run_id, "logical_date": None, "conf": {**ENGINE_CONF, "salt": run_id}})
            triggered[run_id] = time.time()
        slow = "soak__slow"
        api._call("POST", "/api/v2/dags/units_of_work/dagRuns",
                  {"dag_run_id": slow, "logical_date": None, "conf": {**SLOW_CONF, "salt": slow}})
        say(f"triggered {args.runs} units_of_work runs and {slow} through the REST API")
        # Scheduled DAGs start paused. The latest interval is triggered first with the small conf, so that
        # unpausing does not start it with the full defaults; a backfill's runs run only while unpaused.
        latest = api.trigger("pricing_optimization", pricing_conf, "latest", logical_date="next")
        api.unpause("pricing_optimization")
        backfill = api._call("POST", "/api/v2/backfills", {
            "dag_id": "pricing_optimization", "from_date": REST_BACKFILL[0], "to_date": REST_BACKFILL[1],
            "dag_run_conf": pricing_conf, "max_active_runs": 1, "reprocess_behavior": "none"})
        say(f"backfill {backfill['id']} of pricing_optimization {REST_BACKFILL[0][:10]}..{REST_BACKFILL[1][:10]} "
            "through the REST API")

        # -- a shard that fails, cleared ------------------------------------------------------------
        batch = stack.batch()
        shard = wait_for(f"{slow}'s shard to submit its Batch job",
                         lambda: [ti for ti in shard_tis(api, "units_of_work", slow) if ti["state"] == "running"],
                         600, interval=1)[0]
        job_ids = wait_for(f"{slow}'s running Batch job", lambda: running_parent_jobs(batch, "units_of_work", slow, shard["map_index"]),
                           300,
                           interval=0.5)
        for job_id in job_ids:
            batch.terminate_job(jobId=job_id, reason="soak: a shard that fails")
        say(f"terminated {slow}'s Batch job(s) {job_ids}: the shard's try fails")
        # A terminated job's shard fails for good after its retry's job is terminated too.
        wait_for(f"{slow}'s shard to be failed", lambda: _shard_state(api, slow, shard["map_index"], batch), 900,
                 interval=1)
        api._call("POST", "/api/v2/dags/units_of_work/clearTaskInstances", {
            "dry_run": False, "dag_run_id": slow, "task_ids": [["run_shard", shard["map_index"]]],
            "only_failed": True, "include_downstream": True, "reset_dag_runs": True})
        say(f"cleared {slow}'s failed shard {shard['map_index']} through the REST API")

        # -- the triggerer killed, the stack stopped and started mid-run ----------------------------
        triggerer = stack.sessions()["triggerer"]
        os.kill(triggerer, signal.SIGKILL)
        wait_for("make up to restart the killed triggerer",
                 lambda: stack.sessions()["triggerer"] != triggerer and "Airflow's triggerer exited" in
                 stack.log.read_text(), 300, interval=1)
        say("SIGKILL to the triggerer: make up restarted it")
        wait_for("the backfill's first run to end", lambda: _backfill_runs_done(api, backfill["id"]) >= 1,
                 RUN_TIMEOUT, interval=2)
        # The endpoint keeps its jobs in memory: what the first one saw is read before it stops.
        created = all_parent_jobs(batch)
        figures["stop_seconds"] = round(stack.stop(signal.SIGTERM), 1)
        say(f"SIGTERM to make up's process group: everything stopped in {figures['stop_seconds']} s")
        stack.up()
        api = stack.api()
        batch = stack.batch()

        # -- one more week through the CLI, once the REST backfill has ended -------------------------
        # One backfill per DAG at a time: the next is refused until the scheduler marks this one complete.
        wait_for("the REST backfill to be complete",
                 lambda: api.get(f"/api/v2/backfills/{backfill['id']}").get("completed_at"), RUN_TIMEOUT, interval=3)
        made = stack.cli("backfill", "create", "--dag-id", "pricing_optimization", "--from-date", CLI_BACKFILL[0],
                            "--to-date", CLI_BACKFILL[1], "--dag-run-conf", json.dumps(pricing_conf),
                            "--max-active-runs", "1", "--reprocess-behavior", "none")
        if made.returncode != 0:
            raise SoakError(f"airflow backfill create failed:\n{made.stdout[-2000:]}\n{made.stderr[-2000:]}")
        say(f"backfill of pricing_optimization {CLI_BACKFILL[0][:10]} through the CLI")

        # -- every run ends in success --------------------------------------------------------------
        def ended(dag_id: str, expected: int) -> bool:
            runs = all_runs(api, dag_id)
            return len(runs) >= expected and all(run["state"] in ("success", "failed") for run in runs)

        wait_for("every units_of_work run to end", lambda: ended("units_of_work", args.runs + 1), RUN_TIMEOUT, 3)
        wait_for("every pricing_optimization run to end", lambda: ended("pricing_optimization", 6), RUN_TIMEOUT, 3)
        runs = {dag_id: all_runs(api, dag_id) for dag_id in ("units_of_work", "pricing_optimization")}
        failed = [f"{run['dag_id']} {run['dag_run_id']}" for found in runs.values() for run in found
                  if run["state"] != "success"]
        if failed:
            raise SoakError(f"runs not successful: {failed} (logs: {stack.home}/logs)")
        backfilled = sorted(run["logical_date"][:10] for run in runs["pricing_optimization"]
                            if run["run_type"] == "backfill")
        if len(backfilled) != 5:
            raise SoakError(f"backfill runs of pricing_optimization: {backfilled}, expected five weeks")
        for run in runs["pricing_optimization"]:
            if run["run_type"] == "backfill" and run["conf"].get("input_uri") != str(dataset):
                raise SoakError(f"backfill run {run['dag_run_id']} did not get its conf: {run['conf']}")
        say(f"every run succeeded: {len(runs['units_of_work'])} units_of_work, "
            f"{len(runs['pricing_optimization'])} pricing_optimization (backfilled {', '.join(backfilled)})")

        # -- one Batch job per shard attempt; every batch done once ----------------------------------
        known: set[str] = set()
        for dag_id, found in runs.items():
            for run in found:
                fanout = fanout_of(api, dag_id, run["dag_run_id"])
                if fanout["failed"] or fanout["succeeded"] + fanout["cached"] != fanout["batches"]:
                    raise SoakError(f"{dag_id} {run['dag_run_id']}: batches not all done once: "
                                    f"{ {k: fanout[k] for k in ('batches', 'succeeded', 'cached', 'failed')} }")
                tries = sum(int(ti["try_number"]) for ti in shard_tis(api, dag_id, run["dag_run_id"]))
                if len(fanout["job_ids"]) > tries or set(fanout["job_ids"]) & known:
                    raise SoakError(f"{dag_id} {run['dag_run_id']}: {len(fanout['job_ids'])} Batch jobs for "
                                    f"{tries} shard attempts, or a job shared with another run: {fanout['job_ids']}")
                known |= set(fanout["job_ids"])
        after_restart = all_parent_jobs(batch)
        created.update(after_restart)
        unaccounted = set(created) - known
        if unaccounted:
            raise SoakError(f"Batch jobs no shard accounts for (submitted twice?): {sorted(unaccounted)[:10]}")
        say(f"one Batch job per shard attempt at most; {len(known)} jobs in all, none unaccounted for")

        # -- figures --------------------------------------------------------------------------------
        latencies = []
        for run_id, at in triggered.items():
            created_at = [created[job] for job in fanout_of(api, "units_of_work", run_id)["job_ids"] if job in created]
            if created_at:
                latencies.append(min(created_at) - at)
        if latencies:
            figures["trigger_to_first_submit_s"] = {"p50": round(statistics.median(latencies), 1),
                                                     "p95": round(percentile(latencies, 0.95), 1),
                                                     "runs": len(latencies)}
        figures["memory_after_load"] = memory_figures(stack.processes())
        if args.idle_seconds:
            figures.update(measure_idle(stack, args.settle_seconds, args.idle_seconds))
        figures["stop_seconds_final"] = round(stack.stop(signal.SIGINT), 1)
        return figures
    finally:
        stack.shut_down()


def measure_idle(stack: Stack, settle_seconds: float, idle_seconds: float) -> dict:
    """The stack's CPU over `idle_seconds` after `settle_seconds`, and its memory then."""
    time.sleep(settle_seconds)  # the last runs' tasks and callbacks end first
    processes = stack.processes()
    # CPU of the stack's processes (those that ended meanwhile count until their last reading, those
    # started meanwhile, such as a health check's, from zero; each with the children it reaped).
    before, started = {pid: tree_cpu_seconds([pid]) for pid in processes}, time.monotonic()
    time.sleep(idle_seconds)
    after = {pid: tree_cpu_seconds([pid]) for pid in stack.processes()}
    spent = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    return {"idle_cpu_percent_of_one_core": round(100 * spent / (time.monotonic() - started), 2),
            "idle_seconds": idle_seconds, "memory_idle": memory_figures(stack.processes())}


def idle_only(args: argparse.Namespace) -> dict:
    """A fresh make up with nothing to do: its idle CPU and memory."""
    root = Path(args.root or tempfile.mkdtemp(prefix="airbatch-idle-"))
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    stack = Stack(root)
    stack.env.pop("UP_WATCH_SECONDS")  # make up's own watchdog interval, as a user runs it
    try:
        stack.up()
        figures = {"root": str(root), **measure_idle(stack, args.settle_seconds, args.idle_seconds)}
        figures["stop_seconds_final"] = round(stack.stop(signal.SIGINT), 1)
        return figures
    finally:
        stack.shut_down()


def running_parent_jobs(batch, dag_id: str, run_id: str, shard: int) -> list[str]:
    """The jobs of a run's shard not ended yet (a job names its run only through its worklist's folder)."""
    found = []
    for queue in ("airbatch-cpu", "airbatch-cpu-ondemand"):
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"):
            ids = [job["jobId"] for job in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]
                   if job["jobName"] == f"{dag_id}-run_shard-shard{shard}" and ":" not in job["jobId"]]
            for job in batch.describe_jobs(jobs=ids)["jobs"] if ids else []:
                if f"/{run_id}/" in (job.get("parameters") or {}).get("worklist", ""):
                    found.append(job["jobId"])
    return found


def all_parent_jobs(batch) -> dict[str, float]:
    """Every job that is not an array child, in every status: id -> createdAt (epoch seconds)."""
    found = {}
    for queue in ("airbatch-cpu", "airbatch-gpu", "airbatch-cpu-ondemand", "airbatch-gpu-ondemand"):
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
            for page in batch.get_paginator("list_jobs").paginate(jobQueue=queue, jobStatus=status):
                found.update({job["jobId"]: job["createdAt"] / 1000 for job in page["jobSummaryList"]
                              if ":" not in job["jobId"]})
    return found


def _shard_state(api: Api, run_id: str, map_index: int, batch) -> bool:
    """True once the shard has failed; until then, terminate each Batch job its retry submits."""
    for ti in shard_tis(api, "units_of_work", run_id):
        if ti["map_index"] == map_index:
            if ti["state"] == "failed":
                return True
            for job_id in running_parent_jobs(batch, "units_of_work", run_id, map_index):
                batch.terminate_job(jobId=job_id, reason="soak: a shard that fails")
    return False


def _backfill_runs_done(api: Api, backfill_id) -> int:
    runs = [run for run in all_runs(api, "pricing_optimization") if run["run_type"] == "backfill"]
    return sum(1 for run in runs if run["state"] in ("success", "failed"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="units_of_work runs triggered at once")
    parser.add_argument("--idle-seconds", type=float, default=300, help="how long the idle CPU is measured")
    parser.add_argument("--settle-seconds", type=float, default=60,
                        help="the wait after the last run before the idle CPU is measured")
    parser.add_argument("--root", help="the private folder of the stack (default: a new temporary one)")
    parser.add_argument("--figures", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--idle-only", action="store_true",
                        help="only start make up, measure it idle (--settle-seconds, then --idle-seconds) and stop it")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        figures = idle_only(args) if args.idle_only else soak(args)
    except (SoakError, RehearsalError) as error:
        print(f"soak: {error}", file=sys.stderr)
        return 1
    figures["seconds"] = round(time.monotonic() - started)
    print(("idle: " if args.idle_only else "soak passed: ") + json.dumps(figures))
    if args.figures:
        args.figures.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
