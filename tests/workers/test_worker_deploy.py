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


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Container path -> (volume or host path, mode) of a compose service."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def test_services_and_build_files(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "keygen", "scrape-token", "api", "dispatcher", "worker",
                             "prometheus",
                             "grafana"}
    for name, dockerfile in (("api", "deploy/Dockerfile.api"), ("dispatcher", "deploy/Dockerfile.api"),
                             ("migrate", "deploy/Dockerfile.api"), ("worker", "deploy/Dockerfile.worker"),
                             ("keygen", "deploy/Dockerfile.worker")):
        assert services[name]["build"]["dockerfile"] == dockerfile
        assert (REPO / services[name]["build"]["context"] / dockerfile).is_file()
    api_image = "\n".join(line for line in (DEPLOY / "Dockerfile.api").read_text().splitlines()
                          if not line.lstrip().startswith("#"))
    assert "torch" not in api_image and "open_clip" not in api_image and "ease_engine" not in api_image


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
    for name in ("api", "worker"):
        assert mounts(services[name])[api_env["LETHE_ARTIFACT_DIR"]][0] == "artifacts"


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


def test_prometheus_scrapes_the_api_with_the_token_the_api_reads(compose):
    """/metrics needs a token: Prometheus reads the file the API is configured with, from the same volume."""
    services = compose["services"]
    job = {job["job_name"]: job for job in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]}
    authorization = job["lethe-api"]["authorization"]
    assert authorization["type"] == "Bearer"
    in_prometheus = Path("/etc/prometheus") / authorization["credentials_file"]  # relative to the config file
    token_file = Path(services["api"]["environment"]["LETHE_METRICS_TOKEN_FILE"])
    assert mounts(services["prometheus"])[str(in_prometheus.parent)][0] == mounts(services["api"])[
        str(token_file.parent)][0] == "metrics-token"
    assert in_prometheus.name == token_file.name
    assert services["api"]["depends_on"]["scrape-token"]["condition"] == "service_completed_successfully"
    assert token_file.name in " ".join(services["scrape-token"]["command"])


def test_grafana_dashboard_uses_existing_metrics(compose):
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/lethe.json").read_text())
    # (that every query names an exported series: tests/deploy/test_monitoring_dashboard.py)
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("status", "stage duration", "queue depth", "verification figures"):
        assert topic in titles
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/lethe.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == dashboards_dir


# --------------------------------------------------------------------------- start order, restarts, health

LONG_RUNNING = ("postgres", "redis", "api", "dispatcher", "worker", "prometheus", "grafana")
ONE_SHOT = ("migrate", "keygen")


def test_services_wait_for_the_migrations_and_the_key(compose):
    services = compose["services"]
    assert services["migrate"]["command"] == ["lethe-admin", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "dispatcher", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for name in ("api", "worker"):  # the API serves the public key, the worker signs with the private one
        assert services[name]["depends_on"]["keygen"]["condition"] == "service_completed_successfully", name
    assert services["api"]["environment"].get("LETHE_AUTO_MIGRATE", "0") == "0"  # migrate does it, once


def test_restart_policies(compose):
    services = compose["services"]
    for name in LONG_RUNNING:
        assert services[name].get("restart") in {"unless-stopped", "always"}, name
    for name in ONE_SHOT:  # a one-shot that restarted would never complete
        assert services[name].get("restart") == "no", name


def test_worker_healthcheck_reads_its_heartbeat(compose):
    worker = compose["services"]["worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "workers.healthcheck"]
    assert (REPO / "workers" / "healthcheck.py").is_file()
    assert 'CMD ["python", "-m", "workers.healthcheck"]' in (DEPLOY / "Dockerfile.worker").read_text()
    # it asks the exporter on the container's loopback; Prometheus scrapes it from outside
    assert worker["environment"]["LETHE_WORKER_METRICS_ADDR"] == "0.0.0.0"


def test_redis_keeps_queued_tasks_across_restarts(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert mounts(redis)["/data"][0] == "redisdata"


# --------------------------------------------------------------------------- the signing key


def test_only_workers_and_keygen_can_read_the_private_key(compose):
    services = compose["services"]
    private_key = Path(services["worker"]["environment"]["LETHE_SIGNING_KEY"])
    public_key = Path(services["api"]["environment"]["LETHE_SIGNING_PUBLIC_KEY"])
    private_volume = mounts(services["worker"])[str(private_key.parent)][0]
    public_volume = mounts(services["api"])[str(public_key.parent)][0]
    assert private_volume != public_volume
    holders = {name for name, service in services.items()
               if any(source == private_volume for source, _mode in mounts(service).values())}
    assert holders == {"keygen", "worker"}
    assert mounts(services["worker"])[str(private_key.parent)][1] == "ro"
    assert mounts(services["api"])[str(public_key.parent)][1] == "ro"
    assert mounts(services["api"])[services["api"]["environment"]["LETHE_ARTIFACT_DIR"]][1] == "ro"
    # keygen writes exactly the files the worker signs with and the API serves
    assert services["keygen"]["command"] == ["lethe", "signing-key", str(private_key), "--public-out", str(public_key)]
    assert mounts(services["keygen"])[str(private_key.parent)][0] == private_volume
    assert mounts(services["keygen"])[str(public_key.parent)][0] == public_volume
    # the worker no longer creates a key at start (scaled workers would race on it)
    assert "signing-key" not in " ".join(services["worker"].get("command", []))
    assert "signing-key" not in (DEPLOY / "Dockerfile.worker").read_text().split("\nCMD")[-1]


def test_keygen_is_idempotent(tmp_path):
    from typer.testing import CliRunner

    from lethe_cli.main import app

    private, public_out = tmp_path / "private" / "key.pem", tmp_path / "public" / "key.pem.pub"
    runner = CliRunner()
    first = runner.invoke(app, ["signing-key", str(private), "--public-out", str(public_out)])
    assert first.exit_code == 0, first.output
    key, public = private.read_bytes(), public_out.read_bytes()
    assert oct(private.stat().st_mode & 0o777) == "0o600" and public.startswith(b"-----BEGIN PUBLIC KEY-----")
    second = runner.invoke(app, ["signing-key", str(private), "--public-out", str(public_out)])
    assert second.exit_code == 0 and "kept" in second.output
    assert private.read_bytes() == key and public_out.read_bytes() == public
    assert (private.parent / "key.pem.pub").read_bytes() == public


def _make_key(path: str, start) -> bytes:
    from workers.signing import ensure_key_pair

    start.wait(30)
    _private, public = ensure_key_pair(Path(path))
    return public.read_bytes()


def test_concurrent_key_creation_agrees_on_one_key(tmp_path):
    """Processes racing to create the same key pair all end up with the one key on disk (no error, no torn
    file)."""
    import multiprocessing

    from cryptography.hazmat.primitives import serialization

    context = multiprocessing.get_context("fork")
    start = context.Manager().Event()
    path = tmp_path / "keys" / "signing.pem"
    with context.Pool(6) as pool:
        pending = [pool.apply_async(_make_key, (str(path), start)) for _ in range(6)]
        start.set()
        publics = {result.get(timeout=120) for result in pending}
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    on_disk = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert publics == {on_disk}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def _copied(dockerfile: str) -> set[str]:
    return set(re.findall(r"^COPY (\w+) ", (DEPLOY / dockerfile).read_text(), flags=re.M))


def test_images_hold_the_packages_their_code_imports():
    """The API image runs service/ (which imports lethe_format) and `lethe-admin` (lethe_cli.admin); the worker
    image installs every package of pyproject.toml and runs `lethe` (lethe_cli). A package missing from COPY breaks
    the image at start."""
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    # lethe_flower needs the `flower` extra, which the worker image does not install: it has its own image
    in_worker = packages - {"lethe_flower"}
    assert in_worker <= _copied("Dockerfile.worker"), in_worker - _copied("Dockerfile.worker")
    assert {"lethe_format", "ease_engine", "lethe_flower"} <= _copied("flower/Dockerfile")
    assert {"service", "lethe_format", "migrations", "lethe_cli"} <= _copied("Dockerfile.api")  # lethe-admin
    assert not {"ease_engine", "workers", "lethe_bench", "lethe_flower"} & _copied("Dockerfile.api")
