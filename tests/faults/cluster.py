"""The fault suite's processes: a Redis of its own (started and killed by the tests), the outbox dispatcher
(``python -m service.dispatcher``, with its sweep), stand-in workers (``standin_worker.py``) as separate
processes, and the API in-process (a TestClient that only writes: the dispatcher process sends). Every process
is ended when the cluster stops, even after a failed assertion."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.app import create_app
from service.audit import verify_chain
from service.auth import create_token
from service.integrity import RegisteredVersion, check_version
from service.models import ErasureRequest, ModelVersion
from service.settings import Settings
from tests.db_helpers import bearer, grant, reset_tables
from workers.signing import ensure_key_pair

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"published", "verification_failed", "inconclusive", "failed", "rejected", "cancelled"}
CLIENTS = {str(k): [f"p{k}-{i}" for i in range(40)] for k in range(3)}
# fast recovery for the suite (the default-settings bar has its own test)
FAST = {"LETHE_HEARTBEAT_SECONDS": "0.5", "LETHE_WORKER_STALE_SECONDS": "3", "LETHE_SWEEP_SECONDS": "1",
        "LETHE_QUEUED_RESEND_SECONDS": "3", "LETHE_QUEUED_RESEND_MAX_SECONDS": "6", "LETHE_OUTBOX_POLL_SECONDS": "1",
        "LETHE_LOCK_WAIT_SECONDS": "2", "LETHE_LOCK_RETRY_SECONDS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_version(directory: Path, clients: dict[str, list[str]] = CLIENTS) -> Path:
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text(json.dumps({"kind": "federation", "config": {"name": "faults"}}))
    (directory / "clients.json").write_text(json.dumps(
        {"clients": {cid: {"n_samples": len(pairs), "pair_ids": pairs} for cid, pairs in clients.items()}}))
    (directory / "open_clip_model.safetensors").write_bytes(os.urandom(4096))
    return directory


class RedisServer:
    def __init__(self, root: Path):
        self.port, self.root, self.process = free_port(), root, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def queue_length(self, queue: str) -> int:
        return redis.Redis(port=self.port, socket_connect_timeout=1).llen(queue)


class Cluster:
    def __init__(self, root: Path, pg_url: str, database, redis_server: RedisServer, settings_env: dict | None = None):
        self.root, self.pg_url, self.db, self.redis = root, pg_url, database, redis_server
        self.queue = f"faults-{uuid.uuid4().hex[:8]}"
        self.artifacts = root / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.markers = root / "markers"
        self.key, self.public_key = ensure_key_pair(root / "keys" / "signing.pem")
        self.env_overrides = {**FAST, **(settings_env or {})}
        self.processes: list[tuple[str, subprocess.Popen, Path]] = []
        reset_tables(database)
        with database.transaction() as session:
            self.tokens = {role: create_token(session, role, role)
                           for role in ("requester", "aggregator", "compliance", "admin")}
        settings = Settings(database_url=pg_url, broker_url=redis_server.url, artifact_dir=self.artifacts,
                            signing_key=self.key, task_queue=self.queue, dispatcher_in_api=False,
                            outbox_poll_seconds=0)
        self.client = TestClient(create_app(settings, database=database, sender=self._no_send))
        self.client.__enter__()

    @staticmethod
    def _no_send(_task, _payload):
        raise AssertionError("the API must not send: the dispatcher process does")

    # ------------------------------------------------------------------ processes
    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"PYTHONPATH": str(REPO), "LETHE_DATABASE_URL": self.pg_url, "LETHE_BROKER_URL": self.redis.url,
                    "LETHE_TASK_QUEUE": self.queue, "LETHE_ARTIFACT_DIR": str(self.artifacts),
                    "LETHE_SIGNING_KEY": str(self.key), "LETHE_WORKER_METRICS_PORT": "0",
                    "LETHE_DISPATCHER_METRICS_PORT": "0", "FAULT_MARKERS": str(self.markers),
                    "OMP_NUM_THREADS": "1", **self.env_overrides, **extra})
        return env

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.root / f"{name}-{len(self.processes)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append((name, process, log))
        return process

    def start_dispatcher(self, script: str | None = None, **extra: str) -> subprocess.Popen:
        command = [sys.executable, script] if script else [sys.executable, "-m", "service.dispatcher"]
        return self._start("dispatcher", command, self.env(**extra))

    def start_worker(self, **extra: str) -> subprocess.Popen:
        name = f"w{len(self.processes)}-{uuid.uuid4().hex[:4]}@%h"
        return self._start("worker", [sys.executable, str(REPO / "tests" / "faults" / "standin_worker.py"),
                                      "-Q", self.queue, "-n", name], self.env(**extra))

    def kill(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {name} ({process.returncode}):\n{log.read_text(errors='replace')[-2500:]}"
                         for name, process, log in self.processes)

    def stop(self) -> None:
        for _name, process, _log in self.processes:
            self.kill(process)
        self.client.__exit__(None, None, None)

    # ------------------------------------------------------------------ the API
    def headers(self, role: str) -> dict[str, str]:
        return bearer(self.tokens[role])

    def register(self, model: str, make=write_version) -> None:
        make(self.artifacts / model / "v1")
        response = self.client.post(f"/v1/models/{model}/versions", json={"path": f"{model}/v1"},
                                    headers=self.headers("aggregator"))
        assert response.status_code == 201, response.text
        with self.db.transaction() as session:
            grant(session, self.tokens["requester"], model)

    def submit(self, model: str, client_id: str = "0", **extra) -> str:
        body = {"scope": "client", "client_id": client_id, "model": model, "legal_basis": "art17_1_a", **extra}
        response = self.client.post("/v1/erasure-requests", json=body, headers=self.headers("requester"))
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def view(self, request_id: str) -> dict:
        return self.client.get(f"/v1/erasure-requests/{request_id}", headers=self.headers("compliance")).json()

    def wait(self, request_id: str, until, timeout: float, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            view = self.view(request_id)
            if until(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"request {request_id} still {view['status']}/{view.get('stage')} after "
                                     f"{timeout:.0f} s {what}\n{self.logs()}")
            time.sleep(0.25)

    def wait_terminal(self, request_id: str, timeout: float = 60) -> dict:
        return self.wait(request_id, lambda view: view["status"] in TERMINAL, timeout, "(expected a final status)")

    def wait_marker(self, stage: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not (self.markers.is_dir() and any(p.name.startswith(f"{stage}-") for p in self.markers.iterdir())):
            if time.monotonic() > deadline:
                raise AssertionError(f"no worker reached {stage} within {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.2)

    # ------------------------------------------------------------------ the outcome every fault must leave
    def assert_consistent(self, request_ids: list[str]) -> None:
        """Every accepted request final, exactly one version per published request (intact on disk), the audit
        chain valid, no partial artifact: no staging left, no unregistered version folder."""
        with self.db.session() as session:
            for request_id in request_ids:
                request = session.get(ErasureRequest, uuid.UUID(request_id))
                assert request.status in TERMINAL, (request_id, request.status)
                produced = session.scalars(select(ModelVersion).where(
                    ModelVersion.created_by_request_id == request.id)).all()
                assert len(produced) == (1 if request.status == "published" else 0), (request_id, request.status)
                for version in produced:
                    check_version(self.artifacts / version.path, RegisteredVersion.of(version, request.model_name),
                                  self.public_key)
            assert verify_chain(session).ok
            registered = {version.path for version in session.scalars(select(ModelVersion))}
        for model_dir in (p for p in self.artifacts.iterdir() if p.is_dir() and not p.name.startswith(".")):
            on_disk = {f"{model_dir.name}/{p.name}" for p in model_dir.iterdir() if not p.name.startswith(".")}
            assert on_disk == {path for path in registered if path.startswith(f"{model_dir.name}/")}, on_disk
            staging = model_dir / ".staging"
            assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())


def copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
