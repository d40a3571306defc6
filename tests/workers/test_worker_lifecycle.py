"""The whole life cycle through REST with REAL Celery worker processes on Redis and Postgres, on the
gate-case federation (3 clients, client 0 alone holds purple): register, erase, poll to ``published``,
check the signed version; a duplicate delivery is ignored; a worker killed mid-job (kill -9) is replaced
and the job completes with exactly one new version.

The production gates are the shipped ones (the federation has learned enough to be verifiable); EASE's
displacement is shortened (LETHE_ERASE_PARAMS_JSON) so the job takes seconds.
"""

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

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from worker_helpers import bearer, reset_tables

from service.app import create_app
from service.auth import create_token
from service.models import AuditEvent, ModelVersion
from service.settings import Settings
from tests.db_helpers import grant
from workers.signing import SIGNATURE_NAME, VerificationError, ensure_key_pair, verify_directory

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny"
TERMINAL = {"published", "verification_failed", "failed", "rejected", "cancelled"}
ERASE_PARAMS = {"steps": 20}  # excision, a short displacement and the Forget Lock (seconds, not minutes)
GATES: dict = {}  # the production defaults


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Live:
    """API in-process (TestClient, real Celery client and outbox dispatcher), workers as subprocesses."""

    def __init__(self, root: Path, pg_url: str, redis_url: str, database, client: TestClient, settings: Settings,
                 tokens: dict[str, str]):
        self.root, self.pg_url, self.redis_url, self.db = root, pg_url, redis_url, database
        self.client, self.settings, self.tokens = client, settings, tokens
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.metrics_ports: list[int] = []

    def env(self, metrics_port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            "LETHE_DATABASE_URL": self.pg_url,
            "LETHE_BROKER_URL": self.redis_url,
            "LETHE_TASK_QUEUE": self.settings.task_queue,
            "LETHE_ARTIFACT_DIR": str(self.settings.artifact_dir),
            "LETHE_SIGNING_KEY": str(self.settings.signing_key),
            "LETHE_ERASE_PARAMS_JSON": json.dumps(ERASE_PARAMS),
            "LETHE_GATES_JSON": json.dumps(GATES),
            "LETHE_VISIBILITY_TIMEOUT": "6",  # a dead worker's job comes back quickly
            "LETHE_UNACKED_RESTORE_INTERVAL": "1",
            "LETHE_LOCK_WAIT_SECONDS": "5",
            "LETHE_WORKER_METRICS_PORT": str(metrics_port),
            "LETHE_WORKER_METRICS_ADDR": "127.0.0.1",
        })
        return env

    def start_worker(self) -> subprocess.Popen:
        index = len(self.workers)
        log = self.root / f"worker-{index}.log"
        port = free_port()
        name = f"test-{index}-{uuid.uuid4().hex[:6]}@%h"
        command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo",
                   "--loglevel", "INFO", "-Q", self.settings.task_queue, "-n", name,
                   "--without-gossip", "--without-mingle", "--without-heartbeat"]
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=REPO, env=self.env(port), stdout=out, stderr=subprocess.STDOUT)
        self.workers.append(process)
        self.logs.append(log)
        self.metrics_ports.append(port)
        return process

    def log_text(self, index: int = -1) -> str:
        return self.logs[index].read_text(errors="replace")

    def headers(self, role: str) -> dict[str, str]:
        return bearer(self.tokens[role])

    def get(self, request_id: str) -> dict:
        response = self.client.get(f"/v1/erasure-requests/{request_id}", headers=self.headers("requester"))
        assert response.status_code == 200, response.text
        return response.json()

    def submit(self, client_id: str) -> str:
        body = {"scope": "client", "client_id": client_id, "model": MODEL, "legal_basis": "federation_exit",
                "reason": "the member leaves the federation"}
        response = self.client.post("/v1/erasure-requests", json=body, headers=self.headers("requester"))
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def wait(self, request_id: str, until, timeout: float = 240.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            view = self.get(request_id)
            if until(view):
                return view
            for process, log in zip(self.workers, self.logs, strict=True):
                if process.poll() not in (None, -signal.SIGKILL):
                    pytest.fail(f"worker exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"request {request_id} still {view['status']}/{view.get('stage')} after {timeout:.0f} s;"
                            f" worker log:\n{self.log_text()[-4000:]}")
            time.sleep(0.5)

    def versions(self) -> list[ModelVersion]:
        with self.db.session() as session:
            return list(session.scalars(select(ModelVersion).order_by(ModelVersion.version)))

    def stop(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)


@pytest.fixture(scope="module")
def live(request, worker_pg_url, worker_database, redis_url, tmp_path_factory):
    reset_tables(worker_database)
    root = tmp_path_factory.mktemp("live")
    artifacts = root / "artifacts"
    artifacts.mkdir()
    key, _public = ensure_key_pair(root / "keys" / "signing.pem")
    queue = f"lethe-test-{uuid.uuid4().hex[:10]}"
    settings = Settings(database_url=worker_pg_url, broker_url=redis_url, artifact_dir=artifacts, signing_key=key,
                        task_queue=queue, outbox_poll_seconds=1.0)
    with worker_database.transaction() as session:
        tokens = {role: create_token(session, role, role) for role in ("requester", "aggregator", "compliance")}
        grant(session, tokens["requester"], MODEL)
    app = create_app(settings, database=worker_database)  # the real Celery client: tasks go to Redis
    with TestClient(app) as client:
        live = Live(root, worker_pg_url, redis_url, worker_database, client, settings, tokens)
        live.start_worker()  # it starts (imports torch) while the federation trains
        try:
            shutil.copytree(request.getfixturevalue("gate_versions")[0], artifacts / MODEL / "v1")
            yield live
        finally:
            live.stop()
            import redis

            connection = redis.Redis.from_url(redis_url)
            connection.delete(queue)
            connection.close()


def test_full_life_cycle_through_rest_with_a_real_worker(live):
    response = live.client.post(f"/v1/models/{MODEL}/versions", json={"path": f"{MODEL}/v1"},
                                headers=live.headers("aggregator"))
    assert response.status_code == 201, response.text
    request_id = live.submit("0")

    view = live.wait(request_id, lambda v: v["status"] in TERMINAL)
    assert view["status"] == "published", json.dumps(view, indent=1)[:3000]

    v1, v2 = live.versions()
    assert (v2.version, v2.parent_id, v2.status, v2.path) == (2, v1.id, "published", f"{MODEL}/v2")
    assert str(v2.created_by_request_id) == request_id
    directory = live.settings.artifact_dir / v2.path
    for name in ("open_clip_model.safetensors", "manifest.json", "verification.json", "clients.json",
                 SIGNATURE_NAME):
        assert (directory / name).is_file(), name
    assert json.loads((directory / "clients.json").read_text())["clients"]["0"]["erased"] is True
    manifest = json.loads((directory / "manifest.json").read_text())
    assert v2.content_hash == manifest["content_hash"], "one content hash: the database's is the manifest's"
    assert v1.content_hash == manifest["parent"]["content_hash"]
    assert not any((live.settings.artifact_dir / MODEL / ".staging").iterdir())

    public = live.settings.signing_key.with_name(live.settings.signing_key.name + ".pub")
    verify_directory(directory, public)
    tampered = live.root / "tampered"
    shutil.copytree(directory, tampered)
    weights = tampered / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="open_clip_model.safetensors"):
        verify_directory(tampered, public)

    # the figures the worker recorded, and the report built from them
    with live.db.session() as session:
        from service.models import ErasureRequest

        request = session.get(ErasureRequest, uuid.UUID(request_id))
        figures = request.result
    assert figures["passed"] is True and figures["method"] == "ease"
    assert figures["parameters"]["steps"] == ERASE_PARAMS["steps"]
    assert {g["name"] for g in figures["gates"]} >= {"forget_vs_nonmember_i2t_r1", "retain_t2i_r1", "mia_loss_auc",
                                                     "ledger_residual"}
    assert figures["verdict"] == "passed" and figures["residual"]["parent"]["all"] > 0.5
    assert figures["angles"]["principal_angles_deg"]
    pdf = live.client.get(f"/v1/erasure-requests/{request_id}/report.pdf", headers=live.headers("compliance"))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")

    # a duplicate delivery of the same task is ignored: still exactly one new version
    live.client.app.state.sender("lethe.erase", {"args": [request_id], "kwargs": {}, "task_id": f"erase-{request_id}"})
    deadline = time.monotonic() + 60
    while f"erasure request {request_id} is published; task ignored" not in live.log_text():
        assert time.monotonic() < deadline, live.log_text()[-3000:]
        time.sleep(0.3)
    assert len(live.versions()) == 2

    # the worker's Prometheus exporter
    def scrape_worker() -> str:
        return httpx.get(f"http://127.0.0.1:{live.metrics_ports[0]}/metrics", timeout=5).text

    deadline = time.monotonic() + 30  # the worker logs "task ignored" just before it counts the skip
    while 'lethe_worker_jobs_total{outcome="skipped"} 1.0' not in (scrape := scrape_worker()):
        assert time.monotonic() < deadline, scrape[-3000:]
        time.sleep(0.3)
    assert 'lethe_worker_jobs_total{outcome="published"} 1.0' in scrape
    assert 'lethe_worker_stage_duration_seconds_count{stage="excising"} 1.0' in scrape
    assert f'lethe_worker_broker_queue_depth{{queue="{live.settings.task_queue}"}}' in scrape
    heartbeat = next(line for line in scrape.splitlines()
                     if line.startswith("lethe_worker_heartbeat_timestamp_seconds "))
    assert abs(float(heartbeat.split()[1]) - time.time()) < 120  # the heartbeat thread runs in the worker
    assert any(line.startswith("lethe_build_info{") and 'component="worker"' in line for line in scrape.splitlines())


def test_killed_worker_job_completes_after_restart_with_one_version(live):
    if len(live.versions()) < 2:
        pytest.skip("needs the published version of the life-cycle test")
    before = len(live.versions())
    request_id = live.submit("1")
    view = live.wait(request_id, lambda v: v["status"] in TERMINAL or v["status"] == "running", timeout=120)
    assert view["status"] == "running", view
    live.start_worker()  # the replacement (it cannot take the job: the first worker holds the message)
    first = live.workers[0]
    os.kill(first.pid, signal.SIGKILL)  # mid-job: no ack, no cleanup, its DB connection (and lock) dropped
    first.wait(10)
    assert live.get(request_id)["status"] == "running"
    # the message comes back once the visibility timeout (6 s here) has passed; the new worker resumes
    view = live.wait(request_id, lambda v: v["status"] in TERMINAL)
    assert view["status"] == "published", json.dumps(view, indent=1)[:3000]

    versions = live.versions()
    assert len(versions) == before + 1
    produced = [v for v in versions if str(v.created_by_request_id) == request_id]
    assert len(produced) == 1
    new = produced[0]
    assert new.parent_id == versions[-2].id  # chained on the life-cycle test's version
    model_dir = live.settings.artifact_dir / MODEL
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == [
        f"v{v.version}" for v in versions]
    assert not any((model_dir / ".staging").iterdir())
    verify_directory(live.settings.artifact_dir / new.path,
                     live.settings.signing_key.with_name(live.settings.signing_key.name + ".pub"))
    with live.db.session() as session:
        types = list(session.scalars(select(AuditEvent.event_type).where(
            AuditEvent.request_id == uuid.UUID(request_id)).order_by(AuditEvent.seq)))
    # recovered by whichever came first: the broker's re-delivery (request.resumed) or the dispatcher's sweep
    # after the stale heartbeat (request.requeued); both start the job over under the model lock
    assert {"request.resumed", "request.requeued"} & set(types) and types[-1] == "request.published"
