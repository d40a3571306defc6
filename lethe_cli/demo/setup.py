"""The demo's set-up: its work folder, the federation to register and the children's environment."""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lethe_cli.demo.output import say, show
from lethe_cli.serve import child_environment
from lethe_format import FormatError, read_clients, read_json_object
from lethe_format import layout as lf_layout
from service.settings import Settings

MARKER = ".lethe-demo"
# settings the demo always sets itself (a deployment's database, broker or key are never used)
OWN_SETTINGS = tuple(Settings.env_name(field) for field in (
    "database_url", "broker_url", "result_backend", "task_queue", "artifact_dir", "signing_key",
    "signing_public_key", "public_base_url", "auto_migrate"))


class DemoError(Exception):
    """A set-up problem (bad arguments, unusable work directory): exit code 2."""


@dataclass(frozen=True)
class Layout:
    """The demo folder: ``var/`` (database, local broker, keys), ``artifacts/``, ``reports/``, ``logs/``."""

    workdir: Path
    var: Path
    database: Path
    artifacts: Path
    reports: Path
    logs: Path

    @classmethod
    def at(cls, workdir: Path) -> Layout:
        var = workdir / "var"
        return cls(workdir, var, var / "lethe.db", workdir / "artifacts", workdir / "reports", workdir / "logs")


def prepare_workdir(workdir: Path) -> Layout:
    """Create or reset the demo folder. Only a folder the demo made itself (``.lethe-demo`` inside) or an
    empty one is used; its signing key is kept, everything else the demo wrote is removed."""
    layout = Layout.at(workdir.resolve())
    root = layout.workdir
    if root.exists() and not root.is_dir():
        raise DemoError(f"--workdir {workdir} is not a directory")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise DemoError(f"--workdir {workdir} exists and was not made by `lethe demo` (no {MARKER} in it); "
                        "choose another (the demo resets its folder on every run)")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `lethe demo`; reset (except var/keys) on every run\n")
    for directory in (layout.artifacts, layout.reports, layout.logs):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    layout.var.mkdir(exist_ok=True)
    for pattern in ("lethe.db*", "celery-broker.sqlite*"):
        for stale in layout.var.glob(pattern):
            stale.unlink()
    return layout


def federation_identity(version_dir: Path) -> tuple[str, str]:
    """(model name, client to erase) of a version directory: the config's name and its first exclusive
    owner (the client that alone holds a concept), else client 0."""
    descriptor = next((version_dir / name for name in (lf_layout.METADATA, lf_layout.MANIFEST)
                       if (version_dir / name).is_file()), None)
    if descriptor is None:
        raise DemoError(f"{version_dir} is not a model version directory (no metadata.json or manifest.json)")
    try:
        meta = read_json_object(descriptor)
        clients = read_clients(version_dir).live_clients()
    except FormatError as exc:
        raise DemoError(f"{version_dir}: {exc.message}") from None
    config = meta.get("config") or {}
    model = re.sub(r"[^A-Za-z0-9._-]", "-", str(config.get("name") or meta.get("name") or version_dir.name))
    model = model.lstrip("._-")[:200] or "demo"
    owners = (config.get("partition") or {}).get("owners") or {}
    client = str(next(iter(owners), 0))
    if clients and client not in clients:
        client = sorted(clients, key=lambda c: (len(c), c))[0]
    return model, client


def obtain_federation(federation: Path | None, config: Path) -> Path:
    """The version directory to register: ``federation`` as given, or the config's run, trained if needed."""
    if federation is not None:
        if not federation.is_dir():
            raise DemoError(f"--federation {federation}: no such directory")
        say(f"federation: {show(federation)} (given)")
        return federation.resolve()
    from ease_engine.federation.config import ConfigError, load_config
    from lethe_cli.engine import DEFAULT_RUN_DIR
    from lethe_cli.logs import setup_logging

    try:
        cfg = load_config(config)
    except (ConfigError, OSError) as exc:
        raise DemoError(f"--config {config}: {exc}") from exc
    out = DEFAULT_RUN_DIR / cfg.name
    if (out / "metrics.json").is_file():
        say(f"federation: reusing {show(out)} (delete it to retrain)")
        return out.resolve()
    from ease_engine.federation.fedavg import run_federation

    setup_logging()
    say(f"federation: training {cfg.name!r} ({cfg.partition.n_clients} clients, {cfg.training.rounds} rounds, "
        f"{cfg.data.scenes.n_train} scenes) into {show(out)}; a few minutes on CPU, resumable if interrupted")
    began = time.monotonic()
    run_federation(cfg, out)
    say(f"federation: trained in {time.monotonic() - began:.0f} s")
    return out.resolve()


def demo_environment(layout: Layout, base: dict[str, str] | None = None) -> tuple[dict[str, str], Settings]:
    """The children's environment (the demo's database and artifacts, the local broker and key pair) and the
    settings it gives."""
    env = {key: value for key, value in (os.environ if base is None else base).items() if key not in OWN_SETTINGS}
    env[Settings.env_name("database_url")] = f"sqlite:///{layout.database}"
    env[Settings.env_name("artifact_dir")] = str(layout.artifacts)
    env.setdefault(Settings.env_name("outbox_poll_seconds"), "1")
    env.setdefault(Settings.env_name("worker_metrics_port"), "0")  # no fixed port on a shared machine
    env["PYTHONUNBUFFERED"] = "1"
    env, _notes = child_environment(env)
    return env, Settings.from_env(env)
