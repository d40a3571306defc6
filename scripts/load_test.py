#!/usr/bin/env python
"""Load test of the erasure API on loopback with Postgres (issue targets:
POST /v1/erasure-requests >= 200 requests/s with p99 <= 100 ms; GET /v1/erasure-requests/{id} p99 <= 20 ms).

It creates a throwaway schema in the Postgres database, migrates it, creates a token, registers a
fake model version (JSON files only), starts uvicorn on the service (127.0.0.1 only), and drives it
with ``wrk`` (a small C load generator, so the client does not eat the server's CPU on a 2-core
machine): a short warm-up, then POST (every request with its own Idempotency-Key, so all are new),
then GET of random ids from the POST phase. Both phases are closed loop: ``--connections`` clients
each send the next request as soon as the previous answer arrives. Afterwards it checks that every
accepted request is in the database and that the outbox drained (each request was sent to Redis),
prints the figures (and JSON with --json), stops the server and drops the schema. Every phase has a
fixed duration (``--seconds``, at most 30), so the whole run stops by itself.

wrk is a Debian package (``apt-get install -y wrk``; ``scripts/install_wrk.sh`` does it):

    scripts/install_wrk.sh
    .venv/bin/python scripts/load_test.py --seconds 8 --connections 16 --workers 1
    .venv/bin/python scripts/load_test.py ... --write-docs   # the service-load section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
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

MAX_SECONDS = 30
TARGETS = "POST >= 200/s, POST p99 <= 100 ms, GET p99 <= 20 ms"
# The same command on the service before the fast paths (ORM everywhere, the broker called on the POST's
# request cycle, a token query per request), for comparison; measured like the figures this script writes.
BASELINE = ("Before the fast paths (same script, `--seconds 8 --workers 1 --connections 16`, load1 1.6, "
            "another process using one core): POST 37.5 req/s, p50 340 ms, p99 1903 ms; "
            "GET 137.5 req/s, p50 112 ms, p99 228 ms (with `--workers 2`: POST 39.2 req/s, p99 1576 ms; "
            "GET 154.9 req/s, p99 216 ms); about 21 SQL statements and 15 ms of API CPU per POST.")

# wrk's Lua: one Lua state per wrk thread. done() prints one JSON line that the script parses.
LUA_COMMON = r"""
local function json_done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
done = json_done
"""

LUA_POST = LUA_COMMON + r"""
local token, run = os.getenv("LOAD_TOKEN"), os.getenv("LOAD_RUN")
local threads, counter, prefix = 0, 0, ""
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  prefix = run .. "-" .. tostring(tid or 0) .. "-"
end
function request()
  counter = counter + 1
  local client = counter % 4
  local body = string.format(
    '{"scope":"samples","client_id":"%d","pair_ids":["c%d-p%d"],"model":"load-model",' ..
    '"legal_basis":"art17_1_b","reason":"load test"}', client, client, counter % 50)
  return wrk.format("POST", "/v1/erasure-requests", {
    ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. counter}, body)
end
"""

LUA_GET = LUA_COMMON + r"""
local token = os.getenv("LOAD_TOKEN")
local ids = {}
for line in io.lines(os.getenv("LOAD_IDS")) do ids[#ids + 1] = line end
function init(args)
  math.randomseed(os.time() + (tid or 0))
end
function request()
  return wrk.format("GET", "/v1/erasure-requests/" .. ids[math.random(#ids)],
                    {["Authorization"] = "Bearer " .. token})
end
"""


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: run scripts/install_wrk.sh (apt-get install -y wrk) and retry.")
    return path


def wait_ready(base: str, server: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the API exited with status {server.returncode}; see its output above")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the API did not become ready; see its output above")


def _proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _tree(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(grandchild for child in children for grandchild in _tree(int(child)))]


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def cpu_sample(server_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by the API (process tree) and by all postgres processes (Linux /proc)."""
    return (sum(_proc_cpu_seconds(pid) for pid in _tree(server_pid)),
            sum(_proc_cpu_seconds(pid) for pid in _postgres_pids()))


def run_wrk(wrk: str, name: str, base: str, script: Path, seconds: float, connections: int, threads: int,
            env: dict[str, str], server_pid: int) -> dict:
    command = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "5s",
               "-s", str(script), base]
    load_before = os.getloadavg()[0]
    cpu_before = cpu_sample(server_pid)
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 30)
    cpu_after = cpu_sample(server_pid)
    if completed.returncode != 0:
        raise SystemExit(f"wrk failed ({completed.returncode}): {completed.stderr or completed.stdout}")
    line = next((row for row in completed.stdout.splitlines() if row.startswith("WRK_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no figures:\n{completed.stdout}\n{completed.stderr}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    elapsed = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return {
        "name": name, "requests": raw["requests"], "errors": errors, "non_2xx": raw["status"],
        "seconds": round(elapsed, 2), "per_second": round(raw["requests"] / elapsed, 1),
        "mean_ms": round(raw["mean_us"] / 1000, 2), "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2), "p99_ms": round(raw["p99_us"] / 1000, 2),
        "p999_ms": round(raw["p999_us"] / 1000, 2), "max_ms": round(raw["max_us"] / 1000, 2),
        "load1_before": round(load_before, 2), "load1_after": round(os.getloadavg()[0], 2),
        "api_cpu_ms_per_request": round((cpu_after[0] - cpu_before[0]) * 1000 / max(raw["requests"], 1), 2),
        "postgres_cpu_ms_per_request": round((cpu_after[1] - cpu_before[1]) * 1000 / max(raw["requests"], 1), 2),
    }


def drain_check(engine, seconds: float = 15) -> dict:
    """Every accepted request committed, every outbox row sent (the dispatcher catches up)."""
    deadline = time.monotonic() + seconds
    while True:
        with engine.connect() as connection:
            unsent = connection.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")).scalar_one()
            requests = connection.execute(text("SELECT count(*) FROM erasure_requests")).scalar_one()
            events = connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
        if unsent == 0 or time.monotonic() > deadline:
            return {"requests_in_db": requests, "outbox_unsent": unsent, "audit_events": events}
        time.sleep(0.25)


def report_markdown(args, command: str, results: list[dict], checks: dict, met: bool) -> str:
    post, get = results
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    rows = [
        f"| {row['name']} | {row['requests']} | {row['errors']} | {row['per_second']:.1f} | {row['p50_ms']:.2f} | "
        f"{row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['max_ms']:.2f} | {row['load1_before']:.2f} | "
        f"{row['api_cpu_ms_per_request']:.2f} | {max(row['postgres_cpu_ms_per_request'], 0):.2f} |"
        for row in results
    ]
    return "\n".join([
        "## Service load (issue 4)",
        "",
        f"Command: `{command}` ({when}, {platform.machine()}, {os.cpu_count()} CPU cores, Postgres and Redis on "
        "loopback, Python " + platform.python_version() + "). `wrk` (C, closed loop: "
        f"{args.connections} connections, {args.threads} thread) drives uvicorn with {args.workers} worker "
        f"process(es); {args.seconds:g} s per phase after a {args.warmup:g} s warm-up. Every POST carries its own "
        "Idempotency-Key, so every one creates a request (row, `request.received` audit event and outbox row in "
        "one transaction) and is then sent to Redis by the outbox dispatcher; GET reads random ids from the POST "
        "phase. `load1` is the 1-minute load average when the phase started (another process may be using "
        "the machine; it is part of the conditions).",
        "",
        "| route | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms | load1 | api cpu ms | pg cpu ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"After the POST phase: {checks['requests_in_db']} requests in the database "
        f"(warm-up included), {checks['audit_events']} audit events, {checks['outbox_unsent']} outbox rows "
        f"unsent. Targets ({TARGETS}): **{'met' if met else 'NOT met'}**. `api cpu` and `pg cpu`: CPU "
        "milliseconds per request of the API processes (dispatcher thread included) and of all postgres "
        "processes, from /proc.",
        "",
        BASELINE,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "LETHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--seconds", type=float, default=10, help=f"per phase (at most {MAX_SECONDS})")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of POST before measuring")
    parser.add_argument("--connections", type=int, default=16, help="concurrent wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes (2 measured slower here: ~50 ms per request even alone)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the figures into the service-load section of docs/benchmarks.md")
    args = parser.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS or not 0 <= args.warmup <= MAX_SECONDS:
        parser.error(f"--seconds and --warmup must be at most {MAX_SECONDS}")
    wrk = require_wrk()
    command = "python scripts/load_test.py " + shlex.join(sys.argv[1:])

    run_id = uuid.uuid4().hex[:10]
    schema, queue = f"lethe_load_{run_id}", f"lethe-load-{run_id}"
    url = f"{args.postgres_url}{'&' if '?' in args.postgres_url else '?'}options=-csearch_path%3D{schema}"
    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    server, work = None, Path(tempfile.mkdtemp(prefix="lethe-load-"))
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        upgrade_database(url)
        db = Database(url)
        with db.transaction() as session:
            tokens = {role: create_token(session, f"load-{role}", role) for role in ("requester", "aggregator")}
        artifacts = work / "artifacts"
        version = artifacts / "load-model" / "v1"
        version.mkdir(parents=True)
        (version / "manifest.json").write_text(json.dumps({"architecture": "fake"}))
        clients = {str(c): {"n_samples": 50, "pair_ids": [f"c{c}-p{i}" for i in range(50)]} for c in range(4)}
        (version / "clients.json").write_text(json.dumps({"clients": clients}))
        env = {**os.environ, "LETHE_DATABASE_URL": url, "LETHE_ARTIFACT_DIR": str(artifacts),
               "LETHE_BROKER_URL": args.broker_url, "LETHE_TASK_QUEUE": queue}
        base = f"http://127.0.0.1:{args.port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(args.port), "--workers", str(args.workers), "--log-level", "warning",
             "--no-access-log"],
            cwd=REPO, env=env,
        )
        wait_ready(base, server)
        registered = httpx.post(f"{base}/v1/models/load-model/versions", json={"path": "load-model/v1"},
                                headers={"Authorization": f"Bearer {tokens['aggregator']}"})
        registered.raise_for_status()

        post_lua, get_lua, ids_file = work / "post.lua", work / "get.lua", work / "ids.txt"
        post_lua.write_text(LUA_POST)
        get_lua.write_text(LUA_GET)
        wrk_env = {**os.environ, "LOAD_TOKEN": tokens["requester"], "LOAD_IDS": str(ids_file)}
        if args.warmup:
            run_wrk(wrk, "warm-up", base, post_lua, args.warmup, args.connections, args.threads,
                    {**wrk_env, "LOAD_RUN": f"{run_id}w"}, server.pid)
        post = run_wrk(wrk, "POST /v1/erasure-requests", base, post_lua, args.seconds, args.connections,
                       args.threads, {**wrk_env, "LOAD_RUN": run_id}, server.pid)
        checks = drain_check(db.engine)
        with db.engine.connect() as connection:
            ids = connection.execute(text("SELECT id FROM erasure_requests ORDER BY random() LIMIT 5000")).scalars()
            ids_file.write_text("".join(f"{value}\n" for value in ids))
        db.dispose()
        get = run_wrk(wrk, "GET /v1/erasure-requests/{id}", base, get_lua, args.seconds, args.connections,
                      args.threads, wrk_env, server.pid)
        results = [post, get]
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
        try:
            import redis

            redis.Redis.from_url(args.broker_url).delete(queue)
        except Exception:
            pass

    columns = ("n", "err", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "load1", "api cpu", "pg cpu")
    print(f"{'route':32} " + " ".join(f"{column:>8}" for column in columns))
    for row in results:
        print(f"{row['name']:32} {row['requests']:8d} {row['errors']:8d} {row['per_second']:8.1f} "
              f"{row['p50_ms']:8.2f} {row['p90_ms']:8.2f} {row['p99_ms']:8.2f} {row['max_ms']:8.2f} "
              f"{row['load1_before']:8.2f} {row['api_cpu_ms_per_request']:8.2f} "
              f"{row['postgres_cpu_ms_per_request']:8.2f}")
    print(f"database after POST: {checks}")
    if args.json:
        print(json.dumps({"results": results, "checks": checks}, indent=2))
    met = (post["per_second"] >= 200 and post["p99_ms"] <= 100 and get["p99_ms"] <= 20
           and post["errors"] == 0 and get["errors"] == 0 and checks["outbox_unsent"] == 0)
    print(f"targets ({TARGETS}):", "met" if met else "NOT met")
    if args.write_docs:
        from ease_engine.benchmarks.markdown import replace_section

        replace_section(REPO / "docs" / "benchmarks.md", "service-load",
                        report_markdown(args, command, results, checks, met))
        print("wrote the service-load section of docs/benchmarks.md")
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
