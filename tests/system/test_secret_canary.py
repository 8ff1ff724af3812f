"""The canary run: Airflow's AWS keys must reach no file, log, job description or job environment.

The stack runs as it does under `make demo`: the endpoint as its own `python -m localaws serve` process
(its environment holding the connection, as the scripts' does), `airflow dags test` as another. The
aws_default connection's login and password are distinctive strings, and every string param of a
units_of_work run and of a pricing run carries template syntax that would reveal them if rendered.
The keys then must appear nowhere under DATA_ROOT or AIRFLOW_HOME, in the endpoint's log, in any
Batch job description, or in the environment of any job process (sampled from /proc while jobs run).
The endpoint's credentials file is the one place that holds them, and it lies outside both folders.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest

from localaws.credentials import Credentials, KeyPair
from localaws.server import free_port, wait_until_ready
from localaws.stack import REPO
from operators.kit.job_states import STATUSES

pytestmark = pytest.mark.system

CANARY_LOGIN = "CANARYLOGIN7F3E9B1D"
CANARY_PASSWORD = "canary-password-5c2a91e4-must-stay-secret"
TEMPLATE_PASSWORD = "{{ conn.aws_default.password }}"
TEMPLATE_LOGIN = "{{ conn.aws_default.login }}"
CANARIES = (CANARY_LOGIN.encode(), CANARY_PASSWORD.encode())


def parent_pid(pid: int) -> int | None:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the command name, which may hold spaces


def descends_from(pid: int, ancestor: int) -> bool:
    while pid and pid != 1:
        if pid == ancestor:
            return True
        pid = parent_pid(pid)
    return False


class JobEnvironmentSampler(threading.Thread):
    """Reads /proc/<pid>/environ of every Batch job process (those with AWS_BATCH_JOB_ID) of one endpoint until
    stopped: its descendants only, since tests running beside this one start jobs of their own endpoints."""

    def __init__(self, endpoint_pid: int) -> None:
        super().__init__(daemon=True)
        self.endpoint_pid = endpoint_pid
        self.stop_event = threading.Event()
        self.environments: dict[int, bytes] = {}

    def run(self) -> None:
        while not self.stop_event.wait(0.02):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in self.environments:
                    continue
                try:
                    environ = (entry / "environ").read_bytes()
                except OSError:  # gone, or not ours
                    continue
                if b"AWS_BATCH_JOB_ID=" in environ and descends_from(int(entry.name), self.endpoint_pid):
                    self.environments[int(entry.name)] = environ

    def stop(self) -> dict[int, bytes]:
        self.stop_event.set()
        self.join(timeout=30)
        return self.environments


def holders(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(canary in data for canary in CANARIES):
                found.append(str(path))
    return found


def all_job_descriptions(batch) -> list[dict]:
    ids = []
    for queue in ("airbatch-cpu", "airbatch-gpu"):
        for status in STATUSES:
            for page in batch.get_paginator("list_jobs").paginate(jobQueue=queue, jobStatus=status):
                for summary in page["jobSummaryList"]:
                    ids.append(summary["jobId"])
                    if summary.get("arrayProperties", {}).get("size"):  # a queue lists parents, not children
                        for child_status in STATUSES:
                            for child_page in batch.get_paginator("list_jobs").paginate(arrayJobId=summary["jobId"],
                                                                                        jobStatus=child_status):
                                ids.extend(child["jobId"] for child in child_page["jobSummaryList"])
    jobs = []
    for start in range(0, len(ids), 100):
        jobs.extend(batch.describe_jobs(jobs=ids[start:start + 100])["jobs"])
    return jobs


@pytest.mark.timeout(900)
def test_the_connections_keys_reach_no_file_log_job_description_or_job_environment(airflow_db, tmp_path):
    home, data, keys = tmp_path / "home", tmp_path / "data", tmp_path / "keys"
    for folder in (home, data, keys):
        folder.mkdir(mode=0o700)
    with sqlite3.connect(airflow_db) as source, sqlite3.connect(home / "airflow.db") as copy:
        source.backup(copy)  # a migrated metadata DB, without migrating again
    credentials_file = keys / "localaws-credentials.json"
    Credentials(client=KeyPair(CANARY_LOGIN, CANARY_PASSWORD), job=KeyPair.generate("LKIAJOB")).write(credentials_file)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    connection = {"conn_type": "aws", "login": CANARY_LOGIN, "password": CANARY_PASSWORD,
                  "extra": {"region_name": "us-east-1", "endpoint_url": url}}
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "DATA_ROOT": str(data), "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection), "SHARD_RETRY_DELAY_S": "1",
           "BATCH_LOCAL_VCPUS": "2"}
    endpoint_log = tmp_path / "endpoint.log"
    with open(endpoint_log, "wb") as log:
        endpoint = subprocess.Popen([sys.executable, "-m", "localaws", "serve", "--port", str(port),
                                     "--credentials", str(credentials_file)],
                                    env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    sampler = JobEnvironmentSampler(endpoint.pid)
    try:
        wait_until_ready(url, timeout=120)
        sampler.start()

        def dags_test(dag_id: str, conf: dict, *date: str) -> str:
            done = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", dag_id, *date,
                                   "--conf", json.dumps(conf)], env=env, cwd=REPO, capture_output=True,
                                  text=True, timeout=600)
            output = done.stdout + done.stderr
            assert done.returncode == 0, output[-4000:]
            (home / f"dags-test-{dag_id}.log").write_text(output)
            return output

        folder = data / f"in {TEMPLATE_PASSWORD}"
        folder.mkdir()
        units = folder / "units.csv"
        units.write_text("unit_id,seq,value\n" + "".join(f"u{i},0,{i}.5\n" for i in range(40))
                         + f"{TEMPLATE_PASSWORD},0,1.0\n")
        dags_test("units_of_work", {"input_uri": str(units), "bucket_count": 4, "batches_per_shard": 4,
                                    "batches_per_child": 1, "sleep_s": 0.5, "salt": f"{TEMPLATE_PASSWORD}|{TEMPLATE_LOGIN}",
                                    "fail_units": [TEMPLATE_LOGIN], "min_success_ratio": 0.0})

        from operators.pipelines.pricing import pricing_data

        pricing_input = pricing_data.ensure(data / f"pricing {TEMPLATE_LOGIN}", rows=12_000, units=200,
                                            start_date="2026-01-05", seed=3)
        dags_test("pricing_optimization", {"input_uri": pricing_input, "bucket_count": 8, "queue": "airbatch-cpu"},
                  "2026-02-16")

        job_environments = sampler.stop()
        batch = boto3.client("batch", endpoint_url=url, region_name="us-east-1", aws_access_key_id=CANARY_LOGIN,
                             aws_secret_access_key=CANARY_PASSWORD)
        jobs = all_job_descriptions(batch)
    finally:
        sampler.stop_event.set()
        endpoint.terminate()
        endpoint.wait(timeout=60)

    # the runs really carried the templates, unrendered, to the workers
    worklists = [json.loads(p.read_text()) for p in (data / "runs" / "units_of_work").rglob("worklists/*.json")]
    assert worklists and all(w["params"]["salt"] == f"{TEMPLATE_PASSWORD}|{TEMPLATE_LOGIN}" for w in worklists)
    assert all(w["params"]["fail_units"] == [TEMPLATE_LOGIN] for w in worklists)
    assert (data / "registry" / "pricing").exists(), "the pricing run registered no version"
    assert len(jobs) >= 4 and job_environments, (len(jobs), len(job_environments))

    assert holders(data) == []
    assert holders(home) == []
    assert not any(canary in endpoint_log.read_bytes() for canary in CANARIES), endpoint_log.read_text()[-2000:]
    described = json.dumps(jobs, default=str).encode()
    assert not any(canary in described for canary in CANARIES)
    leaked = [pid for pid, environ in job_environments.items() if any(canary in environ for canary in CANARIES)]
    assert leaked == [], f"job processes {leaked} hold the connection's keys"
    assert all(b"AIRFLOW_CONN_" not in environ and b"SQL_ALCHEMY_CONN" not in environ
               for environ in job_environments.values())
