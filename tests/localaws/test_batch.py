"""Contract tests of the local AWS endpoint, through plain boto3, one behaviour of AWS Batch each.

They also pin what localaws relies on inside moto 5.2.5: if an upgrade changes it, these fail.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import moto
import moto.batch.models as moto_batch
import pytest

from localaws import LocalAWS, NonLoopbackAddress, check_loopback
from localaws.batch import ProcessJob, retry_decision

PY = sys.executable


@pytest.fixture(scope="module")
def aws(local_aws):
    """The session's endpoint plus two compute environments of 2 and 4 vCPUs."""
    import boto3

    iam = boto3.client("iam", **local_aws.client_kwargs)
    role = iam.create_role(RoleName="contract-batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    for name, vcpus in (("ce-two", 2), ("ce-four", 4)):
        local_aws.batch.create_compute_environment(computeEnvironmentName=name, type="UNMANAGED",
                                                   unmanagedvCpus=vcpus, serviceRole=role, state="ENABLED")
        local_aws.batch.create_job_queue(jobQueueName=f"q-{name}", state="ENABLED", priority=1,
                                         computeEnvironmentOrder=[{"order": 1, "computeEnvironment": name}])
    return local_aws


def register(aws, script: str, **extra) -> str:
    name = f"jd-{uuid.uuid4().hex[:8]}"
    props = {"image": "unused:1", "command": [PY, "-c", script],
             "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "256"}]}
    props.update(extra.pop("container", {}))
    aws.batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties=props, **extra)
    return name


def host_folder(path: Path) -> dict:
    """Job definition properties that mount a test's folder into its jobs at the same path: a host volume, as a job
    definition on AWS mounts one (each job is isolated and sees nothing else of the host, localaws/sandbox.py)."""
    return {"volumes": [{"name": "test-folder", "host": {"sourcePath": str(path)}}],
            "mountPoints": [{"sourceVolume": "test-folder", "containerPath": str(path)}]}


@contextlib.contextmanager
def s3_data_root(aws, data_root: str):
    """The job role's policy for an s3:// DATA_ROOT while this lasts, as provisioning writes it (the session's endpoint
    has a local DATA_ROOT, whose role has no policy: its job key reaches no S3 object)."""
    import boto3

    from operators.kit.provisioning import JOB_ROLE_POLICY_NAME, job_role_policy, load_spec

    role = load_spec()["job_role"]
    iam = boto3.client("iam", **aws.client_kwargs)
    iam.put_role_policy(RoleName=role["name"], PolicyName=JOB_ROLE_POLICY_NAME,
                        PolicyDocument=json.dumps(job_role_policy(role, data_root)))
    try:
        yield
    finally:
        iam.delete_role_policy(RoleName=role["name"], PolicyName=JOB_ROLE_POLICY_NAME)


def host_pids(marker: str) -> list[int]:
    """The host's pids of the live processes whose command line holds `marker` (a job's pids are its own namespace's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes() and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return found


def submit(aws, jd: str, queue: str = "q-ce-four", **kwargs) -> str:
    return aws.batch.submit_job(jobName=f"job-{uuid.uuid4().hex[:8]}", jobQueue=queue, jobDefinition=jd, **kwargs)["jobId"]


def describe(aws, job_id: str) -> dict:
    return aws.batch.describe_jobs(jobs=[job_id])["jobs"][0]


def wait_status(aws, job_id: str, statuses=("SUCCEEDED", "FAILED"), timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = describe(aws, job_id)
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in statuses:
            job["_seen"] = seen
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} still {seen[-1]} after {timeout}s (seen {seen})")


def log_messages(aws, stream: str) -> list[str]:
    return [e["message"] for e in aws.logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream)["events"]]


ENV_DUMP = "import os, json; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith(('AWS_BATCH', 'FROM_'))}))"


# -- what localaws relies on inside moto --------------------------------------------------------

def test_moto_version_and_the_hooks_localaws_patches(aws):
    assert moto.__version__ == "5.2.5", "localaws is written against moto 5.2.5: re-run these tests and re-read moto/batch/models.py"
    assert moto_batch.Job is ProcessJob  # moto builds jobs through this module global
    assert ProcessJob.__module__.split(".")[1] == "batch"  # InstanceTrackerMeta keys models by this
    assert {"start", "terminate", "_get_container_property", "_add_parameters_to_command",
            "_start_attempt", "describe", "describe_short"} <= set(dir(moto_batch.Job))


def test_binding_a_non_loopback_address_is_refused():
    for bad in ("0.0.0.0", "10.1.2.3", "192.168.1.10", "example.com", "::"):
        with pytest.raises(NonLoopbackAddress, match="loopback"):
            LocalAWS(host=bad, port=0)
    assert check_loopback("127.0.0.1") == "127.0.0.1" and check_loopback("::1") == "::1"
    cli = subprocess.run([PY, "-m", "localaws", "serve", "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "refusing to bind the local AWS endpoint to 0.0.0.0" in cli.stderr


# -- single and array jobs -------------------------------------------------------------------

def test_single_job_gets_batch_environment_command_overrides_and_parameters(aws):
    jd = register(aws, "", container={
        "command": [PY, "-c", ENV_DUMP + "; print('param=Ref::greeting')"],
        "environment": [{"name": "FROM_DEFINITION", "value": "d"}, {"name": "FROM_BOTH", "value": "definition"}]},
        parameters={"greeting": "default"})
    job_id = submit(aws, jd, parameters={"greeting": "hello"},
                    containerOverrides={"environment": [{"name": "FROM_BOTH", "value": "override"}]})
    job = wait_status(aws, job_id)
    assert job["status"] == "SUCCEEDED"
    assert job["_seen"][-1] == "SUCCEEDED"
    lines = log_messages(aws, job["container"]["logStreamName"])
    env = json.loads(lines[0])
    assert env["AWS_BATCH_JOB_ID"] == job_id and env["AWS_BATCH_JOB_ATTEMPT"] == "1"
    assert env["AWS_BATCH_JQ_NAME"] == "q-ce-four" and env["AWS_BATCH_CE_NAME"] == "ce-four"
    assert "AWS_BATCH_JOB_ARRAY_INDEX" not in env
    assert env["FROM_DEFINITION"] == "d" and env["FROM_BOTH"] == "override"
    assert lines[1] == "param=hello"
    # describing again does not grow the environment (moto appends to the override list in place)
    assert describe(aws, job_id)["container"]["environment"] == describe(aws, job_id)["container"]["environment"]


def test_array_job_children_get_their_index_and_parent_aggregates(aws):
    jd = register(aws, ENV_DUMP)
    parent = submit(aws, jd, arrayProperties={"size": 25})
    job = wait_status(aws, parent)
    assert job["status"] == "SUCCEEDED"
    assert job["arrayProperties"]["size"] == 25
    assert job["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 25
    children = aws.batch.list_jobs(arrayJobId=parent, jobStatus="SUCCEEDED")["jobSummaryList"]
    assert sorted(c["arrayProperties"]["index"] for c in children) == list(range(25))
    queue = [j for j in aws.batch.list_jobs(jobQueue="q-ce-four", jobStatus="SUCCEEDED")["jobSummaryList"]
             if j["jobId"].startswith(parent)]
    assert [(j["jobId"], j["arrayProperties"]["size"]) for j in queue] == [(parent, 25)]  # children are not listed
    child = describe(aws, f"{parent}:7")
    env = json.loads(log_messages(aws, child["container"]["logStreamName"])[0])
    assert env["AWS_BATCH_JOB_ARRAY_INDEX"] == "7" and env["AWS_BATCH_JOB_ID"] == f"{parent}:7"
    assert child["arrayProperties"]["index"] == 7


def test_statuses_walk_the_aws_sequence(aws):
    jd = register(aws, "import time; time.sleep(1.5)")
    job_id = submit(aws, jd)
    job = wait_status(aws, job_id)
    assert job["status"] == "SUCCEEDED"
    assert "RUNNING" in job["_seen"]
    order = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"]
    assert [order.index(s) for s in job["_seen"]] == sorted(order.index(s) for s in job["_seen"])
    assert job["startedAt"] <= job["stoppedAt"]


def test_failed_child_fails_parent_only_after_all_children_end(aws):
    jd = register(aws, "import os, sys, time; i = int(os.environ['AWS_BATCH_JOB_ARRAY_INDEX']); "
                       "time.sleep(0 if i == 0 else 1.0); print('child', i); sys.exit(4 if i == 0 else 0)")
    parent = submit(aws, jd, arrayProperties={"size": 4})
    wait_status(aws, f"{parent}:0")
    assert describe(aws, parent)["status"] not in ("FAILED", "SUCCEEDED")  # siblings still running
    job = wait_status(aws, parent)
    assert job["status"] == "FAILED"
    assert job["arrayProperties"]["statusSummary"] == {**job["arrayProperties"]["statusSummary"], "FAILED": 1, "SUCCEEDED": 3}
    assert "index 0" in job["statusReason"]
    failed = aws.batch.list_jobs(arrayJobId=parent, jobStatus="FAILED")["jobSummaryList"]
    assert [f["jobId"] for f in failed] == [f"{parent}:0"]
    assert failed[0]["container"]["exitCode"] == 4


def test_array_size_bounds_are_accepted(aws):
    jd = register(aws, "pass")
    parent = submit(aws, jd, arrayProperties={"size": 2})
    assert wait_status(aws, parent)["arrayProperties"]["size"] == 2


# -- ListJobs, as AWS answers it ------------------------------------------------------------------

def listed(aws, **kwargs) -> list[dict]:
    pages = aws.batch.get_paginator("list_jobs").paginate(**kwargs)
    return [job for page in pages for job in page["jobSummaryList"]]


def test_list_jobs_lists_running_jobs_unless_given_a_status(aws):
    done = submit(aws, register(aws, "pass"))
    wait_status(aws, done)
    running = submit(aws, register(aws, "import time; time.sleep(60)"))
    wait_status(aws, running, statuses=("RUNNING",))
    try:
        by_default = [job["jobId"] for job in listed(aws, jobQueue="q-ce-four")]
        assert running in by_default and done not in by_default  # no jobStatus: RUNNING jobs only
        succeeded = {job["jobId"]: job for job in listed(aws, jobQueue="q-ce-four", jobStatus="SUCCEEDED")}
        assert done in succeeded and running not in succeeded
        assert succeeded[done]["container"] == {"exitCode": 0}
        assert succeeded[done]["createdAt"] <= succeeded[done]["startedAt"] <= succeeded[done]["stoppedAt"]
    finally:
        aws.batch.terminate_job(jobId=running, reason="done")
    assert wait_status(aws, running)["isTerminated"] is True


def test_a_queue_lists_array_parents_and_array_job_id_their_children(aws):
    jd = register(aws, "import os, sys, time; i = int(os.environ['AWS_BATCH_JOB_ARRAY_INDEX']); "
                       "time.sleep(60 if i == 0 else 0); sys.exit(5 if i == 2 else 0)")
    parent = submit(aws, jd, arrayProperties={"size": 3})
    wait_status(aws, f"{parent}:0", statuses=("RUNNING",))
    wait_status(aws, f"{parent}:1")  # both short children ended (on a busy machine, one after the other)
    wait_status(aws, f"{parent}:2")
    try:
        # AWS: a parent is PENDING while its children run, and a queue lists parents, not children
        assert describe(aws, parent)["status"] == "PENDING"
        [summary] = [job for job in listed(aws, jobQueue="q-ce-four", jobStatus="PENDING") if job["jobId"] == parent]
        assert summary["arrayProperties"]["size"] == 3
        assert {k: v for k, v in summary["arrayProperties"]["statusSummary"].items() if v} == {
            "RUNNING": 1, "SUCCEEDED": 1, "FAILED": 1}
        assert summary["arrayProperties"]["statusSummaryLastUpdatedAt"] >= summary["createdAt"]
        every_status = [job["jobId"] for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING",
                                                     "SUCCEEDED", "FAILED")
                        for job in listed(aws, jobQueue="q-ce-four", jobStatus=status)]
        assert parent in every_status and not [job_id for job_id in every_status if job_id.startswith(f"{parent}:")]
        # the children: RUNNING ones unless a status is given, each with its index
        assert [(c["jobId"], c["arrayProperties"]) for c in listed(aws, arrayJobId=parent)] == [
            (f"{parent}:0", {"index": 0})]
        [failed] = listed(aws, arrayJobId=parent, jobStatus="FAILED")
        assert failed["jobId"] == f"{parent}:2" and failed["container"] == {"exitCode": 5}
        assert failed["statusReason"] == "Essential container in task exited"
    finally:
        aws.batch.terminate_job(jobId=parent, reason="done")
    job = wait_status(aws, parent, timeout=20)
    assert job["status"] == "FAILED" and job["isTerminated"] is True


def test_list_jobs_filters_list_every_status_newest_first_in_pages(aws):
    jd = register(aws, "pass")
    prefix = f"Filtered-{uuid.uuid4().hex[:6]}"
    ids = []
    for i in range(5):
        ids.append(aws.batch.submit_job(jobName=f"{prefix}-{i}", jobQueue="q-ce-four", jobDefinition=jd)["jobId"])
        time.sleep(0.01)
    for job_id in ids:
        wait_status(aws, job_id)
    newest_first = ids[::-1]

    def filtered(name: str, *values: str, **kwargs) -> list[str]:
        return [job["jobId"] for job in listed(aws, jobQueue="q-ce-four",
                                                filters=[{"name": name, "values": list(values)}], **kwargs)]

    # a filter ignores jobStatus and lists every status; JOB_NAME is case-insensitive, `prefix*`
    assert filtered("JOB_NAME", f"{prefix.lower()}*", jobStatus="RUNNING") == newest_first
    assert filtered("JOB_NAME", f"{prefix}-3") == [ids[3]]
    # JOB_DEFINITION: a name (every revision), `prefix*`, or an ARN; case-sensitive
    arn = describe(aws, ids[0])["jobDefinition"]
    assert filtered("JOB_DEFINITION", jd) == filtered("JOB_DEFINITION", arn) == filtered("JOB_DEFINITION", f"{jd[:-2]}*") == newest_first
    assert filtered("JOB_DEFINITION", jd.upper()) == []
    created = [describe(aws, job_id)["createdAt"] for job_id in ids]
    assert filtered("AFTER_CREATED_AT", str(created[2])) == [i for i, c in zip(newest_first, created[::-1]) if c > created[2]]
    assert ids[4] in filtered("AFTER_CREATED_AT", str(created[2])) and ids[0] not in filtered("AFTER_CREATED_AT", str(created[2]))
    assert set(filtered("BEFORE_CREATED_AT", str(created[1]))) >= {ids[0]} and ids[4] not in filtered("BEFORE_CREATED_AT", str(created[1]))
    # pages of maxResults, with a nextToken while more are left
    page = aws.batch.list_jobs(jobQueue="q-ce-four", maxResults=2,
                               filters=[{"name": "JOB_NAME", "values": [f"{prefix}*"]}])
    assert [job["jobId"] for job in page["jobSummaryList"]] == newest_first[:2] and page["nextToken"]
    pages = list(aws.batch.get_paginator("list_jobs").paginate(
        jobQueue="q-ce-four", filters=[{"name": "JOB_NAME", "values": [f"{prefix}*"]}], PaginationConfig={"PageSize": 2}))
    assert [len(p["jobSummaryList"]) for p in pages] == [2, 2, 1]
    assert [job["jobId"] for p in pages for job in p["jobSummaryList"]] == newest_first
    with pytest.raises(aws.batch.exceptions.ClientException):
        aws.batch.list_jobs(jobQueue="q-ce-four", filters=[{"name": "NOT_A_FILTER", "values": ["x"]}])
    with pytest.raises(aws.batch.exceptions.ClientException):
        aws.batch.list_jobs(jobQueue="q-ce-four", nextToken="not-a-token")


# -- retry strategy -----------------------------------------------------------------------------

def test_retry_strategy_from_the_job_definition_records_every_attempt(aws):
    jd = register(aws, "import os, sys; print('attempt', os.environ['AWS_BATCH_JOB_ATTEMPT']); "
                       "sys.exit(0 if os.environ['AWS_BATCH_JOB_ATTEMPT'] == '3' else 75)",
                  retryStrategy={"attempts": 3})
    job = wait_status(aws, submit(aws, jd))
    assert job["status"] == "SUCCEEDED"
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [75, 75, 0]
    assert [log_messages(aws, a["container"]["logStreamName"]) for a in job["attempts"]] == [["attempt 1"], ["attempt 2"], ["attempt 3"]]


def test_retry_strategy_on_submit_overrides_and_evaluate_on_exit_exits(aws):
    jd = register(aws, "import sys; sys.exit(65)", retryStrategy={"attempts": 5})
    strategy = {"attempts": 4, "evaluateOnExit": [{"onExitCode": "75", "action": "RETRY"},
                                                   {"onReason": "*", "action": "EXIT"}]}
    job = wait_status(aws, submit(aws, jd, retryStrategy=strategy))
    assert job["status"] == "FAILED" and len(job["attempts"]) == 1
    assert job["retryStrategy"]["attempts"] == 4


def test_lost_host_is_retried_by_on_status_reason_glob(aws, tmp_path):
    """The job's host (its whole process tree, sandbox included) killed from outside: a lost host, retried.

    A job that kills itself with SIGKILL only exits 137, as a container does ("Essential container in task
    exited"); the host going away is the process that holds the job's sandbox dying."""
    marker = tmp_path / "killed-once"
    script = (f"import pathlib, time; m = pathlib.Path({str(marker)!r});\n"
              "if not m.exists():\n    m.write_text('x'); time.sleep(60)\nprint('second attempt ok')")
    jd = register(aws, script, container=host_folder(tmp_path), retryStrategy={"attempts": 2, "evaluateOnExit": [
        {"onStatusReason": "Host EC2*", "action": "RETRY"}, {"onReason": "*", "action": "EXIT"}]})
    job_id = submit(aws, jd)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "the first attempt did not start"
        time.sleep(0.05)
    parent = lambda pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # noqa: E731
    [host] = [pid for pid in host_pids(str(marker)) if parent(pid) == os.getpid()]  # started by this endpoint
    os.kill(host, signal.SIGKILL)
    job = wait_status(aws, job_id)
    assert job["status"] == "SUCCEEDED"
    assert job["attempts"][0]["statusReason"].startswith("Host EC2 (instance")
    assert job["attempts"][0]["container"]["exitCode"] == 137


def test_retry_decision_rules():
    host = {"statusReason": "Host EC2 (instance i-1) terminated.", "container": {"exitCode": None}}
    app = {"statusReason": "Essential container in task exited", "container": {"exitCode": 1}}
    rules = {"attempts": 3, "evaluateOnExit": [{"onStatusReason": "Host EC2*", "action": "RETRY"},
                                              {"onReason": "*", "action": "EXIT"}]}
    assert retry_decision(rules, 1, host) is True
    assert retry_decision(rules, 1, app) is False
    assert retry_decision(rules, 3, host) is False  # attempts exhausted
    assert retry_decision({"attempts": 2}, 1, app) is True  # no rules: retry
    assert retry_decision(None, 1, app) is False


# -- timeout, terminate, cancel -------------------------------------------------------------------

def test_attempt_timeout_kills_the_whole_process_group(aws, tmp_path):
    started = tmp_path / "grandchild.started"
    marker = f"grandchild-{uuid.uuid4().hex}"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
              f"{marker!r}]); open({str(started)!r}, 'w').write('1'); time.sleep(60)")
    jd = register(aws, script, container=host_folder(tmp_path))
    job = wait_status(aws, submit(aws, jd, timeout={"attemptDurationSeconds": 1}), timeout=30)
    assert job["status"] == "FAILED" and job["statusReason"] == "Job attempt duration exceeded timeout"
    assert started.exists()
    deadline = time.monotonic() + 10
    while host_pids(marker):
        assert time.monotonic() < deadline, f"the job's grandchild still runs: {host_pids(marker)}"
        time.sleep(0.1)


def assert_process_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # a zombie of ours is gone too
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still alive")


def test_terminate_parent_reaches_every_child(aws):
    jd = register(aws, "import time; time.sleep(60)")
    parent = submit(aws, jd, queue="q-ce-two", arrayProperties={"size": 6})
    wait_status(aws, f"{parent}:0", statuses=("RUNNING",))
    aws.batch.terminate_job(jobId=parent, reason="stop everything")
    job = wait_status(aws, parent, timeout=20)
    assert job["status"] == "FAILED"
    children = [describe(aws, f"{parent}:{i}") for i in range(6)]
    assert {c["status"] for c in children} == {"FAILED"}
    assert {c["statusReason"] for c in children} == {"stop everything"}


def test_cancel_parent_cancels_children_not_started(aws):
    jd = register(aws, "import time; time.sleep(60)", container={
        "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "256"}]})
    blocker = submit(aws, jd, queue="q-ce-two")
    wait_status(aws, blocker, statuses=("RUNNING",))
    parent = submit(aws, jd, queue="q-ce-two", arrayProperties={"size": 3})
    time.sleep(0.5)
    assert {describe(aws, f"{parent}:{i}")["status"] for i in range(3)} == {"RUNNABLE"}
    aws.batch.cancel_job(jobId=parent, reason="not needed")
    job = wait_status(aws, parent, timeout=10)
    assert job["status"] == "FAILED"
    aws.batch.cancel_job(jobId=blocker, reason="cancel does not stop a running job")
    time.sleep(0.3)
    assert describe(aws, blocker)["status"] == "RUNNING"
    aws.batch.terminate_job(jobId=blocker, reason="done")
    assert wait_status(aws, blocker)["status"] == "FAILED"


# -- capacity ---------------------------------------------------------------------------------

def test_children_wait_runnable_while_the_environment_is_full(aws, tmp_path):
    script = ("import json, os, time; s = time.time(); time.sleep(0.3); "
              f"open(os.path.join({str(tmp_path)!r}, os.environ['AWS_BATCH_JOB_ARRAY_INDEX']), 'w')"
              ".write(json.dumps([s, time.time()]))")
    jd = register(aws, script, container=host_folder(tmp_path))
    parent = submit(aws, jd, queue="q-ce-two", arrayProperties={"size": 8})
    time.sleep(0.2)
    summary = describe(aws, parent)["arrayProperties"]["statusSummary"]
    assert summary["RUNNING"] + summary["STARTING"] <= 2 and summary["RUNNABLE"] >= 4
    assert wait_status(aws, parent)["status"] == "SUCCEEDED"
    spans = [json.loads((tmp_path / str(i)).read_text()) for i in range(8)]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2


@pytest.mark.slow
def test_a_large_array_does_not_start_all_children_at_once(aws):
    jd = register(aws, "", container={"command": ["true"]})  # the cheapest process: this is about scheduling
    parent = submit(aws, jd, queue="q-ce-four", arrayProperties={"size": 3000})
    seen_running = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = describe(aws, parent)
        summary = job["arrayProperties"]["statusSummary"]
        seen_running = max(seen_running, summary["RUNNING"] + summary["STARTING"])
        if job["status"] in ("SUCCEEDED", "FAILED"):
            break
        time.sleep(0.5)
    assert job["status"] == "SUCCEEDED" and summary["SUCCEEDED"] == 3000
    assert 0 < seen_running <= 4


# -- logs and dependencies ----------------------------------------------------------------------

def test_stdout_and_stderr_reach_cloudwatch_logs(aws):
    jd = register(aws, "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr)")
    job = wait_status(aws, submit(aws, jd))
    stream = job["attempts"][-1]["container"]["logStreamName"]
    assert stream.startswith(f"{job['jobName'] if False else ''}") and "/default/" in stream
    assert sorted(log_messages(aws, stream)) == ["to stderr", "to stdout"]


def test_depends_on_waits_for_success_and_fails_after_a_failed_dependency(aws, tmp_path):
    first = register(aws, f"import time; time.sleep(0.5); open({str(tmp_path / 'first')!r}, 'w').write('1')",
                     container=host_folder(tmp_path))
    second = register(aws, f"import os, sys; sys.exit(0 if os.path.exists({str(tmp_path / 'first')!r}) else 9)",
                      container=host_folder(tmp_path))
    upstream = submit(aws, first)
    downstream = submit(aws, second, dependsOn=[{"jobId": upstream}])
    assert describe(aws, downstream)["status"] == "PENDING"
    assert wait_status(aws, downstream)["status"] == "SUCCEEDED"

    failing = submit(aws, register(aws, "import sys; sys.exit(1)"))
    blocked = submit(aws, second, dependsOn=[{"jobId": failing}])
    job = wait_status(aws, blocked)
    assert job["status"] == "FAILED" and job["statusReason"] == "Dependent Job failed" and job["attempts"] == []


# -- the other services the pipelines use -----------------------------------------------------------

def test_s3_and_sns_are_served_too(aws):
    import boto3

    s3 = boto3.client("s3", **aws.client_kwargs)
    s3.create_bucket(Bucket="contract-bucket")
    s3.put_object(Bucket="contract-bucket", Key="a/b.txt", Body=b"payload")
    assert s3.get_object(Bucket="contract-bucket", Key="a/b.txt")["Body"].read() == b"payload"
    sns = boto3.client("sns", **aws.client_kwargs)
    topic = sns.create_topic(Name="contract-topic")["TopicArn"]
    assert sns.publish(TopicArn=topic, Subject="s", Message="m")["MessageId"]


def test_a_job_reaches_the_endpoint_as_a_container_reaches_aws(aws):
    import boto3

    boto3.client("s3", **aws.client_kwargs).create_bucket(Bucket="from-a-job")
    with s3_data_root(aws, "s3://from-a-job/data"):
        jd = register(aws, "import boto3; boto3.client('s3').put_object(Bucket='from-a-job', Key='data/outputs/k', "
                           "Body=b'written by a job')")
        assert wait_status(aws, submit(aws, jd))["status"] == "SUCCEEDED"
        outside = register(aws, "import boto3; boto3.client('s3').put_object(Bucket='from-a-job', Key='data/k', Body=b'x')")
        assert wait_status(aws, submit(aws, outside))["status"] == "FAILED"
    body = boto3.client("s3", **aws.client_kwargs).get_object(Bucket="from-a-job", Key="data/outputs/k")["Body"].read()
    assert body == b"written by a job"
