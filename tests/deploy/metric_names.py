"""The series the code exports, collected from the metric registries themselves (not from the source text)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# A PromQL metric name in an expression: lethe_* names, and Prometheus's own `up`.
METRIC_NAME = re.compile(r"\b(lethe_[a-z0-9_]+|up)\b")

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def _series(families) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for family in families:
        if family.name.startswith("lethe_"):
            out.setdefault(family.name, set()).update(family.name + suffix for suffix in SUFFIXES[family.type])
    return out


def exported_series() -> dict[str, set[str]]:
    """Metric family -> the series names Prometheus sees for it, over the API (with and without its dispatcher
    thread), the dispatcher process, the database collector and the worker's exporter."""
    from prometheus_client import REGISTRY, CollectorRegistry

    from service.metrics import DatabaseCollector, DispatchMetrics, ServiceMetrics, build_info_gauge
    from workers import metrics as worker_metrics

    families = list(ServiceMetrics(dispatches=True).registry.collect())
    families += list(DatabaseCollector(db=None).describe())
    dispatcher = CollectorRegistry()  # what service.dispatcher.main registers
    DispatchMetrics(dispatcher)
    build_info_gauge(dispatcher, "dispatcher")
    families += list(dispatcher.collect())
    families += list(REGISTRY.collect())  # the worker's module-level metrics
    families += list(worker_metrics.BrokerQueueCollector("redis://127.0.0.1:1/0", "q").describe())
    return _series(families)


def all_series_names() -> set[str]:
    return set().union(*exported_series().values())


def names_in(expression: str) -> set[str]:
    return set(METRIC_NAME.findall(expression))
