"""The worker's monitoring: failures counted by reason, the heartbeat thread, the container health check and
the build info."""

from __future__ import annotations

import time
from importlib import metadata

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, start_http_server
from test_worker_task import FakeEngine

from ease_engine.unlearning.base import UnlearningError
from workers import healthcheck, metrics
from workers.context import WorkerContext
from workers.pipeline import process_request


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("lethe_worker_failures_total", {"reason": reason})


def gate_failures(gate: str) -> float:
    return REGISTRY.get_sample_value("lethe_worker_gate_failures_total", {"gate": gate}) or 0.0


def all_failures() -> dict[str, float]:
    return {reason: failures(reason) for reason in metrics.FAILURE_REASONS}


@pytest.fixture
def context(settings, db):
    return WorkerContext(settings, db, erase_fn=FakeEngine())


def test_every_reason_is_exported_from_the_start():
    assert all(value is not None for value in all_failures().values())  # 0, not absent: increase() sees the first


@pytest.mark.parametrize(("engine", "reason"), [
    (FakeEngine(passed=False), "verification_failed"),
    (FakeEngine(error=UnlearningError("ease needs the contribution ledger")), "engine_error"),
    (FakeEngine(error=RuntimeError("No space left on device")), "internal_error"),
])
def test_failures_are_counted_by_reason(context, registered, submit, engine, reason):
    context.erase_fn = engine
    before, gate_before = all_failures(), gate_failures("forget_i2t_r1")
    assert process_request(submit("0"), context) in {"failed", "verification_failed"}
    after = all_failures()
    assert after[reason] == before[reason] + 1
    assert {r: v for r, v in after.items() if r != reason} == {r: v for r, v in before.items() if r != reason}
    assert gate_failures("forget_i2t_r1") == gate_before + (reason == "verification_failed")


def test_signing_and_rejection_reasons_and_none_for_a_published_job(context, registered, submit, tmp_path):
    before = all_failures()
    first, second = submit("0"), submit("0")  # both accepted on v1
    assert process_request(first, context) == "published"
    assert all_failures() == before  # negative control: a published job is no failure
    assert process_request(second, context) == "rejected"  # client 0 is erased in v2
    assert failures("rejected") == before["rejected"] + 1
    context.settings = context.settings.with_overrides(signing_key=tmp_path / "missing" / "key.pem")
    assert process_request(submit("1"), context) == "failed"
    assert failures("signing_error") == before["signing_error"] + 1


def test_an_unknown_reason_is_refused():
    with pytest.raises(ValueError, match="unknown failure reason"):
        metrics.record_failure("it broke")


def test_heartbeat_thread_advances_until_stopped():
    gauge = Gauge("test_heartbeat_seconds", "test", registry=CollectorRegistry())
    heartbeat = metrics.Heartbeat(interval=0.05, gauge=gauge).start()
    try:
        first = gauge._value.get()
        assert first == pytest.approx(time.time(), abs=5)
        deadline = time.monotonic() + 30
        while gauge._value.get() == first:
            assert time.monotonic() < deadline, "the heartbeat did not advance"
            time.sleep(0.02)
    finally:
        heartbeat.stop()
    stopped = gauge._value.get()
    time.sleep(0.3)
    assert gauge._value.get() == stopped
    with pytest.raises(ValueError):
        metrics.Heartbeat(interval=0)


@pytest.fixture
def exporter():
    """An HTTP exporter on a free port with its own registry: (registry, port)."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield registry, server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_accepts_a_fresh_heartbeat_and_refuses_a_stale_or_missing_one(exporter, capsys):
    registry, port = exporter
    url = f"http://127.0.0.1:{port}/metrics"
    ok, message = healthcheck.check(url, max_age=60)
    assert not ok and "exports no lethe_worker_heartbeat_timestamp_seconds" in message
    beat = Gauge(metrics.HEARTBEAT_METRIC, "test", registry=registry)
    beat.set(time.time() - 1000)
    ok, message = healthcheck.check(url, max_age=60)
    assert not ok and "old" in message
    assert healthcheck.main(["--port", str(port), "--max-age", "60"]) == 1
    beat.set(time.time())
    assert healthcheck.check(url, max_age=60)[0]
    assert healthcheck.main(["--port", str(port)]) == 0
    assert "heartbeat" in capsys.readouterr().out


def test_healthcheck_refuses_when_nothing_answers():
    ok, message = healthcheck.check("http://127.0.0.1:1/metrics", max_age=60, timeout=2)
    assert not ok and "does not answer" in message


def test_worker_build_info_names_torch():
    labels = {sample.labels["component"]: sample.labels for family in REGISTRY.collect()
              if family.name == "lethe_build_info" for sample in family.samples}
    assert labels["worker"]["torch"] == metadata.version("torch")
    assert labels["worker"]["python"] and labels["worker"]["commit"]
