"""The images and their build context: dependencies installed from pyproject.toml in a layer before the source,
the API's core dependency list (no torch) covering what the service imports, `lethe-admin` in the API image, and
a .dockerignore that keeps secrets and bulk out (no docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


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
    return names - set(sys.stdlib_module_names) - {"service", "migrations", "workers", "ease_engine", "lethe_format",
                                                   "lethe_cli", "lethe_bench", "lethe_flower"}


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
    missing = {module for module in _third_party_imports("service", "migrations", "lethe_format")
               if not {canonicalize_name(dist) for dist in providers.get(module, [])} & core}
    assert not missing, f"imported by the service but not installed by pyproject's core dependencies: {missing}"
    # negative control: the engine's imports are not covered by the core list
    engine_only = {module for module in _third_party_imports("ease_engine")
                   if not {canonicalize_name(dist) for dist in providers.get(module, [])} & core}
    assert {"torch", "open_clip"} <= engine_only
    assert "lethe-admin" in project["scripts"] and project["scripts"]["lethe-admin"] == "lethe_cli.admin:admin_app"


def test_lethe_admin_creates_the_first_token(tmp_path):
    """`docker compose run --rm api lethe-admin token create ...`: the API image's way to the first token."""
    from sqlalchemy import select
    from typer.testing import CliRunner

    from lethe_cli.admin import admin_app
    from service.auth import hash_token
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
