"""``lethe serve`` on the embedded default (SQLite, local broker): API and worker come up, the signing
key is generated and served, and Ctrl-C (SIGINT) stops everything cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lethe_cli.serve import child_environment, dispatcher_command, dispatcher_placement, worker_command

REPO = Path(__file__).resolve().parents[2]


def test_child_environment_fills_in_the_embedded_default(tmp_path):
    env, notes = child_environment({"LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'lethe.db'}"})
    assert env["LETHE_BROKER_URL"] == f"sqla+sqlite:///{tmp_path / 'var' / 'celery-broker.sqlite'}"
    assert Path(env["LETHE_SIGNING_KEY"]).is_file() and Path(env["LETHE_SIGNING_PUBLIC_KEY"]).is_file()
    assert len(notes) == 2
    given = {"LETHE_BROKER_URL": "redis://h:6379/0", "LETHE_SIGNING_KEY": str(tmp_path / "k.pem"),
             "LETHE_DATABASE_URL": "postgresql+psycopg://u@h/db"}
    env, notes = child_environment(given)
    assert env["LETHE_BROKER_URL"] == "redis://h:6379/0" and env["LETHE_SIGNING_KEY"] == given["LETHE_SIGNING_KEY"]
    assert notes == []
    assert worker_command("q")[-2:] == ["-Q", "q"] and "--concurrency" not in worker_command("q")


def test_the_dispatcher_runs_in_its_own_process_on_postgres_and_in_the_api_on_sqlite():
    assert dispatcher_placement("auto", "postgresql+psycopg://u@h/db") == "process"
    assert dispatcher_placement("auto", "sqlite:///var/lethe.db") == "api"
    assert dispatcher_placement("api", "postgresql+psycopg://u@h/db") == "api"
    assert dispatcher_placement("process", "sqlite:///x.db") == "process"
    with pytest.raises(ValueError, match="auto, api or process"):
        dispatcher_placement("thread", "sqlite:///x.db")
    assert dispatcher_command()[1:] == ["-m", "service.dispatcher"]


@pytest.mark.slow
def test_serve_starts_api_and_worker_and_stops_on_ctrl_c(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("LETHE_")}
    env.update({"LETHE_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'lethe.db'}",
                "LETHE_ARTIFACT_DIR": str(tmp_path / "artifacts"), "LETHE_WORKER_METRICS_PORT": "0",
                "PYTHONPATH": str(REPO)})
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "lethe_cli.main", "serve", "--port", str(port),
                                    "--grace", "10"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            text = log.read_text(errors="replace")
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                up = False
            if up and " ready." in text:
                break
            assert process.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(0.5)
        keys = httpx.get(f"http://127.0.0.1:{port}/v1/keys", timeout=5).json()["keys"]
        assert keys and "BEGIN PUBLIC KEY" in keys[0]["pem"]
        assert (tmp_path / "var" / "celery-broker.sqlite").exists()
        process.send_signal(signal.SIGINT)
        # 10 s of grace for the worker, then the children stop; on a machine busy with two benchmark processes
        # the whole shutdown once took over 30 s
        assert process.wait(60) == 0, log.read_text()[-3000:]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
