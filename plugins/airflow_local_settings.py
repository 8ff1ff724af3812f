"""Airflow's local settings: imported once at start by every Airflow process (scheduler, dag-processor,
triggerer, api-server, each task, `airflow dags test`), from the plugins folder, which Airflow puts on sys.path.

It makes Param validation check each schema against JSON Schema's metaschema once per process
(operators/kit/param_checks.py says why): values are validated as before. And it spares each process the
garbage collections CPython runs over its whole heap as it exits (operators/kit/process_exit.py says why).
It declares no cluster policy.
"""
from operators.kit.param_checks import check_param_schemas_once
from operators.kit.process_exit import skip_final_collections

__all__: list[str] = []  # Airflow reads the names listed here as cluster policies: none

check_param_schemas_once()
skip_final_collections()
