"""Tests of operators.kit.prep.configured: what prepare_configured needs to pick the Athena path."""
from __future__ import annotations

import pytest

from tests.operators.kit.prep.samples import SCHEMA


@pytest.mark.parametrize("uri, env, message", [
    ("athena://raw", {"ATHENA_OUTPUT_LOCATION": "s3://x/"}, "expected athena://database.table"),
    ("athena://sales.raw", {}, "ATHENA_OUTPUT_LOCATION"),
])
def test_the_athena_path_names_what_is_missing(uri, env, message):
    from operators.kit.prep import prepare_configured

    with pytest.raises(ValueError) as err:
        prepare_configured(uri, SCHEMA, "s3://lake/x", 8, env=env)
    assert message in str(err.value)
