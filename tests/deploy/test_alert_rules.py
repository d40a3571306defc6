"""deploy/prometheus/alerts.yml: valid (`promtool check rules`), unit-tested (`promtool test rules`), loaded by
Prometheus, and written against series the code exports."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from metric_names import DEPLOY, all_series_names, names_in

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "tests" / "alerts_test.yml"
# alerted on, but not exported yet (none: lethe_requests_due_soon is exported since the requests have due dates)
AWAITING_DUE_DATES: set[str] = set()
REQUIRED_ALERTS = {
    "LetheWorkerDown", "LetheNoWorkers", "LetheWorkerHeartbeatStale", "LetheOutboxLag", "LetheRequestStuckQueued",
    "LetheRequestStuckRunning", "LetheVerificationFailed", "LetheArtifactIntegrityFailure",
    "LetheRequestNearDeadline",
}
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (scripts/install_promtool.sh; ./run test installs it as root)")


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_required_alerts_exist_with_severity_and_summary():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_alerts_use_exported_series():
    exported = all_series_names() | {"up"} | AWAITING_DUE_DATES
    unknown = {(rule["alert"], name) for rule in alert_rules() for name in names_in(rule["expr"])
               if name not in exported}
    assert not unknown, f"alert rules name series the code does not export: {sorted(unknown)}"
    assert not AWAITING_DUE_DATES & all_series_names(), "exported now: drop it from AWAITING_DUE_DATES"


def test_every_alert_has_a_unit_test():
    tested = {case["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    untested = {rule["alert"] for rule in alert_rules()} - tested
    assert not untested, f"alerts that no promtool test case sees firing: {sorted(untested)}"


def test_prometheus_loads_the_rules_where_compose_mounts_them():
    config_path = DEPLOY / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    [rule_file] = config["rule_files"]
    assert (config_path.parent / rule_file).resolve() == ALERTS.resolve()
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["services"]["prometheus"]["volumes"])
    config_in_container = mounts["./deploy/prometheus.yml"]
    rules_in_container = mounts["./" + ALERTS.relative_to(DEPLOY.parent).as_posix()]
    assert rules_in_container == f"{config_in_container.rsplit('/', 1)[0]}/{rule_file}"


@needs_promtool
def test_promtool_check_rules_and_config(tmp_path):
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # laid out as docker-compose mounts it: the config, its rules and the scrape token beside it
    shutil.copy(DEPLOY / "prometheus.yml", tmp_path / "prometheus.yml")
    (tmp_path / "prometheus").mkdir()
    shutil.copy(ALERTS, tmp_path / "prometheus" / "alerts.yml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "metrics-token").write_text("scrape-token\n")
    config = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alerts():
    completed = promtool("test", "rules", str(ALERT_TESTS))
    assert completed.returncode == 0, completed.stdout + completed.stderr


@needs_promtool
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path):
    """Negative control: the same unit tests fail against rules whose outbox-lag threshold was loosened."""
    (tmp_path / "tests").mkdir()
    shutil.copy(ALERT_TESTS, tmp_path / "tests" / ALERT_TESTS.name)
    broken = ALERTS.read_text().replace("lethe_outbox_oldest_unsent_age_seconds > 300",
                                        "lethe_outbox_oldest_unsent_age_seconds > 200")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    completed = promtool("test", "rules", str(tmp_path / "tests" / ALERT_TESTS.name))
    assert completed.returncode != 0 and "LetheOutboxLag" in completed.stdout + completed.stderr
