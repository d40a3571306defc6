"""deploy/flower (a SuperLink and two SuperNodes in docker compose) agrees with itself and with the code:
ports, the flwr CLI's connection, the App's components and run config, the clients the SuperNodes claim,
the paths the ServerApp reads and writes, and the Flower pin. No docker engine needed."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from ease_engine.federation.config import load_config

REPO = Path(__file__).resolve().parents[2]
FLOWER = REPO / "deploy" / "flower"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((FLOWER / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def app() -> dict:
    return tomllib.loads((FLOWER / "app" / "pyproject.toml").read_text())


def _option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def _supernodes(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s["command"][0] == "flower-supernode"}


def test_one_superlink_and_two_supernodes_built_from_the_image(compose):
    services = compose["services"]
    assert set(services) == {"superlink", "supernode-0", "supernode-1"}
    assert services["superlink"]["command"][0] == "flower-superlink"
    for service in services.values():
        assert service["build"] == {"context": "../..", "dockerfile": "deploy/flower/Dockerfile"}
        assert (FLOWER / service["build"]["context"] / service["build"]["dockerfile"]).resolve().is_file()
    dockerfile = (FLOWER / "Dockerfile").read_text()
    assert 'pip install ".[engine,flower]"' in dockerfile and "COPY lethe_flower ./lethe_flower" in dockerfile


def test_ports_and_addresses_agree(compose):
    superlink = compose["services"]["superlink"]
    port = _option(superlink["command"], "--port")
    assert _option(superlink["command"], "--host") == "0.0.0.0"
    host_port, container_port = superlink["ports"][0].split("#")[0].strip().strip('"').split(":")
    assert container_port == port
    for name, node in _supernodes(compose).items():
        assert _option(node["command"], "--superlink") == f"superlink:{port}", name
        assert "superlink" in node["depends_on"]
    cli = tomllib.loads((FLOWER / "flwr-home" / "config.toml").read_text())["superlink"]
    assert cli[cli["default"]]["address"] == f"127.0.0.1:{host_port}"
    for service in compose["services"].values():  # nothing installs packages at run time
        assert _option(service["command"], "--isolation") == "subprocess"
    assert "--disable-runtime-dependency-installation" in superlink["command"]


def test_supernodes_are_the_clients_of_the_federation_config(compose, app):
    config_path = app["tool"]["flwr"]["app"]["config"]["lethe-config"]
    assert f"deploy/flower/federation.toml {config_path}" in (FLOWER / "Dockerfile").read_text()
    config = load_config(FLOWER / "federation.toml")
    claimed = []
    for node in _supernodes(compose).values():
        node_config = _option(node["command"], "--node-config")
        claimed.append(int(re.fullmatch(r"lethe-client-id=(\d+)", node_config).group(1)))
    assert sorted(claimed) == list(range(config.partition.n_clients)), "one SuperNode per client, each once"


def test_app_components_and_run_config_match_lethe_flower(app, compose):
    flwr_app = app["tool"]["flwr"]["app"]
    assert flwr_app["components"] == {"serverapp": "lethe_flower.apps:server_app",
                                      "clientapp": "lethe_flower.apps:client_app"}
    source = (REPO / "lethe_flower" / "apps.py").read_text()
    assigned = {t.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert {"server_app", "client_app"} <= assigned
    keys = set(re.findall(r'^[A-Z_]+_KEY = "([a-z-]+)"', source, re.M))
    keys |= set(re.findall(r'^RUN_CONFIG_PATH_KEY = "([a-z-]+)"', (REPO / "lethe_flower" / "client.py").read_text(),
                           re.M))
    assert set(flwr_app["config"]) == keys
    out = flwr_app["config"]["out"]
    mounts = dict(v.split(":")[::-1] for v in compose["services"]["superlink"]["volumes"])
    assert any(out.startswith(path + "/") and name == "artifacts" for path, name in mounts.items())


def test_local_script_starts_the_same_app_and_client_ids():
    script = (FLOWER / "run_local.sh").read_text()
    node_key = re.search(r'^NODE_CLIENT_ID_KEY = "([a-z-]+)"', (REPO / "lethe_flower" / "records.py").read_text(), re.M)
    assert f'--node-config "{node_key.group(1)}=$k"' in script
    assert "flwr run deploy/flower/app" in script and "--disable-runtime-dependency-installation" in script
    assert 'lethe-config=\\"$CONFIG\\" out=\\"$OUT\\"' in script


def test_flower_pin_is_the_same_everywhere(app):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["flower"]
    assert extra == app["project"]["dependencies"] == ["flwr[simulation]==1.42.0"]
    assert "lethe[flower]" in project["optional-dependencies"]["dev"]
    version = extra[0].split("==")[1]
    compose_text = (FLOWER / "docker-compose.yml").read_text()
    assert f"image: lethe-flower:{version}" in compose_text


def test_the_app_passes_flowers_own_validation():
    pytest.importorskip("flwr", reason="flwr is not installed (pip install -e '.[flower]'): App not validated")
    from flwr.cli.config_utils import load_and_validate

    _, warnings = load_and_validate(FLOWER / "app" / "pyproject.toml")  # also finds both components' modules
    assert warnings == []
