"""Param validation with each schema checked against its metaschema once (operators/kit/param_checks.py)."""
from __future__ import annotations

import jsonschema
import pytest
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamValidationError
from jsonschema import validators

from operators.kit.param_checks import check_param_schemas_once


def test_a_schema_is_checked_once_and_values_are_still_validated_every_time(monkeypatch):
    check_param_schemas_once()
    checks = []
    original = validators.Draft202012Validator.check_schema.__func__
    monkeypatch.setattr(validators.Draft202012Validator, "check_schema",
                        classmethod(lambda cls, schema, **kw: (checks.append(schema), original(cls, schema, **kw))[1]))
    param = Param(5, type="integer", minimum=1, maximum=10, title="a schema no other test uses")
    for value in (1, 7, 10):
        assert param.resolve(value) == value
    with pytest.raises(ParamValidationError, match="11 is greater than the maximum of 10"):
        param.resolve(11)
    with pytest.raises(ParamValidationError, match="'7' is not of type 'integer'"):
        param.resolve("7")
    assert len(checks) == 1, checks


def test_a_schema_that_fails_its_check_fails_every_time():
    check_param_schemas_once()
    broken = Param(1, type="no-such-type")
    for _ in range(2):
        with pytest.raises(jsonschema.SchemaError, match="no-such-type"):
            broken.resolve(1)
