"""Two workers on one Redis, erasures of two models at once (stand-in engine with a fixed delay): per-model
serialisation holds, the models run in parallel, no request is processed twice (issue 11, item 10; the
figures for 1, 2 and 4 workers: scripts/scale_out.py, docs/benchmarks.md)."""

from __future__ import annotations

from tests.faults.scale import run_scale


def test_two_workers_two_models(make_cluster):
    cluster = make_cluster()
    run = run_scale(cluster, workers=2, models=2, per_model=3, stage_seconds=0.3)
    assert run.published == run.requests == 6
    assert run.overlaps_within_a_model == 0  # one model, one erasure at a time
    assert run.processed_twice == 0
    assert run.max_parallel == 2  # the two models ran side by side
    cluster.assert_consistent([])
