"""Airflow's local settings: imported once at start by every Airflow process (scheduler, dag-processor,
triggerer, api-server, each task, `airflow dags test`), from the plugins folder, which Airflow puts on sys.path.

It only makes Param validation check each schema against JSON Schema's metaschema once per process
(operators/kit/param_checks.py says why): values are validated as before. It declares no cluster policy.
"""
from operators.kit.param_checks import check_param_schemas_once

__all__: list[str] = []  # Airflow reads the names listed here as cluster policies: none

check_param_schemas_once()
