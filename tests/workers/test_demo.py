"""``lethe demo`` end to end on the tiny federation (``--federation``), on SQLite and the local broker:
API and worker as real subprocesses, the request polled to a terminal state over REST, reports, the
signature and the audit chain checked, every child stopped at the end. Then a run whose gates are
strict enough to fail: it must say so and exit 1. About 40 s on 2 cores."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lethe_cli.demo import DemoError, federation_identity, prepare_workdir
from lethe_cli.main import app
from tests.pdf_text import pdf_pages
from workers.signing import verify_directory

REPO = Path(__file__).resolve().parents[2]
ERASE_PARAMS = {"steps": 20}  # a short displacement: seconds
DEFAULT_GATES: dict = {}  # the production gates as shipped
# bands without tolerance or noise allowance: no real erasure puts its membership-inference AUC at exactly 0.5
STRICT_GATES = {"z": 0.001, "r1_tolerance": 0.0, "mia_tolerance": 0.0}


def run_demo(cwd: Path, federation: Path, workdir: Path, gates: dict) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LETHE_")}
    env.update({"PYTHONPATH": str(REPO), "LETHE_GATES_JSON": json.dumps(gates),
                "LETHE_ERASE_PARAMS_JSON": json.dumps(ERASE_PARAMS), "NO_COLOR": "1"})
    return subprocess.run([sys.executable, "-m", "lethe_cli.main", "demo", "--federation", str(federation),
                           "--workdir", str(workdir), "--timeout", "180"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_children_stopped(output: str) -> None:
    pids = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", output)]
    assert len(pids) == 2, output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    port = int(re.search(r"API ready on http://127\.0\.0\.1:(\d+)", output).group(1))
    with socket.socket() as sock, pytest.raises(OSError):
        sock.connect(("127.0.0.1", port))


@pytest.mark.slow
def test_demo_runs_the_whole_service_and_stops(gate_versions, tmp_path):
    federation, _ = gate_versions
    workdir = tmp_path / "demo"
    done = run_demo(tmp_path, federation, workdir, DEFAULT_GATES)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "published" in output and "demo passed" in output
    assert "signing key: demo/var/keys/lethe-signing-key.pem (generated" in output
    assert_children_stopped(output)

    (report_json,) = (workdir / "reports").glob("erasure-*.json")
    (report_pdf,) = (workdir / "reports").glob("erasure-*.pdf")
    assert report_pdf.read_bytes().startswith(b"%PDF")
    report = json.loads(report_json.read_text())
    assert json.dumps(report).count('"published"') >= 1
    v1, v2 = workdir / "artifacts" / "gates" / "v1", workdir / "artifacts" / "gates" / "v2"
    assert (v1 / "clients.json").is_file() and (v2 / "model.sig").is_file()
    verify_directory(v2, workdir / "var" / "keys" / "lethe-signing-key.pem.pub")  # raises if it does not verify
    assert re.search(r"ok\s+signature of v2", output) and re.search(r"ok\s+audit chain \(\d+ events", output)
    assert re.search(r"ok\s+certificate \(signature, statement, version, audit chain, audit head\)", output)
    assert re.search(r"ok\s+v1 withdrawn \(its download answers 410\)", output)
    assert (workdir / "var" / "lethe.db").is_file()
    pages = pdf_pages(report_pdf.read_bytes())  # page 1: verdict, gate table, signature digest; no raw JSON
    assert "Verdict: " in pages[0] and "What it measures" in pages[0] and "No-op control" in pages[0]
    assert report["signature"]["digest"] and report["signature"]["digest"] in pages[0]
    assert all(gate["name"] in pages[0] for gate in report["gates"]) and report["gates"]
    assert not any(re.search(r'[{\[]\s*"|"\s*:\s*[{\["\d]', page) for page in pages)

    # a second run in the same folder: a fresh state (v1 again), the key kept; strict gates fail visibly
    failed = run_demo(tmp_path, federation, workdir, STRICT_GATES)
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output[-6000:]
    assert "verification_failed" in output and "FAIL  mia_" in output and "demo FAILED" in output
    assert "lethe-signing-key.pem (kept" in output
    assert re.search(r"ok\s+audit chain", output) and re.search(r"ok\s+report\.pdf is a PDF", output)
    assert not (workdir / "artifacts" / "gates" / "v2").exists()
    assert_children_stopped(output)


def test_workdir_is_reset_only_when_the_demo_made_it(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not made by `lethe demo`"):
        prepare_workdir(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

    layout = prepare_workdir(tmp_path / "demo")
    (layout.var / "keys").mkdir()
    (layout.var / "keys" / "k.pem").write_text("key")
    (layout.var / "lethe.db").write_text("old")
    (layout.artifacts / "m").mkdir()
    prepare_workdir(tmp_path / "demo")
    assert (layout.var / "keys" / "k.pem").is_file()
    assert not (layout.var / "lethe.db").exists() and not any(layout.artifacts.iterdir())


def test_federation_identity_and_cli(tmp_path):
    version = tmp_path / "v"
    version.mkdir()
    with pytest.raises(DemoError, match="not a model version directory"):
        federation_identity(version)
    (version / "metadata.json").write_text(json.dumps({"config": {"name": "default",
                                                                  "partition": {"owners": {"2": ["colour", "red"]}}}}))
    (version / "clients.json").write_text(json.dumps({"clients": {c: {"n_samples": 0} for c in ("0", "1", "2")}}))
    assert federation_identity(version) == ("default", "2")

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "federation-demo" in result.output and " demo " in result.output
    result = CliRunner().invoke(app, ["demo", "--federation", str(tmp_path / "missing"),
                                      "--workdir", str(tmp_path / "d")])
    assert result.exit_code == 2 and "no such directory" in result.output
