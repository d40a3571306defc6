"""The Grafana dashboard queries series the code really exports, and shows every metric the code exports."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from metric_names import DEPLOY, all_series_names, exported_series, names_in

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lethe.json"


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_query_names_an_exported_series():
    exported = all_series_names() | {"up"}
    expressions = dashboard_expressions()
    assert expressions
    unknown = {(title, name) for title, expr in expressions for name in names_in(expr) if name not in exported}
    assert not unknown, f"dashboard queries name series the code does not export: {sorted(unknown)}"


def test_every_exported_metric_is_on_a_panel():
    used = set().union(*(names_in(expr) for _title, expr in dashboard_expressions()))
    missing = sorted(family for family, series in exported_series().items() if not series & used)
    assert not missing, f"exported metrics on no dashboard panel: {missing}"


def test_the_metric_name_check_itself_rejects_what_is_not_exported():
    # negative control: the names the issue found wrong are not accepted by the check above
    exported = all_series_names()
    assert "lethe_worker_jobs_total" in exported and "lethe_worker_jobs" not in exported
    assert "lethe_worker_stage_duration_seconds_bucket" in exported
    assert "lethe_requests_due_soon" in exported  # the requests have due dates: the alert's series exists
    assert names_in('sum(rate(lethe_no_such_metric_total[5m])) + up') == {"lethe_no_such_metric_total", "up"}


def test_known_mistakes_are_gone():
    expressions = " ".join(expr for _title, expr in dashboard_expressions())
    # every worker reads the same Redis list: summing the depth over workers multiplies it
    assert "sum by (queue) (lethe_worker_broker_queue_depth)" not in expressions
    assert "max by (queue) (lethe_worker_broker_queue_depth)" in expressions
    # stage latency of rare jobs: no short-window rate()
    stage_queries = [expr for _t, expr in dashboard_expressions() if "stage_duration" in expr]
    assert stage_queries and not any("rate(" in expr for expr in stage_queries)


def test_gates_table_matches_exported_gate_figures():
    """The table's regex selects figure names that the API really exports for a published request."""
    import re

    from service.metrics import _numeric_items

    [table_expr] = [expr for title, expr in dashboard_expressions() if title == "Last published verification figures"]
    pattern = re.search(r'figure=~"([^"]+)"', table_expr).group(1)
    result = {"gates": [{"name": "forget_i2t_r1", "value": 1.5, "threshold": 3.0, "comparison": "<=", "passed": True},
                        {"name": "mia_loss_auc", "value": 0.51, "threshold": 0.55, "comparison": "<=", "passed": True}],
              "membership": {"loss_auc": 0.51}, "metrics": {"test": {"i2t_r1": 30.0}},
              "distributions": {"similarity": {"edges": [0.1, 0.2]}}}
    figures = dict(_numeric_items(result))
    assert figures["gates.forget_i2t_r1.value"] == 1.5 and figures["gates.mia_loss_auc.threshold"] == 0.55
    assert not any(name.startswith("distributions") for name in figures)  # plain lists are skipped
    selected = {name for name in figures if re.fullmatch(pattern, name)}  # Prometheus anchors regexes
    assert {"gates.forget_i2t_r1.value", "gates.forget_i2t_r1.threshold", "gates.mia_loss_auc.value",
            "membership.loss_auc", "metrics.test.i2t_r1"} <= selected


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (scripts/install_promtool.sh; ./run test installs it as root)")
def test_every_query_is_valid_promql(tmp_path):
    """`promtool check rules` parses each dashboard query as a recording rule's expression."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expr.replace("$__rate_interval", "5m")}
        for index, (_title, expr) in enumerate(dashboard_expressions())]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    completed = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
