"""Driving the server: readiness, CPU per request from /proc (API, dispatcher, Postgres), phases run
together, and the database check afterwards (every accepted request committed, the outbox drained)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
from sqlalchemy import text

from lethe_bench.service_load.wrk import Phase, PhaseRun


def wait_ready(base: str, server: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the API exited with status {server.returncode}; see its output above")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:  # (the database is known up)
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
