"""The job statuses the kit and the local endpoint share are AWS Batch's, grouped as the provider's hook groups them."""
from __future__ import annotations

from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook

from operators.kit import job_states
from operators.kit.job_states import ACTIVE, ENDED, STARTED, STATUSES, WAITING


def test_the_groups_are_the_providers_and_split_the_statuses():
    assert ACTIVE == BatchClientHook.INTERMEDIATE_STATES
    assert ENDED == (BatchClientHook.SUCCESS_STATE, BatchClientHook.FAILURE_STATE)
    assert STATUSES == ACTIVE + ENDED and len(set(STATUSES)) == 7
    assert set(WAITING) | set(STARTED) == set(STATUSES) and not set(WAITING) & set(STARTED)
    assert all(getattr(job_states, status) == status for status in STATUSES)
