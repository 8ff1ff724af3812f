"""The Python side of `make rehearsal` (scripts/rehearsal.sh starts and stops the processes).

Every call reaches Airflow only through its REST API as the admin user (a JWT from the FAB auth
manager's /auth/token), and the local endpoint only through boto3 with the aws_default connection.
Each subcommand exits non-zero with a message that says what went wrong and where to look.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

#: What the rehearsal generates, under the names .env.example gives them for docker compose.
SECRET_NAMES = ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY",
                "AIRFLOW_ADMIN_PASSWORD")
TERMINAL = {"success", "failed"}
#: Where each kind of artefact lives under DATA_ROOT (operators/kit/engine.py, registry.py, notify.py):
#: every one must be in the bucket after the rehearsal's runs.
ARTEFACTS = {
    "batches": ("runs/", "/prep/"),
    "worklists": ("runs/", "/worklists/"),
    "shard results": ("runs/", "/results/"),
    "outputs": ("outputs/pricing/", "result.parquet"),
    "engine demo outputs": ("outputs/noop/", "result.parquet"),
    "done-markers": ("outputs/", "_DONE.json"),
    "registry": ("registry/pricing/", ".json"),
    "report": ("registry/pricing/versions/", "report.html"),
    "published prices": ("published/pricing/current/", "prices.parquet"),
    "outbox": ("outbox/", ".json"),
}


class RehearsalError(Exception):
    pass


def write_secrets(path: Path) -> None:
    """Fresh values for every secret, in env format, in a new file of mode 0600."""
    from cryptography.fernet import Fernet

    values = {name: secrets.token_urlsafe(48) for name in SECRET_NAMES}
    values["AIRFLOW_FERNET_KEY"] = Fernet.generate_key().decode()
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{name}={value}\n" for name, value in values.items())


# --- the local endpoint -----------------------------------------------------------------------------

def aws_client(service: str):
    import boto3

    conn = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    extra = conn.get("extra") or {}
    return boto3.client(service, endpoint_url=extra["endpoint_url"], region_name=extra.get("region_name"),
                        aws_access_key_id=conn["login"], aws_secret_access_key=conn["password"])


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise RehearsalError(f"DATA_ROOT must be s3://bucket/prefix for the rehearsal, not {uri!r}")
    bucket, _, prefix = uri.removeprefix("s3://").strip("/").partition("/")
    return bucket, f"{prefix}/" if prefix else ""


def create_bucket(uri: str) -> None:
    bucket, _ = split_s3(uri)
    aws_client("s3").create_bucket(Bucket=bucket)


def upload_dataset(data_root: str, rows: int, units: int, start_date: str) -> str:
    """A small pricing dataset where production's would be, in the bucket: its s3:// URI."""
    import tempfile

    from operators.pipelines.pricing import pricing_data

    bucket, prefix = split_s3(data_root)
    under = f"{prefix}lake/pricing/rows{rows}-units{units}-from{start_date}"
    s3 = aws_client("s3")
    with tempfile.TemporaryDirectory() as scratch:
        pricing_data.generate(Path(scratch), rows=rows, units=units, start_date=start_date, seed=3, overwrite=True)
        for path in sorted(Path(scratch).rglob("*")):
            if path.is_file():
                s3.upload_file(str(path), bucket, f"{under}/{path.relative_to(scratch)}")
    return f"s3://{bucket}/{under}"


def bucket_keys(uri: str) -> list[str]:
    bucket, prefix = split_s3(uri)
    pages = aws_client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"][len(prefix):] for page in pages for obj in page.get("Contents", [])]


def shard_jobs(dag_id: str, since_ms: int) -> dict[str, list[str]]:
    """Array jobs (parents only) of `dag_id`'s shards created at or after `since_ms`, by job name."""
    batch = aws_client("batch")
    found: dict[str, list[str]] = {}
    for queue in batch.describe_job_queues()["jobQueues"]:
        pages = batch.get_paginator("list_jobs").paginate(
            jobQueue=queue["jobQueueName"], filters=[{"name": "JOB_NAME", "values": [f"{dag_id}-run_shard-*"]}])
        for page in pages:
            for job in page["jobSummaryList"]:
                if ":" not in job["jobId"] and job.get("createdAt", 0) >= since_ms:
                    found.setdefault(job["jobName"], []).append(job["jobId"])
    return found


# --- Airflow's REST API -----------------------------------------------------------------------------

class Api:
    def __init__(self, base_url: str, username: str, password: str):
        self.base = base_url.rstrip("/")
        reply = self._call("POST", "/auth/token", {"username": username, "password": password}, token=None)
        self.token = reply["access_token"]

    def _call(self, method: str, path: str, body=None, token: str | None = "") -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = self.token if token == "" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                text = reply.read().decode()
        except urllib.error.HTTPError as error:
            raise RehearsalError(f"{method} {path}: HTTP {error.code}: {error.read().decode()[:500]}") from None
        return json.loads(text) if text else {}

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def trigger(self, dag_id: str, conf: dict, label: str, logical_date: str | None = None,
                interval_end: str | None = None) -> str:
        """A run with `conf`; with `interval_end`, of the week before it. `logical_date` "next" takes the
        DAG's next scheduled interval, so that unpausing it does not start a run of its own there."""
        if logical_date == "next":
            logical_date = self.get(f"/api/v2/dags/{dag_id}")["next_dagrun_logical_date"]
        run_id = f"rehearsal__{label}__{datetime.now().strftime('%Y%m%dT%H%M%S%f')}"
        body = {"dag_run_id": run_id, "conf": conf, "logical_date": logical_date}
        if interval_end:
            end = datetime.fromisoformat(f"{interval_end}T00:00:00+00:00")
            body.update(data_interval_start=(end - timedelta(days=7)).isoformat(), data_interval_end=end.isoformat())
        return self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances?limit=1000")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        entry = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}/xcomEntries/"
                         "return_value?deserialize=true")
        return entry["value"]

    def task_log(self, dag_id: str, run_id: str, ti: dict) -> str:
        """The logs of every try of the task instance, oldest first (a deferral may be in an earlier try's)."""
        tries = []
        for try_number in range(1, int(ti["try_number"]) + 1):
            path = (f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{ti['task_id']}/logs/{try_number}"
                    f"?map_index={ti['map_index']}&full_content=true")
            content = self.get(path).get("content", [])
            tries.append("\n".join(json.dumps(line) if not isinstance(line, str) else line for line in content))
        return "\n".join(tries)


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def api_from_env() -> Api:
    password = Path(os.environ["REHEARSAL_ADMIN_PASSWORD_FILE"]).read_text().strip()
    return Api(os.environ["AIRFLOW__API__BASE_URL"], os.environ.get("AIRFLOW_ADMIN_USERNAME", "admin"), password)


def unhealthy(base_url: str, since: datetime) -> list[str]:
    """Components not yet healthy with a heartbeat after `since` (/api/v2/monitor/health needs no login)."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/api/v2/monitor/health", timeout=10) as reply:
            health = json.load(reply)
    except (OSError, ValueError):
        return ["api-server"]
    beats = {"scheduler": "latest_scheduler_heartbeat", "triggerer": "latest_triggerer_heartbeat",
             "dag_processor": "latest_dag_processor_heartbeat"}
    waiting = []
    for name in ("metadatabase", *beats):
        info = health.get(name) or {}
        beat = info.get(beats.get(name, ""))
        if info.get("status") != "healthy" or (name in beats and not (beat and datetime.fromisoformat(beat) > since)):
            waiting.append(name.replace("_", "-"))
    return waiting


def wait_for(what: str, check, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RehearsalError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


def wait_run(api: Api, dag_id: str, run_id: str, timeout: float) -> None:
    state = wait_for(f"{dag_id} run {run_id} to end",
                     lambda: (s := api.run_state(dag_id, run_id)) in TERMINAL and s, timeout)
    if state != "success":
        failed = [f"{ti['task_id']}[{ti['map_index']}]" for ti in api.task_instances(dag_id, run_id)
                  if ti["state"] not in ("success", "skipped")]
        raise RehearsalError(f"{dag_id} run {run_id} ended {state}; tasks not successful: {', '.join(failed)} "
                             "(their logs: the Airflow UI, or $AIRFLOW_HOME/logs)")


def shards_waiting(api: Api, dag_id: str, run_id: str) -> list[dict]:
    return [ti for ti in api.task_instances(dag_id, run_id) if ti["task_id"] == "run_shard" and ti["state"] == "deferred"]


# --- checks -----------------------------------------------------------------------------------------

def check_deferred(api: Api, dag_id: str, run_id: str) -> int:
    """Every shard task of the run paused as DEFERRED and resumed after its trigger fired in the triggerer."""
    shards = [ti for ti in api.task_instances(dag_id, run_id) if ti["task_id"] == "run_shard"]
    if not shards:
        raise RehearsalError(f"{dag_id} run {run_id}: no run_shard task instances")
    for ti in shards:
        log = api.task_log(dag_id, run_id, ti)
        if "DEFERRED" not in log or "BatchJobWaitTrigger" not in log:
            raise RehearsalError(f"{dag_id} run {run_id}: shard {ti['map_index']} did not wait in the triggerer "
                                 "(no deferral with BatchJobWaitTrigger in its log)")
    return len(shards)


def check_artefacts(data_root: str) -> dict[str, int]:
    keys = bucket_keys(data_root)
    counts = {kind: sum(1 for key in keys if key.startswith(head) and tail in key[len(head):])
              for kind, (head, tail) in ARTEFACTS.items()}
    missing = [kind for kind, count in counts.items() if not count]
    if missing:
        raise RehearsalError(f"not in {data_root}: {', '.join(missing)} ({len(keys)} objects there)")
    return counts


def set_capacity(compute_environment: str, state: str) -> None:
    """The local endpoint's capacity shortage: a DISABLED compute environment places nothing, its jobs stay RUNNABLE."""
    aws_client("batch").update_compute_environment(computeEnvironment=compute_environment, state=state)


def check_failover(api: Api, dag_id: str, run_id: str) -> list[str]:
    """The capacity failovers of the run's shards, each from a shard that waited in the triggerer: one line each."""
    import re

    lines = []
    for ti in [ti for ti in api.task_instances(dag_id, run_id) if ti["task_id"] == "run_shard"]:
        log = api.task_log(dag_id, run_id, ti)
        found = re.findall(r"capacity failover: ([^\"\n]+)", log)
        if found and ("DEFERRED" not in log or "BatchJobWaitTrigger" not in log):
            raise RehearsalError(f"{dag_id} run {run_id}: shard {ti['map_index']} failed over without waiting in the "
                                 "triggerer (no deferral with BatchJobWaitTrigger in its log)")
        lines += [f"{dag_id} shard {ti['map_index']}, deferred in the triggerer: {line}" for line in found]
    if not lines:
        raise RehearsalError(f"{dag_id} run {run_id}: no shard made a capacity failover (no 'capacity failover:' line "
                             "in a run_shard log)")
    return lines


def alarm_state(dag_id: str, key: str, timeout: float) -> str:
    """`alarm <name> <state>`: the alarm of `dag_id` as CloudWatch holds it, once in ALARM, with its delivered
    notification (the outbox under DATA_ROOT, where the notifiers put every message)."""
    name = f"airbatch-{dag_id}-{key}"
    cloudwatch = aws_client("cloudwatch")

    def alarmed():
        found = cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"]
        if not found:
            raise RehearsalError(f"alarm {name} does not exist: provisioning did not create it "
                                 "(config/batch_resources.json, alarms)")
        return found[0] if found[0]["StateValue"] == "ALARM" else None

    alarm = wait_for(f"alarm {name} in ALARM", alarmed, timeout)
    bucket, prefix = split_s3(os.environ["DATA_ROOT"])
    s3 = aws_client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}outbox/")
            for o in page.get("Contents", []) if o["Key"].endswith("-alarm.json")]
    notified = [k for k in keys if name in s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode()]
    if not notified:
        raise RehearsalError(f"alarm {name} is in ALARM but no alarm notification is in the outbox ({len(keys)} others)")
    return (f"alarm {name} {alarm['StateValue']}: {alarm['StateReason']}; notified "
            f"({len(notified)} message(s), actions {', '.join(alarm.get('AlarmActions') or []) or 'none'})")


def local_files_since(folder: str, since: float) -> list[str]:
    root = Path(folder)
    if not root.is_dir():
        return []
    return [str(path) for path in root.rglob("*") if path.is_file() and path.stat().st_mtime >= since]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/rehearsal.py")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("secrets").add_argument("file", type=Path)
    sub.add_parser("bucket")
    healthy = sub.add_parser("healthy")
    healthy.add_argument("--since", required=True)
    healthy.add_argument("--timeout", type=float, default=360)
    trigger = sub.add_parser("trigger")
    trigger.add_argument("dag_id")
    trigger.add_argument("--conf", default="{}")
    trigger.add_argument("--logical-date", help="YYYY-MM-DDTHH:MM:SSZ, or next: the next scheduled interval")
    trigger.add_argument("--interval-end", help="YYYY-MM-DD: the run's data interval is the week before")
    trigger.add_argument("--label", required=True)
    sub.add_parser("unpause").add_argument("dag_ids", nargs="+")
    sub.add_parser("dataset")
    for name in ("wait", "wait-deferred", "deferred"):
        command = sub.add_parser(name)
        command.add_argument("dag_id")
        command.add_argument("run_id")
        command.add_argument("--timeout", type=float, default=600)
    cached = sub.add_parser("cached")
    cached.add_argument("dag_id")
    cached.add_argument("run_id")
    jobs = sub.add_parser("one-job-per-shard")
    jobs.add_argument("dag_id")
    jobs.add_argument("run_id")
    jobs.add_argument("--since-ms", type=int, required=True)
    capacity = sub.add_parser("capacity")
    capacity.add_argument("compute_environment")
    capacity.add_argument("state", choices=["ENABLED", "DISABLED"])
    failover = sub.add_parser("failover")
    failover.add_argument("dag_id")
    failover.add_argument("run_id")
    alarm = sub.add_parser("alarm")
    alarm.add_argument("dag_id")
    alarm.add_argument("key")
    alarm.add_argument("--timeout", type=float, default=60)
    sub.add_parser("artefacts")
    local = sub.add_parser("nothing-local")
    local.add_argument("folder")
    local.add_argument("--since", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "secrets":
            write_secrets(args.file)
        elif args.command == "bucket":
            create_bucket(os.environ["DATA_ROOT"])
        elif args.command == "healthy":
            since = datetime.fromisoformat(args.since)
            wait_for("Airflow's components healthy", lambda: not unhealthy(os.environ["AIRFLOW__API__BASE_URL"], since),
                     args.timeout)
        elif args.command == "trigger":
            print(api_from_env().trigger(args.dag_id, json.loads(args.conf), args.label, args.logical_date,
                                         args.interval_end))
        elif args.command == "unpause":
            api = api_from_env()
            for dag_id in args.dag_ids:
                api.unpause(dag_id)
        elif args.command == "dataset":
            print(upload_dataset(os.environ["DATA_ROOT"], rows=12_000, units=200, start_date="2026-01-05"))
        elif args.command == "wait":
            wait_run(api_from_env(), args.dag_id, args.run_id, args.timeout)
        elif args.command == "wait-deferred":
            api = api_from_env()
            waiting = wait_for(f"a deferred shard of {args.dag_id} run {args.run_id}",
                               lambda: shards_waiting(api, args.dag_id, args.run_id), args.timeout, interval=0.5)
            print(f"{len(waiting)} shard(s) waiting in the triggerer")
        elif args.command == "deferred":
            count = check_deferred(api_from_env(), args.dag_id, args.run_id)
            print(f"check: {args.dag_id}: all {count} shard tasks deferred and resumed from the triggerer")
        elif args.command == "cached":
            summary = api_from_env().xcom(args.dag_id, args.run_id, "notify")
            fanout = summary["fanout"]
            if not (fanout["cached"] == fanout["batches"] > 0 and fanout["succeeded"] == 0):
                raise RehearsalError(f"{args.dag_id} run {args.run_id} recomputed batches: {fanout}")
            print(f"check: second {args.dag_id} run: all {fanout['cached']} batches cached, none recomputed")
        elif args.command == "one-job-per-shard":
            api = api_from_env()
            shards = [ti for ti in api.task_instances(args.dag_id, args.run_id) if ti["task_id"] == "run_shard"]
            jobs = shard_jobs(args.dag_id, args.since_ms)
            counts = {name: len(ids) for name, ids in jobs.items()}
            if len(jobs) != len(shards) or any(count != 1 for count in counts.values()):
                raise RehearsalError(f"{args.dag_id} run {args.run_id}: {len(shards)} shards but Batch jobs {counts}")
            print(f"check: triggerer restarted: {len(shards)} shards, one Batch job each")
        elif args.command == "capacity":
            set_capacity(args.compute_environment, args.state)
            print(f"compute environment {args.compute_environment}: {args.state}")
        elif args.command == "failover":
            for line in check_failover(api_from_env(), args.dag_id, args.run_id):
                print(f"capacity failover: {line}")
        elif args.command == "alarm":
            print(alarm_state(args.dag_id, args.key, args.timeout))
        elif args.command == "artefacts":
            counts = check_artefacts(os.environ["DATA_ROOT"])
            print(f"check: every artefact in {os.environ['DATA_ROOT']}: "
                  + ", ".join(f"{kind} {count}" for kind, count in counts.items()))
        elif args.command == "nothing-local":
            written = local_files_since(args.folder, args.since)
            if written:
                raise RehearsalError(f"written under the local DATA_ROOT {args.folder}: {written[:5]}")
            print(f"check: nothing written under the local DATA_ROOT {args.folder}")
    except RehearsalError as error:
        print(f"rehearsal: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
