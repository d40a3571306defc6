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
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from service.auth import create_token  # noqa: E402
from service.db import Database, upgrade_database  # noqa: E402

MAX_SECONDS = 30
POST_TARGET_RATE, POST_P99_MS, GET_P99_MS = 200.0, 100.0, 20.0
TARGETS = (f"POST capacity >= {POST_TARGET_RATE:g}/s and POST at {POST_TARGET_RATE:g}/s with p99 <= "
           f"{POST_P99_MS:g} ms; GET at its rate with p99 <= {GET_P99_MS:g} ms")
# The same command on the service before the fast paths (ORM everywhere, the broker called on the POST's
# request cycle, a token query per request), and before batching, for comparison; closed loop, 16 connections.
HISTORY = (
    "Earlier figures, closed loop with 16 connections (`--seconds 8 --workers 1 --connections 16` of the "
    "script's first version): before the fast paths POST 37.5 req/s (p99 1903 ms), GET 137.5 req/s (p99 228 ms), "
    "about 21 SQL statements and 15 ms of API CPU per POST; with the Core fast paths but one transaction per "
    "request and the routes in the thread pool, POST 131.0 req/s (p99 405 ms, 7.2 ms API CPU), GET 293.6 req/s "
    "(p99 153 ms, 3.0 ms API CPU).")

# wrk's Lua: one Lua state per wrk thread. A body script defines build_request() (and init_body());
# a mode script defines init/request/response/delay/done around it.
LUA_POST = r"""
local token, run = os.getenv("LOAD_TOKEN"), os.getenv("LOAD_RUN")
local counter, prefix = 0, ""
local function init_body() prefix = run .. "-" .. tostring(tid or 0) .. "-" end
local function build_request()
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

LUA_GET = r"""
local token = os.getenv("LOAD_TOKEN")
local ids = {}
for line in io.lines(os.getenv("LOAD_IDS")) do ids[#ids + 1] = line end
local function init_body() math.randomseed(os.time() + (tid or 0)) end
local function build_request()
  return wrk.format("GET", "/v1/erasure-requests/" .. ids[math.random(#ids)],
                    {["Authorization"] = "Bearer " .. token})
end
"""

LUA_SETUP = r"""
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
"""

# closed loop: the next request as soon as the answer arrives; wrk's own latency histogram.
LUA_CLOSED = r"""
function init(args) init_body() end
request = build_request
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

# open loop (wrk2's idea, on plain wrk): one connection per wrk thread, requests scheduled every
# connections/rate seconds from a random phase; delay() waits for the next slot, and each latency is
# measured from the slot (monotonic clock through LuaJIT's ffi) and written to a file per thread.
LUA_PACED = r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } lethe_timespec;
           int clock_gettime(int clk, lethe_timespec *tp); ]]
local clock = ffi.new("lethe_timespec")
local function now_us()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end
local interval_us, next_slot, sent_slot, out, answered = 0, 0, 0, nil, 0
function init(args)
  init_body()
  interval_us = 1000000 * tonumber(os.getenv("LOAD_CONNECTIONS")) / tonumber(os.getenv("LOAD_RATE"))
  math.randomseed(tid * 7919)
  next_slot = now_us() + math.random() * interval_us
  out = io.open(os.getenv("LOAD_LATENCY_PREFIX") .. tostring(tid), "w")
end
function delay()
  local wait_ms = (next_slot - now_us()) / 1000
  if wait_ms < 0 then return 0 end
  return wait_ms
end
function request()
  sent_slot = next_slot
  next_slot = next_slot + interval_us
  return build_request()
end
function response(status, headers, body)
  answered = answered + 1
  out:write(string.format("%d %d\n", status, now_us() - sent_slot))
  if answered % 50 == 0 then out:flush() end
end
"""


def lua_script(body: str, mode: str) -> str:
    return LUA_SETUP + body + {"closed": LUA_CLOSED, "paced": LUA_PACED}[mode]


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


def cpu_sample(server_pid: int, relay_pid: int | None) -> tuple[float, float, float]:
    """CPU seconds used so far by the API (process tree), the dispatcher process (if any) and all postgres
    processes (Linux /proc)."""
    return (sum(_proc_cpu_seconds(pid) for pid in _tree(server_pid)),
            sum(_proc_cpu_seconds(pid) for pid in _tree(relay_pid)) if relay_pid else 0.0,
            sum(_proc_cpu_seconds(pid) for pid in _postgres_pids()))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Phase:
    """One wrk run: a route, closed loop (``rate`` None) or paced at ``rate`` requests/s."""

    name: str
    body: str  # LUA_POST or LUA_GET
    connections: int
    rate: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "closed" if self.rate is None else "paced"

    @property
    def load(self) -> str:
        return f"closed, {self.connections} conns" if self.rate is None else f"{self.rate:g}/s offered"


class PhaseRun:
    def __init__(self, wrk: str, phase: Phase, base: str, seconds: float, work: Path, env: dict[str, str]):
        self.phase, self.seconds = phase, seconds
        tag = f"{phase.name}-{uuid.uuid4().hex[:6]}".replace(" ", "_").replace("/", "_")
        script = work / f"{tag}.lua"
        script.write_text(lua_script(phase.body, phase.mode))
        self.latency_prefix = str(work / f"{tag}.latency.")
        env = {**env, **phase.env, "LOAD_LATENCY_PREFIX": self.latency_prefix,
               "LOAD_CONNECTIONS": str(phase.connections), "LOAD_RATE": str(phase.rate or 0)}
        threads = phase.connections if phase.rate is not None else 1
        command = [wrk, "-t", str(threads), "-c", str(phase.connections), "-d", f"{seconds:g}s",
                   "--timeout", "5s", "-s", str(script), base]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict:
        stdout, stderr = self.process.communicate(timeout=self.seconds + 30)
        if self.process.returncode != 0:
            raise SystemExit(f"wrk failed ({self.process.returncode}): {stderr or stdout}")
        row = {"name": self.phase.name, "load": self.phase.load, "mode": self.phase.mode,
               "rate": self.phase.rate, "seconds": self.seconds}
        if self.phase.rate is None:
            line = next((text for text in stdout.splitlines() if text.startswith("WRK_JSON ")), None)
            if line is None:
                raise SystemExit(f"wrk printed no figures:\n{stdout}\n{stderr}")
            raw = json.loads(line.removeprefix("WRK_JSON "))
            errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
            row.update(requests=raw["requests"], errors=errors,
                       per_second=round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
                       **{key: round(raw[f"{key}_us"] / 1000, 2) for key in ("p50", "p90", "p99", "max")})
            return row
        latencies, errors = [], 0
        for path in Path(self.latency_prefix).parent.glob(Path(self.latency_prefix).name + "*"):
            for line in path.read_text().splitlines():
                status, micros = line.split()
                errors += not 200 <= int(status) < 300
                latencies.append(int(micros) / 1000)
        latencies.sort()
        row.update(requests=len(latencies), errors=errors, per_second=round(len(latencies) / self.seconds, 1),
                   **{key: round(percentile(latencies, q), 2) for key, q in
                      (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))})
        return row


def run_phases(wrk: str, phases: list[Phase], base: str, seconds: float, work: Path, env: dict[str, str],
               server_pid: int, relay_pid: int | None) -> list[dict]:
    """Run the phases at the same time; CPU per request is over all of them."""
    load_before = os.getloadavg()[0]
    cpu_before = cpu_sample(server_pid, relay_pid)
    runs = [PhaseRun(wrk, phase, base, seconds, work, env) for phase in phases]
    rows = [run.result() for run in runs]
    cpu_after = cpu_sample(server_pid, relay_pid)
    total = max(sum(row["requests"] for row in rows), 1)
    api, relay, postgres = (round(max(after - before, 0) * 1000 / total, 2)
                            for before, after in zip(cpu_before, cpu_after, strict=True))
    for row in rows:
        row.update(load1_before=round(load_before, 2), api_cpu_ms_per_request=api,
                   dispatcher_cpu_ms_per_request=relay, postgres_cpu_ms_per_request=postgres)
    return rows


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


def judge(rows: dict[str, dict], checks: dict) -> dict[str, bool]:
    """Each target, met or not (errors anywhere, or an undrained outbox, fail everything)."""
    clean = all(row["errors"] == 0 for row in rows.values()) and checks["outbox_unsent"] == 0
    post_paced, get_paced = rows["POST at rate"], rows["GET at rate"]
    return {
        "post_capacity": clean and rows["POST capacity"]["per_second"] >= POST_TARGET_RATE,
        "post_at_rate": clean and post_paced["rate"] >= POST_TARGET_RATE
        and post_paced["per_second"] >= 0.97 * POST_TARGET_RATE and post_paced["p99"] <= POST_P99_MS,
        "get_at_rate": clean and get_paced["p99"] <= GET_P99_MS,
        "together": clean and rows["POST + GET: POST"]["p99"] <= POST_P99_MS
        and rows["POST + GET: GET"]["p99"] <= GET_P99_MS,
    }


def report_markdown(args, command: str, results: list[dict], checks: dict, verdict: dict[str, bool]) -> str:
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    rows = [
        f"| {row['name']} | {row['load']} | {row['requests']} | {row['errors']} | {row['per_second']:.1f} | "
        f"{row['p50']:.2f} | {row['p90']:.2f} | {row['p99']:.2f} | {row['max']:.2f} | {row['load1_before']:.2f} | "
        f"{row['api_cpu_ms_per_request']:.2f} | {row['dispatcher_cpu_ms_per_request']:.2f} | "
        f"{row['postgres_cpu_ms_per_request']:.2f} |"
        for row in results
    ]
    word = {True: "met", False: "**not met**"}
    return "\n".join([
        "## Service load (issue 4)",
        "",
        f"Command: `{command}` ({when}, {platform.machine()}, {os.cpu_count()} CPU cores, Postgres and Redis on "
        f"loopback, Python {platform.python_version()}). `wrk` drives uvicorn with {args.workers} worker "
        f"process(es) on the same machine, the outbox dispatcher "
        f"{'in its own process (`lethe dispatcher`)' if args.dispatcher == 'process' else 'as a thread of the API'};"
        f" {args.seconds:g} s per phase after a {args.warmup:g} s warm-up. Every "
        "POST carries its own Idempotency-Key, so every one creates a request (row, `request.received` audit "
        "event and outbox row, committed before the answer) that the outbox dispatcher then sends to Redis; GET "
        "reads random ids from the POST phases.",
        "",
        f"- *capacity*: closed loop, {args.connections} connections each sending the next request when the "
        "answer arrives; its latency is mostly queueing behind the other connections.",
        f"- *at rate*: open loop, requests scheduled evenly at the offered rate over {args.paced_connections} "
        "connections; latency counts from the scheduled send time (no coordinated omission). The targets are "
        "judged here.",
        "- *POST + GET*: both at their rates at once. `api cpu`, `disp cpu` and `pg cpu`: CPU milliseconds per "
        "request of the API process, the dispatcher process and all postgres processes, from /proc, over the "
        "phase. `load1`: the 1-minute load average as the phase started.",
        "",
        "| phase | load | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms | load1 | api cpu ms "
        "| disp cpu ms | pg cpu ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"After the POST phases: {checks['requests_in_db']} requests in the database (warm-up included), "
        f"{checks['audit_events']} audit events, {checks['outbox_unsent']} outbox rows unsent.",
        "",
        f"Targets: POST capacity >= {POST_TARGET_RATE:g}/s: {word[verdict['post_capacity']]}; POST at "
        f"{args.post_rate:g}/s with p99 <= {POST_P99_MS:g} ms: {word[verdict['post_at_rate']]}; GET at "
        f"{args.get_rate:g}/s with p99 <= {GET_P99_MS:g} ms: {word[verdict['get_at_rate']]}; both at once: "
        f"{word[verdict['together']]}.",
        "",
        HISTORY,
    ])


def main() -> int:
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
    wrk = require_wrk()
    command = "python scripts/load_test.py " + shlex.join(sys.argv[1:])

    run_id = uuid.uuid4().hex[:10]
    schema, queue = f"lethe_load_{run_id}", f"lethe-load-{run_id}"
    url = f"{args.postgres_url}{'&' if '?' in args.postgres_url else '?'}options=-csearch_path%3D{schema}"
    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    server, relay, work = None, None, Path(tempfile.mkdtemp(prefix="lethe-load-"))
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
        registered = httpx.post(f"{base}/v1/models/load-model/versions", json={"path": "load-model/v1"},
                                headers={"Authorization": f"Bearer {tokens['aggregator']}"})
        registered.raise_for_status()

        ids_file = work / "ids.txt"
        wrk_env = {**os.environ, "LOAD_TOKEN": tokens["requester"], "LOAD_IDS": str(ids_file)}

        def post(name: str, rate: float | None = None) -> Phase:
            return Phase(name, LUA_POST, args.paced_connections if rate else args.connections, rate,
                         {"LOAD_RUN": f"{run_id}-{name}".replace(" ", "_")})

        def get(name: str, rate: float | None = None) -> Phase:
            return Phase(name, LUA_GET, args.paced_connections if rate else args.connections, rate)

        def run(*phases: Phase, seconds: float = args.seconds) -> list[dict]:
            return run_phases(wrk, list(phases), base, seconds, work, wrk_env, server.pid,
                              relay.pid if relay else None)

        if args.warmup:
            run(post("warm-up"), seconds=args.warmup)
        results = run(post("POST capacity")) + run(post("POST at rate", args.post_rate))
        checks = drain_check(db.engine)
        with db.engine.connect() as connection:
            ids = connection.execute(text("SELECT id FROM erasure_requests ORDER BY random() LIMIT 5000")).scalars()
            ids_file.write_text("".join(f"{value}\n" for value in ids))
        results += run(get("GET capacity")) + run(get("GET at rate", args.get_rate))
        results += run(post("POST + GET: POST", args.post_rate), get("POST + GET: GET", args.get_rate))
        together = drain_check(db.engine)
        checks["outbox_unsent"] = max(checks["outbox_unsent"], together["outbox_unsent"])
        db.dispose()
    finally:
        for process in (server, relay):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
        try:
            import redis

            redis.Redis.from_url(args.broker_url).delete(queue)
        except Exception:
            pass

    columns = ("n", "err", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "load1", "api cpu", "disp cpu",
               "pg cpu")
    print(f"{'phase':18} {'load':18} " + " ".join(f"{column:>8}" for column in columns))
    for row in results:
        print(f"{row['name']:18} {row['load']:18} {row['requests']:8d} {row['errors']:8d} {row['per_second']:8.1f} "
              f"{row['p50']:8.2f} {row['p90']:8.2f} {row['p99']:8.2f} {row['max']:8.2f} "
              f"{row['load1_before']:8.2f} {row['api_cpu_ms_per_request']:8.2f} "
              f"{row['dispatcher_cpu_ms_per_request']:8.2f} {row['postgres_cpu_ms_per_request']:8.2f}")
    print(f"database after the POST phases: {checks}")
    verdict = judge({row["name"]: row for row in results}, checks)
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
