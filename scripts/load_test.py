#!/usr/bin/env python
"""Load test of the erasure API on loopback with Postgres (issue targets:
POST /v1/erasure-requests >= 200 requests/s with p99 <= 100 ms; GET /v1/erasure-requests/{id} p99 <= 20 ms).

It creates a throwaway schema in the Postgres database, migrates it, creates a token, registers a
fake model version (JSON files only), starts uvicorn on the service (127.0.0.1 only), and drives it
with ``wrk`` (a small C load generator, so the client does not eat the server's CPU on a 2-core
machine). Every POST carries its own Idempotency-Key, so every one creates a request; GETs read
random ids from the POST phases. The phases, each ``--seconds`` long after a short warm-up:

- capacity (closed loop): ``--connections`` clients each send the next request as soon as the answer
  arrives: the most the server does per second. Latency here is queueing behind the other clients
  (about connections / throughput), not what a client sees at a given load.
- at a rate (open loop, paced like wrk2): requests are scheduled at ``--post-rate`` / ``--get-rate``
  per second, spread evenly over ``--paced-connections`` connections (one per wrk thread), and each
  latency is measured from the request's *scheduled* send time, so a stalled server cannot hide its
  stall by delaying the next sends (coordinated omission). This is how the targets are judged: POST
  at 200/s must keep p99 <= 100 ms; GET at its rate must keep p99 <= 20 ms.
- together: POST and GET at their rates at the same time (two wrk processes), reported as well.

Afterwards it checks that every accepted request is in the database and that the outbox drained
(each request was sent to Redis), prints the figures (and JSON with --json), stops the server and
drops the schema. Every phase has a fixed duration (``--seconds``, at most 30), so the whole run
stops by itself.

wrk is a Debian package (``apt-get install -y wrk``; ``scripts/install_wrk.sh`` does it):

    scripts/install_wrk.sh
    .venv/bin/python scripts/load_test.py --seconds 8
    .venv/bin/python scripts/load_test.py ... --write-docs   # the service-load section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from lethe_bench.service_load.measure import drain_check, run_phases, wait_ready  # noqa: E402
from lethe_bench.service_load.report import (  # noqa: E402
    POST_TARGET_RATE,
    TARGETS,
    judge,
    print_table,
    report_markdown,
)
from lethe_bench.service_load.wrk import LUA_GET, LUA_POST, Phase, PhaseRun, percentile, require_wrk  # noqa: E402,F401
from service import scopes  # noqa: E402
from service.auth import create_token  # noqa: E402
from service.db import Database, upgrade_database  # noqa: E402
from service.models import ALL_CLIENTS, ApiToken  # noqa: E402

MAX_SECONDS = 30
MODEL = "load-model"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "LETHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--seconds", type=float, default=10, help=f"per phase (at most {MAX_SECONDS})")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of POST before measuring")
    parser.add_argument("--connections", type=int, default=16, help="connections of the closed-loop phases")
    parser.add_argument("--paced-connections", type=int, default=32,
                        help="connections (one wrk thread each) of the paced phases")
    parser.add_argument("--post-rate", type=float, default=POST_TARGET_RATE, help="offered POSTs per second")
    parser.add_argument("--get-rate", type=float, default=200.0, help="offered GETs per second")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--dispatcher", choices=("process", "api"), default="process",
                        help="outbox dispatcher in its own process (as `lethe serve` runs it on Postgres) or "
                             "as a thread of the API")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the figures into the service-load section of docs/benchmarks.md")
    args = parser.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS or not 0 <= args.warmup <= MAX_SECONDS:
        parser.error(f"--seconds and --warmup must be at most {MAX_SECONDS}")
    if min(args.connections, args.paced_connections) < 1 or min(args.post_rate, args.get_rate) <= 0:
        parser.error("connections and rates must be positive")
    return args


@dataclass
class Service:
    """The throwaway service under test: its database, URL, tokens, work folder and processes."""

    db: Database
    base: str
    tokens: dict[str, str]
    work: Path
    server: subprocess.Popen
    relay: subprocess.Popen | None


def _fake_version(artifacts: Path) -> None:
    """A version the service accepts (JSON files only): 4 clients of 50 pair ids each."""
    version = artifacts / MODEL / "v1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text(json.dumps({"architecture": "fake"}))
    clients = {str(c): {"n_samples": 50, "pair_ids": [f"c{c}-p{i}" for i in range(50)]} for c in range(4)}
    (version / "clients.json").write_text(json.dumps({"clients": clients}))


def _stop(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def throwaway_service(args: argparse.Namespace, run_id: str) -> Iterator[Service]:
    """A new schema (migrated, a token per role, the fake model registered), the API (and the dispatcher
    process) on it; on the way out the processes are stopped, the schema dropped and the queue deleted."""
    schema, queue = f"lethe_load_{run_id}", f"lethe-load-{run_id}"
    url = f"{args.postgres_url}{'&' if '?' in args.postgres_url else '?'}options=-csearch_path%3D{schema}"
    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    server = relay = db = None
    work = Path(tempfile.mkdtemp(prefix="lethe-load-"))
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        upgrade_database(url)
        db = Database(url)
        with db.transaction() as session:
            tokens = {role: create_token(session, f"load-{role}", role) for role in ("requester", "aggregator")}
            requester_id = session.query(ApiToken.id).filter(ApiToken.name == "load-requester").scalar()
            scopes.grant(session, requester_id, MODEL, ALL_CLIENTS, {"load_test": True})
        _fake_version(work / "artifacts")
        env = {**os.environ, "LETHE_DATABASE_URL": url, "LETHE_ARTIFACT_DIR": str(work / "artifacts"),
               "LETHE_BROKER_URL": args.broker_url, "LETHE_TASK_QUEUE": queue,
               "LETHE_DISPATCHER_IN_API": "0" if args.dispatcher == "process" else "1",
               "LETHE_DISPATCHER_METRICS_PORT": "0"}
        if args.dispatcher == "process":
            relay = subprocess.Popen([sys.executable, "-m", "service.dispatcher"], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{args.port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(args.port), "--workers", str(args.workers), "--log-level", "warning",
             "--no-access-log"],
            cwd=REPO, env=env,
        )
        wait_ready(base, server)
        httpx.post(f"{base}/v1/models/{MODEL}/versions", json={"path": f"{MODEL}/v1"},
                   headers={"Authorization": f"Bearer {tokens['aggregator']}"}).raise_for_status()
        yield Service(db, base, tokens, work, server, relay)
    finally:
        _stop(server)
        _stop(relay)
        if db is not None:
            db.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(Exception):
            import redis

            redis.Redis.from_url(args.broker_url).delete(queue)


def measure(args: argparse.Namespace, wrk: str, service: Service, run_id: str) -> tuple[list[dict], dict]:
    """The phases: POST capacity and at rate, GET capacity and at rate, both together; the database checks."""
    ids_file = service.work / "ids.txt"
    wrk_env = {**os.environ, "LOAD_TOKEN": service.tokens["requester"], "LOAD_IDS": str(ids_file)}

    def post(name: str, rate: float | None = None) -> Phase:
        return Phase(name, LUA_POST, args.paced_connections if rate else args.connections, rate,
                     {"LOAD_RUN": f"{run_id}-{name}".replace(" ", "_")})

    def get(name: str, rate: float | None = None) -> Phase:
        return Phase(name, LUA_GET, args.paced_connections if rate else args.connections, rate)

    def run(*phases: Phase, seconds: float = args.seconds) -> list[dict]:
        return run_phases(wrk, list(phases), service.base, seconds, service.work, wrk_env, service.server.pid,
                          service.relay.pid if service.relay else None)

    if args.warmup:
        run(post("warm-up"), seconds=args.warmup)
    results = run(post("POST capacity")) + run(post("POST at rate", args.post_rate))
    checks = drain_check(service.db.engine)
    with service.db.engine.connect() as connection:
        ids = connection.execute(text("SELECT id FROM erasure_requests ORDER BY random() LIMIT 5000")).scalars()
        ids_file.write_text("".join(f"{value}\n" for value in ids))
    results += run(get("GET capacity")) + run(get("GET at rate", args.get_rate))
    results += run(post("POST + GET: POST", args.post_rate), get("POST + GET: GET", args.get_rate))
    together = drain_check(service.db.engine)
    checks["outbox_unsent"] = max(checks["outbox_unsent"], together["outbox_unsent"])
    return results, checks


def main() -> int:
    args = parse_args()
    wrk = require_wrk()
    command = "python scripts/load_test.py " + shlex.join(sys.argv[1:])
    run_id = uuid.uuid4().hex[:10]
    with throwaway_service(args, run_id) as service:
        results, checks = measure(args, wrk, service, run_id)
    verdict = judge({row["name"]: row for row in results}, checks)
    print_table(results, checks)
    if args.json:
        print(json.dumps({"results": results, "checks": checks, "targets": verdict}, indent=2))
    print(f"targets ({TARGETS}):", ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in verdict.items()))
    if args.write_docs:
        from lethe_bench.markdown import replace_section

        replace_section(REPO / "docs" / "benchmarks.md", "service-load",
                        report_markdown(args, command, results, checks, verdict))
        print("wrote the service-load section of docs/benchmarks.md")
    met = all(verdict[name] for name in ("post_capacity", "post_at_rate", "get_at_rate"))
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
