#!/usr/bin/env python
"""Load test of the erasure API on loopback with Postgres (issue targets:
POST /v1/erasure-requests >= 200 requests/s with p99 <= 100 ms; GET /v1/erasure-requests/{id} p99 <= 20 ms).

It creates a throwaway schema in the Postgres database, migrates it, creates tokens, registers a
fake model version (JSON files only), starts uvicorn on the service, fires the requests with
asyncio + httpx, prints the figures (and JSON with --json), then drops the schema.

    .venv/bin/python scripts/load_test.py --requests 3000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from service.auth import create_token  # noqa: E402
from service.db import Database, upgrade_database  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summary(name: str, latencies: list[float], elapsed: float, errors: int) -> dict:
    ms = [value * 1000 for value in latencies]
    return {"name": name, "requests": len(ms), "errors": errors, "seconds": round(elapsed, 3),
            "per_second": round(len(ms) / elapsed, 1), "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(percentile(ms, 0.95), 2), "p99_ms": round(percentile(ms, 0.99), 2),
            "max_ms": round(max(ms), 2)}


async def run_phase(name, make_request, total: int, concurrency: int) -> tuple[dict, list]:
    latencies, results, errors = [], [], 0
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient):
        nonlocal errors
        for index in counter:
            started = time.perf_counter()
            response = await make_request(client, index)
            latencies.append(time.perf_counter() - started)
            if response.status_code >= 400:
                errors += 1
            else:
                results.append(response)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summary(name, latencies, elapsed, errors), results


def wait_ready(base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the API did not start; see its output above")


async def main_async(args, base: str, tokens: dict[str, str]) -> list[dict]:
    headers = {"Authorization": f"Bearer {tokens['requester']}"}

    async def post(client, index):
        body = {"scope": "samples", "client_id": str(index % 4), "pair_ids": [f"c{index % 4}-p{index % 50}"],
                "model": "load-model", "legal_basis": "art17_1_b", "reason": "load test"}
        return await client.post(f"{base}/v1/erasure-requests", json=body,
                                 headers={**headers, "Idempotency-Key": f"load-{index}"})

    await run_phase("warm-up", post, min(200, args.requests), args.concurrency)
    post_stats, responses = await run_phase("POST /v1/erasure-requests", post, args.requests,
                                            args.concurrency)
    ids = [response.json()["id"] for response in responses]

    async def get(client, index):
        return await client.get(f"{base}/v1/erasure-requests/{random.choice(ids)}", headers=headers)

    get_stats, _ = await run_phase("GET /v1/erasure-requests/{id}", get, args.requests, args.concurrency)
    return [post_stats, get_stats]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "LETHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    schema = f"lethe_load_{uuid.uuid4().hex[:10]}"
    queue = f"lethe-load-{uuid.uuid4().hex[:8]}"
    url = f"{args.postgres_url}{'&' if '?' in args.postgres_url else '?'}options=-csearch_path%3D{schema}"
    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    server = None
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        upgrade_database(url)
        db = Database(url)
        with db.transaction() as session:
            tokens = {role: create_token(session, f"load-{role}", role)
                      for role in ("requester", "aggregator")}
        db.dispose()
        artifacts = Path(tempfile.mkdtemp(prefix="lethe-load-"))
        version = artifacts / "load-model" / "v1"
        version.mkdir(parents=True)
        (version / "manifest.json").write_text(json.dumps({"architecture": "fake"}))
        clients = {str(c): {"n_samples": 50, "pair_ids": [f"c{c}-p{i}" for i in range(50)]} for c in range(4)}
        (version / "clients.json").write_text(json.dumps({"clients": clients}))
        env = {**os.environ, "LETHE_DATABASE_URL": url, "LETHE_ARTIFACT_DIR": str(artifacts),
               "LETHE_BROKER_URL": args.broker_url, "LETHE_TASK_QUEUE": queue,
               "LETHE_OUTBOX_POLL_SECONDS": "2"}
        base = f"http://127.0.0.1:{args.port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--port", str(args.port),
             "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"],
            cwd=REPO, env=env,
        )
        wait_ready(base)
        registered = httpx.post(f"{base}/v1/models/load-model/versions", json={"path": "load-model/v1"},
                                headers={"Authorization": f"Bearer {tokens['aggregator']}"})
        registered.raise_for_status()
        results = asyncio.run(main_async(args, base, tokens))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        try:
            import redis

            redis.Redis.from_url(args.broker_url).delete(queue)
        except Exception:
            pass

    columns = ("n", "err", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms")
    print(f"{'route':36} " + " ".join(f"{column:>8}" for column in columns))
    for row in results:
        print(f"{row['name']:36} {row['requests']:8d} {row['errors']:8d} {row['per_second']:8.1f} "
              f"{row['p50_ms']:8.2f} {row['p95_ms']:8.2f} {row['p99_ms']:8.2f} {row['max_ms']:8.2f}")
    if args.json:
        print(json.dumps(results, indent=2))
    post_stats, get_stats = results
    met = (post_stats["per_second"] >= 200 and post_stats["p99_ms"] <= 100 and get_stats["p99_ms"] <= 20
           and post_stats["errors"] == 0 and get_stats["errors"] == 0)
    print("targets (POST >= 200/s, POST p99 <= 100 ms, GET p99 <= 20 ms):", "met" if met else "NOT met")
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
