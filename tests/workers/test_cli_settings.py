"""The command line and the settings class: the --help of serve, worker and dispatcher lists every variable
(generated from the class), and a bad value stops `lethe serve` before it does anything, naming the variable."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lethe_cli.main import app
from service.settings import Settings


@pytest.mark.parametrize("command", ["serve", "worker", "dispatcher"])
def test_help_lists_every_setting(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for field in Settings.model_fields:
        assert Settings.env_name(field) in result.output
    assert "how long a job waits for its model's lock" in " ".join(result.output.split())


def test_serve_refuses_a_bad_setting_and_starts_nothing(tmp_path):
    database = tmp_path / "var" / "lethe.db"
    env = {"LETHE_DATABASE_URL": f"sqlite:///{database}", "LETHE_GATES_JSON": "[not an object]"}
    result = CliRunner().invoke(app, ["serve", "--workers", "0"], env=env)
    assert result.exit_code == 2
    assert "LETHE_GATES_JSON" in result.output and "JSON" in result.output
    assert not database.exists() and not (tmp_path / "var").exists()
    # negative control: the same command line with a good value gets past the settings (--no-api, no workers)
    env["LETHE_GATES_JSON"] = "{}"
    result = CliRunner().invoke(app, ["serve", "--workers", "0", "--no-api", "--no-migrate"], env=env)
    assert result.exit_code == 2 and "nothing to start" in result.output
