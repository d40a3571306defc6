"""The targets of the load test, the verdict on each, and the figures as text and as the service-load
section of docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import platform

from lethe_bench.machine import describe as describe_machine

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
        f"Command: `{command}` ({when}, {describe_machine()}, Postgres and Redis on "
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


def print_table(results: list[dict], checks: dict) -> None:
    columns = ("n", "err", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "load1", "api cpu", "disp cpu",
               "pg cpu")
    print(f"{'phase':18} {'load':18} " + " ".join(f"{column:>8}" for column in columns))
    for row in results:
        print(f"{row['name']:18} {row['load']:18} {row['requests']:8d} {row['errors']:8d} {row['per_second']:8.1f} "
              f"{row['p50']:8.2f} {row['p90']:8.2f} {row['p99']:8.2f} {row['max']:8.2f} "
              f"{row['load1_before']:8.2f} {row['api_cpu_ms_per_request']:8.2f} "
              f"{row['dispatcher_cpu_ms_per_request']:8.2f} {row['postgres_cpu_ms_per_request']:8.2f}")
    print(f"database after the POST phases: {checks}")
