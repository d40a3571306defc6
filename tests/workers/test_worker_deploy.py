"""docker-compose.yml, the Dockerfiles, Prometheus and Grafana files agree with each other and with
the code (no docker engine needed): services, ports, hostnames, environment variable names, metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def known_settings() -> set[str]:
    from service.settings import Settings

    return {Settings.env_name(field) for field in Settings.model_fields}


def defined_metrics() -> set[str]:
    names = set()
    for path in ("service/metrics.py", "workers/metrics.py"):
        names |= set(re.findall(r'"(lethe_[a-z_]+)"', (REPO / path).read_text()))
    return names


def test_services_and_build_files(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "api", "dispatcher", "worker", "prometheus", "grafana"}
    for name, dockerfile in (("api", "deploy/Dockerfile.api"), ("dispatcher", "deploy/Dockerfile.api"),
                             ("worker", "deploy/Dockerfile.worker")):
        assert services[name]["build"]["dockerfile"] == dockerfile
        assert (REPO / services[name]["build"]["context"] / dockerfile).is_file()
    api_image = "\n".join(line for line in (DEPLOY / "Dockerfile.api").read_text().splitlines()
                          if not line.lstrip().startswith("#"))
    assert "torch" not in api_image and "open_clip" not in api_image and "pip install ." not in api_image
    assert "pip install ." in (DEPLOY / "Dockerfile.worker").read_text()


def test_environment_names_and_values_are_consistent(compose):
    services = compose["services"]
    api_env, worker_env = services["api"]["environment"], services["worker"]["environment"]
    dispatcher_env = services["dispatcher"]["environment"]
    unknown = {name for env in (api_env, worker_env, dispatcher_env) for name in env if name not in known_settings()}
    assert not unknown, f"not read by any settings module: {unknown}"
    for name in ("LETHE_DATABASE_URL", "LETHE_BROKER_URL", "LETHE_TASK_QUEUE", "LETHE_ARTIFACT_DIR"):
        assert api_env[name] == worker_env[name] == dispatcher_env[name], name
    # exactly one place sends the outbox: the dispatcher service, not the API
    assert api_env["LETHE_DISPATCHER_IN_API"] == "0"
    assert services["dispatcher"]["command"] == ["python", "-m", "service.dispatcher"]
    assert (REPO / "service" / "dispatcher.py").is_file()
    database = urlparse(api_env["LETHE_DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert database.scheme == "postgresql+psycopg" and database.hostname == "postgres" and database.port == 5432
    assert (database.username, database.password, database.path.lstrip("/")) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])
    assert urlparse(api_env["LETHE_BROKER_URL"]).hostname == "redis"
    # the worker signs with the private key whose public half the API serves; both see the same volume
    assert api_env["LETHE_SIGNING_PUBLIC_KEY"] == worker_env["LETHE_SIGNING_KEY"] + ".pub"
    key_dir = str(Path(worker_env["LETHE_SIGNING_KEY"]).parent)
    for name in ("api", "worker"):
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services[name]["volumes"]}
        assert mounts[key_dir] == "keys" and mounts[api_env["LETHE_ARTIFACT_DIR"]] == "artifacts"


def test_ports_match_prometheus_targets(compose):
    services = compose["services"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    api_target = jobs["lethe-api"]["static_configs"][0]["targets"][0]
    api_port = services["api"]["ports"][0].split(":")[1]
    assert api_target == f"api:{api_port}"
    assert f'"--port", "{api_port}"' in (DEPLOY / "Dockerfile.api").read_text()
    worker_port = services["worker"]["environment"]["LETHE_WORKER_METRICS_PORT"]
    discovery = jobs["lethe-worker"]["dns_sd_configs"][0]
    assert discovery["names"] == ["worker"] and str(discovery["port"]) == worker_port
    assert worker_port in services["worker"]["expose"]
    dispatcher_port = services["dispatcher"]["environment"]["LETHE_DISPATCHER_METRICS_PORT"]
    assert jobs["lethe-dispatcher"]["static_configs"][0]["targets"] == [f"dispatcher:{dispatcher_port}"]
    assert dispatcher_port in services["dispatcher"]["expose"]
    assert services["dispatcher"]["environment"]["LETHE_DISPATCHER_METRICS_ADDR"] == "0.0.0.0"
    mounted = {volume.split(":")[0] for volume in services["prometheus"]["volumes"]}
    assert "./deploy/prometheus.yml" in mounted


def test_grafana_dashboard_uses_existing_metrics(compose):
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/lethe.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|total|count|sum)$", "", name) for expr in expressions
            for name in re.findall(r"\blethe_[a-z_]+", expr)}
    assert used and used <= defined_metrics(), used - defined_metrics()
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("status", "stage duration", "queue depth", "verification figures"):
        assert topic in titles
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/lethe.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == dashboards_dir


def _copied(dockerfile: str) -> set[str]:
    return set(re.findall(r"^COPY (\w+) ", (DEPLOY / dockerfile).read_text(), flags=re.M))


def test_images_hold_the_packages_their_code_imports():
    """The API image runs service/ (which imports lethe_format); the worker image installs every package of
    pyproject.toml and runs `lethe` (lethe_cli). A package missing from COPY breaks the image at start."""
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages <= _copied("Dockerfile.worker"), packages - _copied("Dockerfile.worker")
    assert {"service", "lethe_format", "migrations"} <= _copied("Dockerfile.api")
    assert not {"ease_engine", "workers", "lethe_cli"} & _copied("Dockerfile.api")
