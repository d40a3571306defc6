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


def test_the_per_seed_gap_does_not_let_one_seeds_overshoot_cancel_anothers_shortfall():
    # ease 5 above its retrain on seed 0 and 5 below on seed 1: the seed means coincide, the seeds do not
    runs = [_run(0, 10.0, 15.0), _run(1, 20.0, 15.0)]
    ease = summarise_scenario(runs)["methods"]["ease"]
    assert ease["avg_gap"] == pytest.approx(0.0)  # the Avg. Gap of the means sees nothing
    assert ease["per_seed_gap"]["mean"] == pytest.approx(5.0 * 2 / 6) and ease["per_seed_gap"]["std"] == 0.0
    assert summarise_scenario(runs)["methods"]["retrain"]["per_seed_gap"] is None
    faithful = summarise_scenario([_run(0, 10.0, 10.0), _run(1, 20.0, 20.0)])["methods"]["ease"]
    assert faithful["per_seed_gap"]["mean"] == 0.0  # the good case: at each seed's retrain


def test_the_bars_compare_per_seed_gaps_with_the_best_baseline_and_say_when_rows_predate_them():
    from lethe_bench.unlearning import bars

    summary = summarise_scenario([_run(0, 10.0, 15.0), _run(1, 20.0, 15.0)])
    assert "| 1.67 / 7.67 (finetune) |" in bars({"exclusive": summary})  # finetune: (28 + 18) / 2 x 2 / 6
    for method in summary["methods"].values():
        method.pop("per_seed_gap")  # a scenario written before the figure was recorded
    assert bars({"exclusive": summary}).splitlines()[2].endswith("| - |")


def test_tables_render_every_method_and_case():
    summary = summarise_scenario([_run(0, 10.0, 11.0), _run(1, 12.0, 12.0)])
    text = scenario_table("exclusive", summary)
    assert "| ease |" in text and "± " in text and "25x" in text
    gaps = gap_table({"exclusive": summary})
    assert "**0.17**" in gaps and "| finetune | 9.00 |" in gaps  # ease: |11.5 - 11| x 2 / 6, the lowest: bold
    assert "| over_ascent | fail | fail (fail/fail) |" in gate_case_table({"exclusive": summary})


def test_a_partial_run_replaces_its_scenarios_and_keeps_the_others(tmp_path):
    import json

    from lethe_bench.unlearning import docs_section, load_results, merge_results

    old = summarise_scenario([_run(0, 10.0, 11.0), _run(1, 12.0, 12.0)])
    path = tmp_path / "unlearning.json"
    path.write_text(json.dumps({"scenarios": {"samples": old, "exclusive": old, "retired": old}}))
    new = summarise_scenario([_run(0, 20.0, 21.0), _run(1, 22.0, 22.0)])
    new["measured"] = {"date": "2026-12-03", "machine": "x86_64", "command": "lethe bench --scenarios samples"}
    merged = merge_results(load_results(path), {"samples": new, "dirichlet": new})
    assert list(merged["scenarios"]) == ["exclusive", "dirichlet", "samples"]  # SCENARIOS' order, "retired" gone
    assert merged["scenarios"]["exclusive"] == old  # not re-measured: kept as it was
    assert merged["scenarios"]["samples"]["methods"]["ease"]["metrics"]["forget_i2t_r1"]["mean"] == 21.5
    text = docs_section(merged["scenarios"])
    assert "`lethe bench --scenarios samples` (2026-12-03, x86_64)" in text
    assert "exclusive: `lethe bench --scenarios exclusive --seeds 0 1`, written by an earlier version" in text
    assert text.count("#### ") == 3
    assert merge_results(load_results(tmp_path / "absent.json"), {"samples": new})["scenarios"] == {"samples": new}


def test_a_run_over_fewer_seeds_does_not_replace_a_fuller_result():
    from lethe_bench.unlearning import merge_results

    three = summarise_scenario([_run(0, 10.0, 11.0), _run(1, 12.0, 12.0), _run(2, 14.0, 13.0)])
    one = summarise_scenario([_run(1, 30.0, 31.0)])
    said = []
    merged = merge_results({"exclusive": three}, {"exclusive": one}, log=said.append)
    assert merged["scenarios"]["exclusive"] == three and "seeds [0, 2]" in said[0]
    assert merge_results({"exclusive": one}, {"exclusive": three})["scenarios"]["exclusive"] == three


def _fake_bench_runs(monkeypatch) -> list[tuple[str, int]]:
    """``lethe bench`` without training: each scenario-seed run returns ``_run``'s figures; returns the
    (scenario, seed) pairs run, in order."""
    from lethe_bench import unlearning

    ran = []

    def fake_run_seed(scenario, seed, root, quick, rounds, reinjected, log):
        ran.append((scenario.name, seed))
        run = _run(seed, 10.0 + seed, 11.0 + seed)
        run["scope"] = scenario.scope
        return run

    monkeypatch.setattr(unlearning, "run_seed", fake_run_seed)
    return ran


def test_an_unreadable_results_file_stops_the_run_before_it_measures(tmp_path):
    from lethe_bench.unlearning import main

    bad = tmp_path / "unlearning.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="not a results file"):
        main(["--scenarios", "samples", "--seeds", "0", "--json", str(bad), "--root", str(tmp_path / "runs")])


def test_main_merges_two_invocations_into_one_file_and_section(tmp_path, monkeypatch):
    import json

    from lethe_bench import unlearning

    _fake_bench_runs(monkeypatch)
    out, docs = tmp_path / "unlearning.json", tmp_path / "benchmarks.md"
    common = ["--seeds", "0", "1", "2", "--json", str(out), "--docs", str(docs), "--root", str(tmp_path / "runs")]
    unlearning.main(["--scenarios", "exclusive", *common])
    unlearning.main(["--scenarios", "samples", *common])
    scenarios = json.loads(out.read_text())["scenarios"]
    assert list(scenarios) == ["exclusive", "samples"]
    assert scenarios["samples"]["measured"]["command"] == "lethe bench --scenarios samples --seeds 0 1 2"
    text = docs.read_text()
    assert text.count("<!-- unlearning:begin -->") == 1 and "#### exclusive" in text and "#### samples" in text
    assert "† in samples scope" in text  # finetune is no negative control there, and the table says so


def test_without_seeds_each_scenario_runs_its_own(tmp_path, monkeypatch):
    """real-images runs six seeds by default (its retrain spreads by more than the bars), the others three; the
    recorded command names the seeds run, so it reproduces the entry; --seeds overrides every scenario's."""
    import json

    from lethe_bench import unlearning
    from lethe_bench.scenarios import SCENARIOS

    ran = _fake_bench_runs(monkeypatch)
    assert SCENARIOS["real-images"].seeds == (0, 1, 2, 3, 4, 5) and SCENARIOS["exclusive"].seeds == (0, 1, 2)
    out, docs = tmp_path / "unlearning.json", tmp_path / "benchmarks.md"
    common = ["--json", str(out), "--docs", str(docs), "--root", str(tmp_path / "runs")]
    unlearning.main(["--scenarios", "real-images", "exclusive", *common])
    assert ran == [("real-images", s) for s in range(6)] + [("exclusive", s) for s in range(3)]
    scenarios = json.loads(out.read_text())["scenarios"]
    assert scenarios["real-images"]["seeds"] == [0, 1, 2, 3, 4, 5]
    assert scenarios["real-images"]["measured"]["command"] == "lethe bench --scenarios real-images --seeds 0 1 2 3 4 5"
    assert scenarios["exclusive"]["measured"]["command"] == "lethe bench --scenarios exclusive --seeds 0 1 2"
    ran.clear()
    unlearning.main(["--scenarios", "real-images", "--seeds", "7", *common])
    assert ran == [("real-images", 7)]


def test_a_scenario_on_a_pretrained_backbone_names_the_backbone_its_rows_were_measured_on(tmp_path, monkeypatch):
    """pretrained-lora's figures depend on the backbone's bytes (docs/ease.md): the record and the docs line name
    its sha256; a scenario without one names none."""
    import json

    from lethe_bench import unlearning

    _fake_bench_runs(monkeypatch)
    from lethe_bench import references

    def digest(config):  # a stand-in backbone: no weights file is read (a fresh clone has none)
        return "9566153d" + "0" * 56 if config.model.pretrained else None

    monkeypatch.setattr(unlearning, "ensure_pretrained", lambda: None)
    monkeypatch.setattr(unlearning, "backbone_digest", digest)
    monkeypatch.setattr(references, "backbone_digest", digest)  # the reference cache's keys
    out, docs = tmp_path / "unlearning.json", tmp_path / "benchmarks.md"
    unlearning.main(["--scenarios", "pretrained-lora", "exclusive", "--seeds", "0", "1", "--json", str(out),
                     "--docs", str(docs), "--root", str(tmp_path / "runs")])
    scenarios = json.loads(out.read_text())["scenarios"]
    assert scenarios["pretrained-lora"]["measured"]["backbone_sha256"] == "9566153d" + "0" * 56
    assert "backbone_sha256" not in scenarios["exclusive"]["measured"]
    lines = {line.split(":")[0]: line for line in docs.read_text().splitlines() if line.startswith("- ")}
    assert "torch threads 1, backbone sha256 9566153d)" in lines["- pretrained-lora"]
    assert "backbone" not in lines["- exclusive"]


def test_jobs_run_each_scenario_seed_in_its_own_process_from_the_cache(tmp_path):
    """``--jobs 2``: the scenario-seed runs go to spawned processes (no monkeypatch reaches them, so the cache
    is filled as a finished run leaves it: references trained, rows written) and come back in order."""
    import json

    from ease_engine.atomic import write_json
    from lethe_bench import unlearning
    from lethe_bench.references import config_key, ensure_references
    from lethe_bench.run_seed import results_path
    from lethe_bench.scenarios import SCENARIOS
    from lethe_format import layout

    scenario, root = SCENARIOS["exclusive"], tmp_path / "runs"
    for seed in (0, 1):
        config_dir = root / scenario.name / f"seed{seed}-{config_key(scenario.config(seed, False))}"
        for name in ("original", f"retrain-without-client{scenario.client}"):
            (config_dir / name).mkdir(parents=True)
            (config_dir / name / layout.METRICS).write_text("{}")
            (config_dir / name / "history.json").write_text(json.dumps([{"samples": 1500}, {"samples": 500}]))
        refs = ensure_references(root, scenario, seed, log=lambda _: None)  # finds them: trains nothing
        run = _run(seed, 10.0 + seed, 11.0 + seed)
        run["models"]["ease"]["cost"] = {"client_samples": 60 + 20 * seed, "server_samples": 20}
        write_json(results_path(refs, scenario.scope, 0, 0), run)

    out, docs = tmp_path / "unlearning.json", tmp_path / "benchmarks.md"
    unlearning.main(["--scenarios", "exclusive", "--seeds", "0", "1", "--jobs", "2", "--root", str(root),
                     "--json", str(out), "--docs", str(docs)])
    summary = json.loads(out.read_text())["scenarios"]["exclusive"]
    assert summary["seeds"] == [0, 1]
    assert summary["methods"]["ease"]["metrics"]["forget_i2t_r1"]["mean"] == pytest.approx(11.5)
    assert summary["measured"]["command"] == "lethe bench --jobs 2 --scenarios exclusive --seeds 0 1"
    # work done: the retrain's 2,000 pairs (its history) over EASE's mean 90 (clients and server)
    assert summary["methods"]["ease"]["work_speedup"] == pytest.approx(2000 / 90)
    assert summary["methods"]["finetune"]["work_speedup"] is None  # no cost recorded: no figure
    invocation = summary["measured"]["invocation"]
    assert invocation["jobs"] == 2 and invocation["units"] == 2 and invocation["wall_s"] > 0
    assert invocation["references_cached"] == invocation["rows_cached"] == 2
    assert "2 of 2 scenario-seeds' references and 2 of their rows cached" in docs.read_text()
    # a second invocation that finds every row cached measured nothing: it keeps the record of when it was measured
    unlearning.main(["--scenarios", "exclusive", "--seeds", "0", "1", "--root", str(root), "--json", str(out),
                     "--docs", str(docs)])
    assert json.loads(out.read_text())["scenarios"]["exclusive"]["measured"] == summary["measured"]
    with pytest.raises(SystemExit):
        unlearning.main(["--jobs", "0"])


def test_the_rows_time_adds_each_timed_invocation_once_and_only_when_every_scenario_was_timed():
    from lethe_bench.unlearning import rows_time_line

    def measured(scenarios, wall_s, references_cached=3, rows_cached=0):
        return {"measured": {"invocation": {"scenarios": scenarios, "jobs": 2, "wall_s": wall_s, "units": 3,
                                            "references_cached": references_cached, "rows_cached": rows_cached}}}

    summaries = {"exclusive": measured(["exclusive", "dirichlet"], 600.0),
                 "dirichlet": measured(["exclusive", "dirichlet"], 600.0),
                 "samples": measured(["samples"], 300.0)}
    line = rows_time_line(summaries)
    assert "all 3 scenarios" in line and "10.0 + 5.0 = 15.0 min wall in 2 invocation(s)" in line
    assert rows_time_line({**summaries, "samples": measured(["samples"], 300.0, references_cached=2)}) == ""
    assert rows_time_line({**summaries, "samples": measured(["samples"], 300.0, rows_cached=1)}) == ""
    assert rows_time_line({**summaries, "samples": {"measured": {"command": "earlier"}}}) == ""
    rerun = {**summaries, "dirichlet": measured(["dirichlet"], 120.0)}  # its rows are also in the first invocation
    assert rows_time_line(rerun) == ""
