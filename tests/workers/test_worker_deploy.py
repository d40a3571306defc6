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
    names = set()
    for path in ("service/settings.py", "workers/settings.py"):
        names |= set(re.findall(r"LETHE_[A-Z_]+", (REPO / path).read_text()))
    return names


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Container path -> (volume or host path, mode) of a compose service."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def test_services_and_build_files(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "keygen", "api", "dispatcher", "worker", "prometheus",
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

    from workers.cli import app

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


# --------------------------------------------------------------------------- images


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(("dockerfile", "extras"), [("Dockerfile.api", ""), ("Dockerfile.worker", "engine")])
def test_dependencies_are_installed_from_pyproject_before_the_source(dockerfile, extras):
    steps = instructions(DEPLOY / dockerfile)
    install = next(index for index, (op, args) in enumerate(steps)
                   if op == "RUN" and "pyproject_requirements.py" in args)
    assert f"python scripts/pyproject_requirements.py {extras}".strip() + " > " in steps[install][1]
    assert "pip install -r" in steps[install][1]
    copied_before = [args for op, args in steps[:install] if op == "COPY"]
    assert copied_before == ["pyproject.toml ./", "scripts/pyproject_requirements.py ./scripts/"]
    copied_after = " ".join(args for op, args in steps[install:] if op == "COPY")
    for source in ("service", "migrations"):
        assert f"{source} ./{source}" in copied_after
    final_install = [args for op, args in steps[install + 1:] if op == "RUN" and "pip install" in args]
    assert final_install == ["pip install --no-deps -e ."]  # the source adds no dependency of its own
    # the commit label comes last: a new commit rebuilds no dependency layer
    assert [op for op, _args in steps].index("ARG") > install


def test_the_api_image_has_no_engine():
    steps = instructions(DEPLOY / "Dockerfile.api")
    copied = " ".join(args for op, args in steps if op == "COPY")
    assert "ease_engine" not in copied and "workers" not in copied


def test_pyproject_requirements_script_matches_pyproject():
    import subprocess
    import sys
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def run(*extras: str) -> list[str]:
        completed = subprocess.run([sys.executable, str(REPO / "scripts" / "pyproject_requirements.py"), *extras],
                                   capture_output=True, text=True, timeout=60, check=True)
        return completed.stdout.splitlines()

    assert run() == project["dependencies"]
    assert run("engine") == project["dependencies"] + project["optional-dependencies"]["engine"]
    assert subprocess.run([sys.executable, str(REPO / "scripts" / "pyproject_requirements.py"), "gpu"],
                          capture_output=True, timeout=60).returncode != 0


def _requirement_closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions ``requirements`` install, transitively (from installed metadata)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, frozenset]] = set()
    names: set[str] = set()
    stack = [Requirement(line) for line in requirements]
    while stack:
        requirement = stack.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name, extras = canonicalize_name(requirement.name), frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed on this platform
        names.add(name)
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in ("", *extras)):
                stack.append(sub)
    return names


def _third_party_imports(*packages: str) -> set[str]:
    import ast
    import sys

    names = set()
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"service", "migrations", "workers", "ease_engine"}


def test_core_dependencies_serve_the_api_without_torch():
    """What the API image installs (pyproject's core list) provides every module service/ and migrations/ import,
    and pulls in no torch."""
    import tomllib
    from importlib import metadata

    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _requirement_closure(project["dependencies"])
    assert not core & {"torch", "torchvision", "open-clip-torch", "scipy"}, core & {"torch", "torchvision"}
    providers = metadata.packages_distributions()
    missing = {module for module in _third_party_imports("service", "migrations")
               if not {canonicalize_name(dist) for dist in providers.get(module, [])} & core}
    assert not missing, f"imported by the service but not installed by pyproject's core dependencies: {missing}"
    # negative control: the engine's imports are not covered by the core list
    engine_only = {module for module in _third_party_imports("ease_engine")
                   if not {canonicalize_name(dist) for dist in providers.get(module, [])} & core}
    assert {"torch", "open_clip"} <= engine_only
    assert "lethe-admin" in project["scripts"] and project["scripts"]["lethe-admin"] == "service.cli:admin_app"


def test_lethe_admin_creates_the_first_token(tmp_path):
    """`docker compose run --rm api lethe-admin token create ...`: the API image's way to the first token."""
    from sqlalchemy import select
    from typer.testing import CliRunner

    from service.auth import hash_token
    from service.cli import admin_app
    from service.db import Database
    from service.models import ApiToken

    url = f"sqlite:///{tmp_path / 'lethe.db'}"
    runner = CliRunner()
    migrated = runner.invoke(admin_app, ["db", "upgrade", "--database-url", url])
    assert migrated.exit_code == 0, migrated.output
    created = runner.invoke(admin_app, ["token", "create", "--role", "admin", "--name", "ops", "--database-url", url])
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip().splitlines()[0]
    database = Database(url)
    with database.session() as session:
        token = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(plaintext)))
        assert (token.role, token.name) == ("admin", "ops")
    database.dispose()
    header = (REPO / "docker-compose.yml").read_text().split("\nx-lethe-env")[0]
    assert "docker compose run --rm api lethe-admin token create" in header


# --------------------------------------------------------------------------- build context


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether docker leaves ``path`` out of the build context (the subset of .dockerignore syntax used here:
    names, globs, a leading ``**/`` for any depth; a pattern that matches a directory excludes its content)."""
    from fnmatch import fnmatchcase

    parts = path.split("/")
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        anywhere = pattern.startswith("**/")
        pattern = pattern.removeprefix("**/")
        for end in range(1, len(parts) + 1):
            starts = range(end) if anywhere else [0]
            if any(fnmatchcase("/".join(parts[start:end]), pattern) for start in starts):
                return True
    return False


def test_dockerignore_keeps_secrets_and_bulk_out_of_the_build_context():
    patterns = dockerignore_patterns()
    for path in (".venv/lib/python3.11/site-packages/torch/lib/libtorch.so", ".git/HEAD", "runs/demo/keys/a.pem",
                 "runs/default/open_clip_model.safetensors", "artifacts/model/v1/weights.safetensors",
                 "var/lethe.db", "var/keys/lethe-signing-key.pem", "keys/lethe-signing-key.pem",
                 "somewhere/else/signing.pem", "service/__pycache__/app.cpython-311.pyc", ".pytest_cache/v/x",
                 ".ruff_cache/x", "lethe.egg-info/PKG-INFO"):
        assert ignored(path, patterns), path
    # what the images copy stays in
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker"):
        for op, args in instructions(DEPLOY / dockerfile):
            if op == "COPY":
                for source in args.split()[:-1]:
                    assert (REPO / source).exists(), (dockerfile, source)
                    assert not ignored(source, patterns), (dockerfile, source)
                    assert not ignored(f"{source}/x.py", patterns), (dockerfile, source)
    # negative control of the matcher itself
    assert not ignored("service/app.py", patterns) and ignored("a/b.pem", ["**/*.pem"])
    assert not ignored("runsx/file", ["runs"])
