"""The worker's exit codes (batch_worker.exit_codes) against the retry strategy they drive: AWS Batch, as the spec
in config/batch_resources.json sets it, retries a child for the transient code alone, and every code but success
has its own failure class for the operator."""
from __future__ import annotations

import pytest

from batch_worker.exit_codes import EXIT_CLASSES, EXIT_OK, EXIT_TRANSIENT
from localaws.batch import retry_decision
from operators.kit.batch_resources import load_spec


def test_every_failing_code_has_one_class_of_its_own():
    assert EXIT_OK not in EXIT_CLASSES
    assert len(set(EXIT_CLASSES.values())) == len(EXIT_CLASSES)


@pytest.mark.parametrize("code, failure_class", sorted(EXIT_CLASSES.items()))
def test_batch_retries_a_child_only_for_the_transient_code(code, failure_class):
    strategy = load_spec()["retry_strategy"]
    attempt = {"statusReason": "Essential container in task exited", "container": {"exitCode": code}}
    assert retry_decision(strategy, 1, attempt) is (code == EXIT_TRANSIENT), failure_class
