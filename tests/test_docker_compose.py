"""docker-compose.yaml cannot be started here (no Docker engine), so its shape is checked instead."""
from __future__ import annotations

import os
import re
import stat
import subprocess
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
            settings = {**production_env(), **env}
            assert settings["AIRFLOW__CORE__EXECUTOR"] == "operators.kit.executor.DeferSafeLocalExecutor", name
            assert settings["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "True", name  # shards wait in the triggerer
            assert service["build"]["dockerfile"] == "images/airflow/Dockerfile"


REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")  # ${VAR:?message}: docker compose stops when VAR is unset or empty
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_KEY$")


def service_environments() -> dict[str, dict[str, str]]:
    return {name: service.get("environment") or {} for name, service in load()["services"].items()}


def test_no_secret_is_written_in_the_file_and_images_are_pinned():
    text = (REPO / "docker-compose.yaml").read_text()
    for key in ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_CONN_AWS_DEFAULT"):
        assert re.search(rf"\$\{{{key}:\?", text), f"{key} must come from .env, with an error when unset"
    for service, env in service_environments().items():
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert REQUIRED.match(str(value)), f"{service}: {key} must be ${{VAR:?message}} from .env, not {value!r}"
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


def test_every_airflow_container_gets_the_same_required_secrets():
    airflow = {name: env for name, env in service_environments().items() if name.startswith("airflow-")}
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
        values = {name: env.get(key) for name, env in airflow.items()}
        assert all(values.values()) and len(set(values.values())) == 1, f"{key} differs or is missing: {values}"
        assert REQUIRED.match(next(iter(values.values()))), key


def test_production_uses_the_fab_auth_manager_installed_in_the_airflow_image():
    fab = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    for name, env in service_environments().items():
        if name.startswith("airflow-"):
            assert {**production_env(), **env}["AIRFLOW__CORE__AUTH_MANAGER"] == fab, name
    pinned = re.search(r"^apache-airflow-providers-fab==(\S+)$", (REPO / "images/airflow/requirements.txt").read_text(), re.M)
    assert pinned, "images/airflow/requirements.txt must pin apache-airflow-providers-fab"
    assert f"apache-airflow-providers-fab=={pinned.group(1)}" in (REPO / "images/airflow/constraints.txt").read_text()
    dockerfile = (REPO / "images/airflow/Dockerfile").read_text()
    assert "-r images/airflow/requirements.txt" in dockerfile and "-c images/airflow/constraints.txt" in dockerfile
    init = load()["services"]["airflow-init"]
    assert "airflow users create --role Admin" in init["command"][-1]
    assert REQUIRED.match(init["environment"]["AIRFLOW_ADMIN_PASSWORD"])


def test_env_is_git_ignored_and_the_example_names_every_required_variable_and_how_to_make_secrets():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO, timeout=60)
    assert ignored.returncode == 0, ".env must be git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO, timeout=60).returncode == 1
    required = set(re.findall(r"\$\{(\w+):\?", (REPO / "docker-compose.yaml").read_text()))
    example = (REPO / ".env.example").read_text()
    listed = dict(re.findall(r"^(\w+)=(.*)$", example, re.M))
    assert required <= set(listed), f"missing from .env.example: {sorted(required - set(listed))}"
    for name in required:
        if SECRET_NAME.search(name):
            assert listed[name] == "", f"{name}: .env.example must not carry a secret value"
            before = example[:example.index(f"\n{name}=")].rsplit("\n\n", 1)[-1]
            assert "Generate:" in before, f"{name}: .env.example must say how to generate it"


def test_postgres_is_a_current_16_minor():
    image = load()["services"]["postgres"]["image"]
    major, minor = re.fullmatch(r"postgres:(\d+)\.(\d+)", image).groups()
    # 16.16 ships with 18.6 (minor releases cover every supported branch at once).
    assert (int(major), int(minor)) >= (16, 16) and major == "16", image


def test_the_worker_image_runs_as_a_fixed_non_root_user():
    lines = [line.strip() for line in (REPO / "images/worker/Dockerfile").read_text().splitlines()]
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#") and line.split()[0].isupper()]
    users = [i for i, (word, *_rest) in enumerate(instructions) if word == "USER"]
    assert users, "the worker image must set USER"
    user = instructions[users[-1]][1].split(":")[0]
    assert user.isdigit() and int(user) >= 1000, f"USER {user}: a fixed non-root uid"
    assert not any(word == "RUN" for word, *_ in instructions[users[-1]:]), "nothing may run as root after USER"


def production_env() -> dict[str, str]:
    lines = (REPO / "config/production.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_compose_loads_the_production_settings_and_repeats_none_of_them():
    shared = production_env()
    assert shared["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "True"
    assert shared["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    for name, service in load()["services"].items():
        if name.startswith("airflow-"):
            assert service["env_file"] == "config/production.env", name
            repeated = set(service["environment"]) & set(shared)
            assert not repeated, f"{name}: {sorted(repeated)} are in config/production.env; set them only there"


def rehearsal_env(tmp_path) -> dict[str, str]:
    """What scripts/rehearsal.sh gives the components, printed by its `env` mode (starts nothing)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(REHEARSAL_HOME=str(tmp_path / "rehearsal"), DATA_ROOT=str(tmp_path / "data"))
    out = subprocess.run(["bash", "-c", "source scripts/env.sh && scripts/rehearsal.sh env"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_the_rehearsal_runs_the_production_settings_and_changes_only_what_compose_leaves_to_each_deployment(tmp_path):
    rehearsal = rehearsal_env(tmp_path)
    for key, value in production_env().items():
        assert rehearsal.get(key) == value, f"{key}: rehearsal {rehearsal.get(key)!r}, config/production.env {value!r}"
    per_deployment = set(load()["x-airflow-common"]["environment"])
    # The API's own address is the container's default (0.0.0.0:8080) under compose.
    local_only = {"AIRFLOW_HOME", "AIRFLOW__API__HOST", "AIRFLOW__API__PORT", "AIRFLOW__API__BASE_URL",
                  "AIRFLOW_ADMIN_USERNAME", "AIRFLOW_ADMIN_EMAIL", "BATCH_LOCAL_VCPUS", "AWS_CA_BUNDLE"}
    airflow_settings = {key for key in rehearsal if key.startswith(("AIRFLOW", "BATCH_"))}
    unexplained = airflow_settings - set(production_env()) - per_deployment - local_only
    assert not unexplained, f"the rehearsal sets {sorted(unexplained)}, which neither compose nor production.env names"
    # Nothing of the local default (SQLite, unpaused DAGs, a local DATA_ROOT, 8 children) leaks in.
    assert rehearsal["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:<secret>@127.0.0.1:")
    assert "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION" not in rehearsal
    assert rehearsal["DATA_ROOT"].startswith("s3://")
    assert rehearsal["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == rehearsal["AIRFLOW__API__BASE_URL"] + "/execution/"
    assert ":8080" not in rehearsal["AIRFLOW__API__BASE_URL"]
    secrets = (tmp_path / "rehearsal" / "secrets.env")
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    for line in secrets.read_text().splitlines():
        assert line.split("=", 1)[1] not in "\n".join(rehearsal.values())


def test_airflow_metrics_go_out_through_opentelemetry_to_the_deployments_collector():
    settings = production_env()
    assert settings["AIRFLOW__METRICS__OTEL_ON"] == "True" and settings["AIRFLOW__METRICS__OTEL_PREFIX"] == "airflow"
    for name, env in service_environments().items():
        if name.startswith("airflow-"):
            assert env["AIRFLOW__METRICS__OTEL_HOST"].startswith("${AIRFLOW_OTEL_HOST"), name
            assert env["AIRFLOW__METRICS__OTEL_PORT"].startswith("${AIRFLOW_OTEL_PORT"), name
    # The exporter Airflow's otel_on loads is installed (an import error would stop every component).
    import opentelemetry.exporter.otlp.proto.http.metric_exporter  # noqa: F401
