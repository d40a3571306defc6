"""docs/results/unlearning.json keeps the shape a script checks (issue 9): every scenario over at least three
seeds, the retrain spread, each method's mean and std per metric, its gaps and wall time, the gate cases."""

import json
from pathlib import Path

import pytest

from lethe_bench.rows import EXPECTED
from lethe_bench.scenarios import SCENARIOS

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "unlearning.json"
# the Recall@1 figures are in every scenario; the membership AUC only where the erased client has enough audit
# pairs to serve as matched non-members (not on real-images), the probe only where a concept is named
METRICS = {"forget_i2t_r1", "forget_t2i_r1", "retain_i2t_r1", "retain_t2i_r1", "test_i2t_r1", "test_t2i_r1"}
VERDICTS = {"pass", "fail", "inconclusive"}


def _scenarios() -> dict:
    return json.loads(RESULTS.read_text())["scenarios"]


@pytest.mark.parametrize("name", sorted(_scenarios()))
def test_every_scenario_has_the_checked_shape(name):
    assert name in SCENARIOS
    summary = _scenarios()[name]
    assert len(summary["seeds"]) >= 3 and len(set(summary["seeds"])) == len(summary["seeds"])
    assert set(summary["retrain_spread"]) >= METRICS
    assert {"original", "retrain", "ease"} <= set(summary["methods"])
    for label, method in summary["methods"].items():
        assert set(method["metrics"]) >= METRICS, label
        for stats in method["metrics"].values():
            assert stats["n"] == len(summary["seeds"]) and stats["std"] >= 0
        assert set(method["gap_to_retrain"]) >= METRICS and method["avg_gap"] >= 0 and method["wall_s"] >= 0
        if label != "retrain":  # a gap is |method mean - retrain mean|
            gap = abs(method["metrics"]["forget_i2t_r1"]["mean"]
                      - summary["methods"]["retrain"]["metrics"]["forget_i2t_r1"]["mean"])
            assert method["gap_to_retrain"]["forget_i2t_r1"] == pytest.approx(gap)
    assert set(summary["gate_cases"]) == set(EXPECTED)
    assert set(summary["gate_cases"].values()) <= VERDICTS
    for case, words in summary["gate_cases_by_seed"].items():
        assert len(words) == len(summary["seeds"]) and set(words) <= VERDICTS, case


def test_every_scenario_of_the_benchmark_is_in_the_file():
    assert set(_scenarios()) == set(SCENARIOS)
