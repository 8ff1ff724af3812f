"""Jobs on the local endpoint for the kit's Batch tests: submitted as plain Python on airbatch-cpu, waited for by
polling DescribeJobs."""
from __future__ import annotations

import time

from operators.kit.job_states import ENDED

#: A job that runs until it is stopped (for kill, terminate and cancel tests).
SLEEP_SCRIPT = "import time; time.sleep(120)"


def submit(local_aws, name: str, script: str, size: int = 0) -> str:
    """Submit `python -c script` to airbatch-cpu, as an array of `size` children when `size` is given; its job id."""
    return local_aws.batch.submit_job(jobName=name, jobQueue="airbatch-cpu", jobDefinition="airbatch-worker-cpu",
                                      containerOverrides={"command": ["python", "-c", script]},
                                      **({"arrayProperties": {"size": size}} if size else {}))["jobId"]


def wait_for(local_aws, job_id: str, wanted: tuple[str, ...] = ENDED, timeout: float = 60) -> dict:
    """The job once its status is one of `wanted`; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = local_aws.batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if job["status"] in wanted:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {wanted}; last {job['status']}")
