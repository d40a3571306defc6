"""The demo's child processes (API and worker, logs to files) and its REST client."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from lethe_cli.demo.output import say, show
from lethe_cli.serve import Child, Supervisor

HOST = "127.0.0.1"
TERMINAL = {"published", "verification_failed", "inconclusive", "failed", "rejected", "cancelled"}
UNSENT_SECONDS = 60.0  # a request still `received` this long: the API cannot reach the broker


class DemoFailure(Exception):
    """The service did not do its job (a process died, a time-out, an unexpected answer): exit code 1."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Api:
    """The REST calls of the demo, with the right token each."""

    def __init__(self, base_url: str, tokens: dict[str, str]):
        self.http = httpx.Client(base_url=base_url, timeout=60.0)
        self.tokens = tokens

    def call(self, method: str, path: str, role: str | None = None, expect=(200,), **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        response = self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code not in expect:
            raise DemoFailure(f"{method} {path} answered {response.status_code}: {response.text[:1000]}")
        return response

    def close(self) -> None:
        self.http.close()


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class Children:
    """API and worker as child processes (``lethe serve``'s ``Supervisor``), each writing its own log."""

    def __init__(self, logs: Path, grace: float = 30.0):
        self.log_dir = logs
        self.supervisor = Supervisor(grace_seconds=grace, echo=say)
        self.logs: dict[str, Path] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        child = Child(name, process)
        self.supervisor.children.append(child)
        self.logs[name] = log
        say(f"started {name} (pid {process.pid}), log {show(log)}")
        return child

    def check(self) -> None:
        for child in self.supervisor.children:
            code = child.process.poll()
            if code is not None:
                raise DemoFailure(f"{child.name} exited with code {code}; end of {show(self.logs[child.name])}:\n"
                                  f"{tail(self.logs[child.name])}")

    def wait_ready(self, api: Api, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            with contextlib.suppress(httpx.HTTPError):
                if api.http.get("/readyz", timeout=2,  # readiness is for admins (or Prometheus's token)
                                headers={"Authorization": f"Bearer {api.tokens['admin']}"}).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise DemoFailure(f"the API was not ready within {timeout:.0f} s; end of its log:\n"
                                  f"{tail(self.logs['api'])}")
            time.sleep(0.5)

    def poll(self, api: Api, request_id: str, timeout: float) -> dict[str, Any]:
        """The request's view once it is finished, printing a line per stage and per 5 %."""
        began = time.monotonic()
        last: tuple | None = None
        while True:
            view = api.call("GET", f"/v1/erasure-requests/{request_id}", "requester").json()
            status, stage, progress = view["status"], view.get("stage"), float(view.get("progress") or 0.0)
            key = (status, stage, int(progress * 20))
            if key != last:
                say(f"  {time.monotonic() - began:7.1f} s  {status:<20} {stage or '-':<11} {100 * progress:5.1f} %")
                last = key
            if status in TERMINAL:
                return view
            self.check()
            if status == "received" and time.monotonic() - began > UNSENT_SECONDS:
                raise DemoFailure(f"request {request_id} was not sent to the broker within {UNSENT_SECONDS:.0f} s; "
                                  f"end of the API log:\n{tail(self.logs['api'])}")
            if time.monotonic() - began > timeout:
                raise DemoFailure(f"request {request_id} still {status}/{stage} after {timeout:.0f} s (--timeout); "
                                  f"end of the worker log:\n{tail(self.logs['worker'])}")
            time.sleep(1.0)
