"""Scale-out checks on a ``Cluster``: erasures of several models with several workers. From the audit chain:
per-model serialisation (no two jobs of one model overlap), parallelism across models, no request processed
twice (one ``request.running`` each, no resume), and the throughput. Used by ``test_scale_out.py`` and
``scripts/scale_out.py``."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select

from service.models import AuditEvent, as_utc


@dataclass
class ScaleRun:
    workers: int
    models: int
    per_model: int
    wall_seconds: float
    requests: int
    max_parallel: int
    overlaps_within_a_model: int
    processed_twice: int
    published: int

    @property
    def requests_per_hour_per_worker(self) -> float:
        return self.requests / self.wall_seconds * 3600 / self.workers


def run_scale(cluster, workers: int, models: int, per_model: int, stage_seconds: float) -> ScaleRun:
    names = [f"scale-{index}" for index in range(models)]
    for name in names:
        cluster.register(name)
    cluster.start_dispatcher()
    for _ in range(workers):
        cluster.start_worker(FAULT_STAGE_SECONDS=str(stage_seconds))
    time.sleep(0.5)
    began = time.monotonic()
    ids = {name: [cluster.submit(name, client_id="0", scope="samples", pair_ids=[f"p0-{k}"])
                  for k in range(per_model)] for name in names}
    everything = [request_id for group in ids.values() for request_id in group]
    views = [cluster.wait_terminal(request_id, timeout=120 + 10 * len(everything)) for request_id in everything]
    wall = time.monotonic() - began
    intervals, running_events = {}, {}
    with cluster.db.session() as session:
        for request_id in everything:
            events = session.scalars(select(AuditEvent).where(AuditEvent.request_id == uuid.UUID(request_id))
                                     .order_by(AuditEvent.seq)).all()
            starts = [as_utc(e.created_at) for e in events if e.event_type == "request.running"]
            running_events[request_id] = sum(e.event_type in ("request.running", "request.resumed") for e in events)
            intervals[request_id] = (starts[0], as_utc(events[-1].created_at))
    overlaps = 0
    for group in ids.values():
        spans = sorted(intervals[request_id] for request_id in group)
        overlaps += sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    points = sorted([(start, 1) for start, _ in intervals.values()] + [(end, -1) for _, end in intervals.values()])
    level = peak = 0
    for _moment, step in points:
        level += step
        peak = max(peak, level)
    return ScaleRun(workers, models, per_model, wall, len(everything), peak, overlaps,
                    sum(count != 1 for count in running_events.values()),
                    sum(view["status"] == "published" for view in views))
