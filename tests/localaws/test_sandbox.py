"""Local Batch jobs run isolated as containers: what a job can see, read, write and call.

Each test starts `python -m localaws serve` in a process of its own with a Airflow-home-like folder
beside it (its credentials file, a secret config file) and a local DATA_ROOT, then runs a job that
tries what an attacker's job would and reports each outcome; the report comes back in the job's log.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from localaws import sandbox
from tests.localaws.test_batch import PY
from tests.localaws.test_guard import Served

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None and os.geteuid() != 0,
                                reason="needs Debian's bubblewrap (make venv installs it as root)")

#: The attacker's job: each probe's outcome as one JSON line. `home` is the endpoint's AIRFLOW_HOME, `data` DATA_ROOT.
PROBES = r"""
import json, os, sys, boto3, botocore.exceptions
home, data, repo = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
def probe(name, action):
    try:
        out[name] = ["ok", action()]
    except Exception as exc:
        out[name] = ["refused", type(exc).__name__ + ": " + str(exc)[:200]]
probe("read_credentials", lambda: open(os.path.join(home, "credentials.json")).read()[:20])
probe("read_airflow_cfg", lambda: open(os.path.join(home, "airflow.cfg")).read()[:20])
probe("list_home", lambda: os.listdir(home))
probe("list_repo_config", lambda: os.listdir(os.path.join(repo, "config")))
probe("read_shadow", lambda: open("/etc/shadow").read()[:5])
probe("read_batch", lambda: open(os.path.join(data, "runs", "r", "batch.csv")).read())
probe("write_runs", lambda: open(os.path.join(data, "runs", "r", "forged.csv"), "w").write("x"))
os.makedirs(os.path.join(data, "outputs", "w"), exist_ok=True)
probe("write_outputs", lambda: open(os.path.join(data, "outputs", "w", "result.txt"), "w").write("result"))
probe("read_registry", lambda: open(os.path.join(data, "registry", "current.json")).read())
probe("write_data_root", lambda: open(os.path.join(data, "planted.txt"), "w").write("x"))
probe("link_in_outputs", lambda: os.symlink("/etc", os.path.join(data, "outputs", "w", "etc-link")) or "made")
probe("scratch", lambda: (open("scratch.txt", "w").write("s"), os.getcwd() == os.environ["HOME"])[1])
def call_batch():
    boto3.client("batch").describe_job_queues()
    return "listed"
probe("batch_with_job_key", call_batch)
probe("other_processes", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print(json.dumps(out))
"""


def start(tmp_path: Path) -> tuple[Served, Path, Path]:
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    (home / "airflow.cfg").write_text("[api_auth]\njwt_secret = not-for-jobs\n")
    (data / "runs" / "r").mkdir(parents=True)
    (data / "runs" / "r" / "batch.csv").write_text("unit,value\na,1\n")
    (data / "registry").mkdir()
    (data / "registry" / "current.json").write_text('{"version": "v1"}')
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update(BATCH_LOCAL_VCPUS="2", DATA_ROOT=str(data), AIRFLOW_HOME=str(home))
    return Served(home / "credentials.json", env, tmp_path / "endpoint.log"), home, data


def run(served: Served, command: list[str], container: dict | None = None) -> dict:
    batch = served.client("batch")
    name = f"sandbox-{uuid.uuid4().hex[:6]}"
    batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties={
        "image": "unused:1", "command": command, **(container or {}),
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]})
    job_id = batch.submit_job(jobName=name, jobQueue="airbatch-cpu", jobDefinition=name)["jobId"]
    deadline = time.monotonic() + 120
    while True:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if job["status"] in ("SUCCEEDED", "FAILED"):
            break
        assert time.monotonic() < deadline, f"job {job_id} did not end: {job['status']}"
        time.sleep(0.2)
    events = served.client("logs").get_log_events(logGroupName="/aws/batch/job",
                                                  logStreamName=job["container"]["logStreamName"])["events"]
    return {"job": job, "log": "\n".join(e["message"] for e in events)}


def test_a_job_sees_its_scratch_the_image_and_only_the_job_roles_folders(tmp_path):
    assert sandbox.isolation_problem() is None, sandbox.isolation_problem()
    served, home, data = start(tmp_path)
    try:
        assert "each isolated by bubblewrap" in served.log.read_text()
        repo = str(Path(__file__).resolve().parents[2])
        done = run(served, [PY, "-c", PROBES, str(home), str(data), repo])
        # The attempt's scratch folder went when the attempt ended, before its status did (the endpoint still
        # runs). This job's folders only: endpoints of tests running beside this one keep their jobs' scratch.
        scratch_roots = list(Path(os.environ.get("TMPDIR", "/tmp")).glob("localaws-jobs-*"))
        left = [p for root in scratch_roots for p in root.glob(f"{done['job']['jobId']}-*")]
        assert not left, f"scratch removed with the attempt: {left}"
    finally:
        served.stop()
    assert done["job"]["status"] == "SUCCEEDED", done
    found = json.loads(done["log"].splitlines()[-1])
    refused = {name for name, (outcome, _) in found.items() if outcome == "refused"}
    # DATA_ROOT itself: beneath /tmp here, so the job's own /tmp (a write there stays in its scratch); elsewhere
    # the sandbox's root is read-only. Either way nothing reaches the host's DATA_ROOT (checked below).
    refused.discard("write_data_root")
    assert refused == {"read_credentials", "read_airflow_cfg", "list_home", "list_repo_config", "read_shadow",
                       "write_runs", "read_registry", "batch_with_job_key"}, found
    assert "AccessDenied" in found["batch_with_job_key"][1]
    assert found["read_batch"][1] == "unit,value\na,1\n"
    assert (data / "outputs" / "w" / "result.txt").read_text() == "result"  # outputs/ is the job's to write
    assert not (data / "runs" / "r" / "forged.csv").exists() and not (data / "planted.txt").exists()
    assert found["scratch"] == ["ok", True]
    assert found["other_processes"][1] == [1, 2], "a job sees only its own processes"


def test_host_volumes_of_a_job_definition_are_mounted_as_on_aws(tmp_path):
    served, home, data = start(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host\n")
    volume = {"volumes": [{"name": "shared", "host": {"sourcePath": str(shared)}}],
              "mountPoints": [{"sourceVolume": "shared", "containerPath": "/mnt/shared", "readOnly": True}]}
    try:
        read = run(served, ["sh", "-c", "cat /mnt/shared/in.txt; echo x > /mnt/shared/out.txt || echo read-only"], volume)
        missing = run(served, ["true"], {"volumes": [{"name": "v", "host": {"sourcePath": str(tmp_path / "absent")}}],
                                         "mountPoints": [{"sourceVolume": "v", "containerPath": "/mnt/v"}]})
    finally:
        served.stop()
    assert read["job"]["status"] == "SUCCEEDED"
    assert read["log"].splitlines()[0] == "from the host" and "read-only" in read["log"]
    assert not (shared / "out.txt").exists()
    assert missing["job"]["status"] == "FAILED"
    assert "CannotStartContainerError" in missing["job"]["attempts"][-1]["container"]["reason"]


def test_data_root_prefixes_must_be_folders():
    with pytest.raises(sandbox.SandboxError, match="read_prefixes: 'runs' is not a folder prefix"):
        sandbox.DataGrants.from_job_role({"read_prefixes": ["runs"], "write_prefixes": ["outputs/"]})
    with pytest.raises(sandbox.SandboxError, match="write_prefixes"):
        sandbox.DataGrants.from_job_role({"read_prefixes": [], "write_prefixes": ["../outputs/"]})
    grants = sandbox.DataGrants.from_job_role({"read_prefixes": ["runs/", "published/"], "write_prefixes": ["outputs/"]})
    assert grants == sandbox.DataGrants(read=("runs", "published"), write=("outputs",))


def test_a_job_naming_a_relative_or_root_data_root_is_not_started(tmp_path):
    box = sandbox.JobSandbox(sandbox.DataGrants(read=("runs",), write=("outputs",)), read_only=[])
    for bad in ("relative/data", "/", "/.."):
        with pytest.raises(sandbox.SandboxError, match="must be an absolute folder other than /"):
            box.wrap(["true"], tmp_path / "scratch", {"DATA_ROOT": bad})
