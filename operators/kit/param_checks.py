"""Airflow's Param validation without re-checking an unchanged schema against JSON Schema's metaschema."""
from __future__ import annotations

import json


def check_param_schemas_once() -> None:
    """Check each distinct JSON schema against its metaschema once per process, not on every validation.

    Airflow resolves every Param each time it serialises a DAG (`dag.test()` and `airflow dags test`:
    before each task; the dag-processor: each parse), and `jsonschema.validate` first checks the Param's
    schema against the metaschema (Draft 2020-12, with its dynamic references), then validates the value.
    A house pipeline's run under `dag.test()` did that about 5,000 times, half of its time. The schema check is
    a pure function of the schema, so one success is remembered; values are still validated every time,
    and a schema that fails its check raises as before. This is `jsonschema.validate` otherwise line for
    line. Every Airflow process calls it at start (plugins/airflow_local_settings.py), and so do the
    tests and benchmarks that run `dag.test()` in their own process (tests/conftest.py, benchmarks/harness.py).
    """
    import jsonschema
    from jsonschema import exceptions, validators

    if getattr(jsonschema.validate, "checks_schemas_once", False):
        return
    checked: set[tuple[type, str]] = set()

    def validate(instance, schema, cls=None, *args, **kwargs):
        if cls is None:
            cls = validators.validator_for(schema)
        key = (cls, json.dumps(schema, sort_keys=True, default=repr))
        if key not in checked:
            cls.check_schema(schema)
            checked.add(key)
        error = exceptions.best_match(cls(schema, *args, **kwargs).iter_errors(instance))
        if error is not None:
            raise error

    validate.checks_schemas_once = True
    jsonschema.validate = validate
