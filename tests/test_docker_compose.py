"""docker-compose.yaml cannot be started here (no Docker engine), so its shape is checked instead."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_services_of_a_production_airflow_are_present():
    services = load()["services"]
    assert {"postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer"} <= set(services)
    assert services["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]


def test_every_airflow_service_sees_the_aws_connection_and_data_root():
    services = load()["services"]
    for name, service in services.items():
        if name.startswith("airflow-"):
            env = service["environment"]
            assert "AIRFLOW_CONN_AWS_DEFAULT" in env and env["DATA_ROOT"].startswith("${DATA_ROOT"), name
            assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
            assert env["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "True", name  # shards wait in the triggerer
            assert service["build"]["dockerfile"] == "images/airflow/Dockerfile"


def test_no_secret_is_written_in_the_file_and_images_are_pinned():
    text = (REPO / "docker-compose.yaml").read_text()
    for key in ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_CONN_AWS_DEFAULT"):
        assert re.search(rf"\$\{{{key}:\?", text), f"{key} must come from .env, with an error when unset"
    assert "password" not in text.lower().replace("postgres_password", "")
    for service in load()["services"].values():
        image = service.get("image")
        if image:
            assert ":" in image and not image.endswith(":latest"), image
    for dockerfile in ("images/airflow/Dockerfile", "images/worker/Dockerfile"):
        base = re.search(r"^FROM (\S+)", (REPO / dockerfile).read_text(), re.M).group(1)
        assert ":" in base and not base.endswith(":latest"), base


def test_build_context_files_exist():
    text = (REPO / "images" / "airflow" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists(), path
