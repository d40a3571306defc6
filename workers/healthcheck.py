"""``python -m workers.healthcheck``: the worker container's health check (docker-compose runs it).

Healthy when the worker's Prometheus exporter (``LETHE_WORKER_METRICS_PORT`` on 127.0.0.1) answers and its
``lethe_worker_heartbeat_timestamp_seconds`` is at most ``--max-age`` seconds old (the heartbeat thread sets
it every ``workers.metrics.HEARTBEAT_SECONDS`` while the worker process lives). Exit 0 when healthy, 1 with
one line saying what is wrong otherwise.
"""

from __future__ import annotations

import argparse
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from service.settings import get_settings
from workers.metrics import HEARTBEAT_METRIC, HEARTBEAT_SECONDS

DEFAULT_MAX_AGE = 4 * HEARTBEAT_SECONDS


def heartbeat_age(metrics_text: str, now: float) -> float | None:
    """Seconds since the heartbeat in an exporter's text output (None when it has none)."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == HEARTBEAT_METRIC:
            stamps = [sample.value for sample in family.samples if sample.name == HEARTBEAT_METRIC]
            if stamps:
                return now - max(stamps)
    return None


def check(url: str, max_age: float, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except OSError as exc:
        return False, f"the worker's metrics exporter at {url} does not answer ({exc})"
    age = heartbeat_age(text, time.time())
    if age is None:
        return False, f"{url} exports no {HEARTBEAT_METRIC}: the worker's heartbeat thread is not running"
    if age > max_age:
        return False, f"the worker's heartbeat is {age:.0f} s old (more than {max_age:.0f} s)"
    return True, f"heartbeat {age:.0f} s ago"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=None,
                        help="exporter port (default: LETHE_WORKER_METRICS_PORT, else 9808)")
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE,
                        help=f"oldest acceptable heartbeat in seconds (default {DEFAULT_MAX_AGE:.0f})")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else get_settings().worker_metrics_port
    if port <= 0:
        print("the worker's metrics exporter is disabled (LETHE_WORKER_METRICS_PORT=0): nothing to check")
        return 1
    ok, message = check(f"http://127.0.0.1:{port}/metrics", args.max_age)
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
