"""The chained-erasure reactivation experiment's pieces that need no federation."""

from __future__ import annotations

import pytest
import torch

from ease_engine.linalg import ForgetLock, LockedBlock
from lethe_bench.chained_reactivation import RUNS, newest_layer, summarise
from lethe_bench.summary import CURVE_METRICS as METRICS


def _lock(names: list[str], seed: int, client: str) -> ForgetLock:
    lock = ForgetLock(metadata={"client": client})
    g = torch.Generator().manual_seed(seed)
    for name in names:
        basis = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0]
        ones, zeros = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        lock.set_block(name, LockedBlock(basis, ones, zeros))
    return lock


def test_newest_layer_is_the_second_erasures_lock_alone():
    first, second = _lock(["a", "b"], 0, "0"), _lock(["b", "c"], 1, "1")
    chained = ForgetLock.chained(first, second)
    assert len(chained.layers("b")) == 2
    newest = newest_layer(chained)
    assert newest.block_names == ["b", "c"] and newest.metadata == {"client": "1"}
    for name in ("b", "c"):
        assert len(newest.layers(name)) == 1 and torch.equal(newest.block(name).basis, second.block(name).basis)
    update = first.block("b").basis[:, 0] * -1.0  # back along the first erasure only: the newest layer lets it pass
    torch.testing.assert_close(newest.apply("b", update)[0], second.apply("b", update)[0])


def test_summary_is_the_mean_and_spread_over_seeds_at_each_measured_round():
    def curve(residual_end: float) -> list[dict]:
        return [{"round": 0, **dict.fromkeys(METRICS, 0.0), "lock_interventions": 0, "lock_failed_closed": 0},
                {"round": 5, **dict.fromkeys(METRICS, residual_end), "lock_interventions": 4, "lock_failed_closed": 1}]

    results = [{"seed": s, "curves": {label: curve(float(s)) for label in RUNS}} for s in (0, 1, 2)]
    summary = summarise(results)
    end = summary["runs"]["no lock"][-1]
    assert summary["seeds"] == [0, 1, 2] and end["round"] == 5
    assert end["ledger_residual"]["mean"] == pytest.approx(1.0)
    assert end["ledger_residual"]["std"] == pytest.approx(1.0)  # sample standard deviation, as every bench table
    assert end["lock_interventions"] == 4 and end["lock_failed_closed"] == 1


def test_the_section_renders_when_a_metric_is_missing_at_some_point():
    """The probe exists only where the request names a concept, and the residual only where the ledger holds
    the client: a table with a metric missing at the first or last point shows '-', it does not crash."""
    from lethe_bench.chained_reactivation import docs_section

    def point(round_index: int, with_probe: bool) -> dict:
        metrics = {m: 0.5 for m in METRICS if with_probe or m != "probe"}
        return {"round": round_index, **metrics, "lock_interventions": 3, "lock_failed_closed": 0}

    curves = {label: [point(0, with_probe=False), point(5, with_probe=True)] for label in RUNS}
    summary = {**summarise([{"seed": 0, "curves": curves}, {"seed": 1, "curves": curves}]), "reinjected": 50,
               "date": "2026-12-04", "machine": "test"}
    text = docs_section(summary, "python -m lethe_bench.chained_reactivation --seeds 0 1")
    assert "after two erasures" in text
    assert "| chained lock | 0.5 -> 0.5 ± 0.0 | 0.5 -> 0.5 ± 0.0 | - | 0.50 -> 0.50 ± 0.00 | 6 |" in text
    assert "chained lock 0, newest layer only 0, no lock 0" in text
