"""``lethe federate --engine``: the engine stays importable without flwr, and bad choices are refused
before any work (these tests do not need flwr)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from lethe_cli.main import app  # the `lethe` command; `federate` is lethe_cli.engine's

REPO = Path(__file__).resolve().parents[2]


def test_engine_service_and_cli_import_without_flwr():
    code = (
        "import sys; sys.modules['flwr'] = None; sys.modules['ray'] = None\n"
        "import lethe_cli.engine, lethe_cli.main, ease_engine.federation.fedavg, ease_engine.erasure\n"
        "import workers.pipeline\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_unknown_engine_and_continue_without_flower_are_refused(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["federate", "--engine", "horovod", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "--engine must be builtin or flower" in result.output
    result = runner.invoke(app, ["federate", "--continue-from", str(tmp_path), "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "--continue-from needs --engine flower" in result.output
    assert not (tmp_path / "v").exists()


def test_flower_engine_without_flwr_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lethe_flower.run", None)  # as if flwr were not installed
    result = CliRunner().invoke(app, ["federate", "--engine", "flower", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "pip install -e '.[flower]'" in result.output
    assert not (tmp_path / "v").exists()
