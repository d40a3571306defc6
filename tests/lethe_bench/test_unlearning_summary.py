"""The benchmark's aggregation: mean and spread over seeds, gaps judged against the retrain spread, the
production-gate outcomes, and the tables (no training: constructed per-seed results)."""

import numpy as np
import pytest

from lethe_bench.summary import R1, gap_table, gate_case_table, scenario_table, summarise_scenario


def _run(seed: int, retrain_forget: float, ease_forget: float, verdict: str = "pass") -> dict:
    def metrics(forget: float) -> dict:
        return {**{m: 30.0 for m in R1}, "forget_i2t_r1": forget, "forget_t2i_r1": forget, "probe": 10.0,
                "mia_similarity_auc": 0.5, "ledger_residual": 0.1}

    return {
        "seed": seed, "scope": "client", "n_forget": 100, "n_nonmembers": 40,
        "models": {"original": {"metrics": metrics(40.0), "wall_s": 0.0},
                   "retrain": {"metrics": metrics(retrain_forget), "wall_s": 100.0, "verdict": "pass"},
                   "ease": {"metrics": metrics(ease_forget), "wall_s": 4.0, "verdict": verdict},
                   "finetune": {"metrics": metrics(38.0), "wall_s": 10.0, "verdict": "fail"}},
        "gate_cases": {"noop": "fail", "finetune": "fail", "perturb": "fail", "over_ascent": "fail",
                       "retrain": "pass", "ease": verdict},
    }


def test_means_spreads_and_gaps():
    runs = [_run(0, 10.0, 11.0), _run(1, 12.0, 12.0), _run(2, 14.0, 13.0, verdict="inconclusive")]
    summary = summarise_scenario(runs)
    retrain_std = np.std([10.0, 12.0, 14.0], ddof=1)
    assert summary["retrain_spread"]["forget_i2t_r1"] == pytest.approx(retrain_std)
    ease = summary["methods"]["ease"]
    assert ease["metrics"]["forget_i2t_r1"]["mean"] == pytest.approx(12.0)
    assert ease["gap_to_retrain"]["forget_i2t_r1"] == pytest.approx(0.0)
    assert ease["within_spread"]["forget_i2t_r1"]
    finetune = summary["methods"]["finetune"]
    assert finetune["gap_to_retrain"]["forget_i2t_r1"] == pytest.approx(26.0)
    assert not finetune["within_spread"]["forget_i2t_r1"]  # the negative case: far outside the spread
    assert finetune["avg_gap"] == pytest.approx(26.0 * 2 / 6)
    assert ease["speedup"] == pytest.approx(25.0) and summary["methods"]["retrain"]["speedup"] is None
    assert ease["verdicts"] == {"pass": 2, "inconclusive": 1}
    assert summary["gate_cases"]["ease"] == "pass" and summary["gate_cases_by_seed"]["ease"][2] == "inconclusive"


def test_tables_render_every_method_and_case():
    summary = summarise_scenario([_run(0, 10.0, 11.0), _run(1, 12.0, 12.0)])
    text = scenario_table("exclusive", summary)
    assert "| ease |" in text and "± " in text and "25x" in text
    gaps = gap_table({"exclusive": summary})
    assert "**0.17**" in gaps and "| finetune | 9.00 |" in gaps  # ease: |11.5 - 11| x 2 / 6, the lowest: bold
    assert "| over_ascent | fail | fail (fail/fail) |" in gate_case_table({"exclusive": summary})


def test_a_partial_run_replaces_its_scenarios_and_keeps_the_others(tmp_path):
    import json

    from lethe_bench.unlearning import docs_section, merge_results

    old = summarise_scenario([_run(0, 10.0, 11.0), _run(1, 12.0, 12.0)])
    path = tmp_path / "unlearning.json"
    path.write_text(json.dumps({"scenarios": {"samples": old, "exclusive": old}}))
    new = summarise_scenario([_run(0, 20.0, 21.0), _run(1, 22.0, 22.0)])
    new["measured"] = {"date": "2026-12-03", "machine": "x86_64", "command": "lethe bench --scenarios samples",
                       "minutes_this_invocation": 70.0}
    merged = merge_results(path, {"samples": new, "dirichlet": new})
    assert list(merged["scenarios"]) == ["exclusive", "dirichlet", "samples"]  # the order of SCENARIOS
    assert merged["scenarios"]["exclusive"] == old  # not re-measured: kept as it was
    assert merged["scenarios"]["samples"]["methods"]["ease"]["metrics"]["forget_i2t_r1"]["mean"] == 21.5
    text = docs_section(merged["scenarios"])
    assert "`lethe bench --scenarios samples` (2026-12-03" in text
    assert "exclusive: `lethe bench --scenarios exclusive --seeds 0 1 2`, measured by an earlier version" in text
    assert text.count("#### ") == 3
    assert merge_results(tmp_path / "absent.json", {"samples": new})["scenarios"] == {"samples": new}
