"""The repair-objective study's pieces that need no federation: which rows it compares, the per-row cache,
and the comparison with every baseline of the same run."""

from __future__ import annotations

import json
import types
from pathlib import Path

from lethe_bench import ease_variants
from lethe_bench.ease_variants import BASELINES, VARIANTS, compare, run_rows
from lethe_bench.rows import EXPECTED, Row
from lethe_bench.run_seed import row_key
from lethe_bench.scenarios import SCENARIOS
from lethe_bench.summary import R1
from lethe_format import layout


def test_the_baselines_are_the_benchmarks_methods_and_no_ease_row():
    labels = [row.label for row in BASELINES]
    assert labels == ["finetune", "pga", "federaser", "sfu", "multidelete"]
    assert VARIANTS[0].label == "ease" and VARIANTS[0].params == {}  # the default, measured beside its variants


def test_a_rows_key_is_its_resolved_parameters():
    """A default written out is the same row; another value is another row."""
    assert row_key(Row("ease", "ease")) == row_key(Row("ease", "ease", {"steps": 30, "retain_loss": "anchor"}))
    assert row_key(Row("ease", "ease")) != row_key(Row("ease", "ease", {"steps": 60}))


def test_the_benchmarks_cache_follows_the_resolved_rows(monkeypatch, tmp_path):
    """The benchmark's per-seed results file is keyed the same way: a default written out keeps the file, a
    changed value of any row or gate case gives another."""
    from lethe_bench import run_seed
    from lethe_bench.rows import GATE_CASES, rows_for

    refs = types.SimpleNamespace(original=tmp_path / "original")
    path = run_seed.results_path(refs, "client", 0, 0)
    assert path.parent == tmp_path and path == run_seed.results_path(refs, "client", 0, 0)
    from ease_engine.unlearning import METHODS

    written_out = [Row(r.label, r.method, METHODS[r.method].params.model_validate(r.params).model_dump())
                   for r in rows_for("client")]
    monkeypatch.setattr(run_seed, "rows_for", lambda scope: written_out)
    assert run_seed.results_path(refs, "client", 0, 0) == path
    monkeypatch.setattr(run_seed, "rows_for", lambda scope: [*written_out[:-1], Row(written_out[-1].label,
                                                                                    "ease", {"steps": 31})])
    assert run_seed.results_path(refs, "client", 0, 0) != path
    monkeypatch.undo()
    monkeypatch.setitem(GATE_CASES, "noop", Row("noop", "perturb"))
    assert run_seed.results_path(refs, "client", 0, 0) != path
    assert run_seed.results_path(refs, "client", 10, 0) != run_seed.results_path(refs, "client", 0, 0)


def test_verdict_counts_are_written_one_way():
    from lethe_bench.summary import verdict_counts

    assert verdict_counts({"pass": 2, "fail": 1, "-": 3}) == "fail 1, pass 2"
    assert verdict_counts({"-": 3}) == "-"


def _summary(gaps: dict[str, float], per_seed: dict[str, list[float]]) -> dict:
    return {"methods": {label: {"avg_gap": gap, "gap_to_retrain": dict.fromkeys(R1, gap), "speedup": 20.0,
                                "work_speedup": 10.0, "verdicts": {"pass": 3}} for label, gap in gaps.items()},
            "seed_avg_gaps": per_seed}


def test_a_variant_is_marked_only_at_or_below_every_baseline_and_seeds_are_counted():
    gaps = {row.label: 3.0 for row in BASELINES} | {"pga": 1.5}
    gaps |= {"ease": 2.0, "ease, contrastive repair": 1.5, "ease, anchor + contrastive repair": 1.4,
             "ease w/o displacement": 9.0}
    per_seed = {label: [gap - 0.5, gap, gap + 0.5] for label, gap in gaps.items()}
    per_seed["ease, anchor + contrastive repair"] = [1.0, 2.5, 1.0]  # closer than ease on seeds 0 and 2 only
    table_rows = compare("s", _summary(gaps, per_seed))
    assert {r[1]: r[-2] for r in table_rows} == {"ease": "-", "ease, contrastive repair": "3 of 3",
                                                 "ease, anchor + contrastive repair": "2 of 3",
                                                 "ease w/o displacement": "0 of 3"}
    assert {r[1]: r[-1] for r in table_rows} == {
        "ease": "no (pga 1.50, pass 3)", "ease, contrastive repair": "yes (pga 1.50, pass 3)",
        "ease, anchor + contrastive repair": "yes (pga 1.50, pass 3)",
        "ease w/o displacement": "no (pga 1.50, pass 3)"}


def test_each_row_is_cached_only_missing_rows_run_and_new_references_discard_the_cache(tmp_path, monkeypatch):
    seed_dir = tmp_path / "seed0"
    refs = types.SimpleNamespace(original=seed_dir / "original", retrain=seed_dir / "retrain", target=None,
                                 retrain_seconds=lambda: 100.0)
    for path in (refs.original, refs.retrain):
        path.mkdir(parents=True)
        (path / layout.METRICS).write_text('{"test": 1}')
    ran = []
    monkeypatch.setattr(ease_variants, "ensure_references", lambda root, scenario, seed, log: refs)
    monkeypatch.setattr(ease_variants, "UnlearningContext", types.SimpleNamespace(load=lambda *a, **k: None))
    monkeypatch.setattr(ease_variants, "Bench", types.SimpleNamespace(build=lambda *a, **k: None))
    monkeypatch.setattr(ease_variants, "references_head", lambda bench, refs, scenario, seed: {
        "models": {"retrain": {"metrics": dict.fromkeys(R1, 0.0)}}})
    monkeypatch.setattr(ease_variants, "with_retrain_cost", lambda result, refs: result)

    def fake_row(bench, row):
        ran.append(row.label)
        return {"metrics": dict.fromkeys(R1, float(len(row.label))), "wall_s": 1.0, "_outcome": None}

    monkeypatch.setattr(ease_variants, "run_row", fake_row)
    first = run_rows(tmp_path, SCENARIOS["exclusive"], 0, VARIANTS[:2], log=lambda _: None)
    again = run_rows(tmp_path, SCENARIOS["exclusive"], 0, VARIANTS, log=lambda _: None)
    assert ran == [row.label for row in VARIANTS]  # the first two were cached
    assert set(first["models"]) == {"retrain", *(r.label for r in VARIANTS[:2])}
    for row in VARIANTS:  # each label gets its own row's result back, not another's
        assert again["models"][row.label]["metrics"]["test_i2t_r1"] == len(row.label)
    assert run_rows(tmp_path, SCENARIOS["exclusive"], 0, VARIANTS, log=lambda _: None) == again
    assert len(ran) == len(VARIANTS)
    (refs.retrain / layout.METRICS).write_text('{"test": 2}')  # the retrain was trained again in place
    run_rows(tmp_path, SCENARIOS["exclusive"], 0, VARIANTS[:1], log=lambda _: None)
    assert ran[len(VARIANTS):] == [VARIANTS[0].label]


def test_a_pretrained_scenario_gets_one_entry_per_backbone(tmp_path, monkeypatch):
    """Results on a pretrained backbone are named by the backbone's bytes, which the study builds first; the
    command says which seed built it; a scenario without a backbone keeps its plain name."""
    from lethe_bench.pretrain import sha256

    built = []

    def fake_ensure(seed):
        built.append(seed)
        path = tmp_path / f"backbone-{seed}.safetensors"
        path.write_bytes(f"weights of seed {seed}".encode())
        return path

    monkeypatch.setattr(ease_variants, "ensure_pretrained", fake_ensure)
    scenario, key, extra, command = ease_variants.study_entry("pretrained-lora", [0, 1], backbone_seed=8)
    path = tmp_path / "backbone-8.safetensors"
    assert built == [8] and scenario.backbone == str(path)
    assert scenario.config(0).model.pretrained == str(path)
    assert key == f"pretrained-lora, backbone {sha256(path)[:8]}" and extra["backbone"] == {"seed": 8,
                                                                                          "sha256": sha256(path)}
    assert command.endswith("--scenarios pretrained-lora --seeds 0 1 --backbone-seed 8")
    _, default_key, _, default_command = ease_variants.study_entry("pretrained-lora", [0], backbone_seed=7)
    assert default_key != key and "--backbone-seed" not in default_command
    assert ease_variants.study_entry("dirichlet", [0])[1:] == ("dirichlet", {}, "python -m lethe_bench.ease_variants "
                                                                              "--scenarios dirichlet --seeds 0")
    assert built == [8, 7]


def test_the_published_backbone_recipe_is_unchanged():
    """Seed 7 is the published backbone's recipe, at the scenario's path; another seed changes every seed of
    the recipe and goes to another file."""
    from lethe_bench import pretrain

    recipe = pretrain.corpus()
    assert recipe["data"]["scenes"]["seed"] == recipe["partition"]["seed"] == recipe["model"]["init_seed"] == \
        recipe["training"]["seed"] == 7
    assert pretrain.backbone_path() == pretrain.DEFAULT_OUT != pretrain.backbone_path(8)
    other = pretrain.corpus(8)
    assert other["model"]["init_seed"] == other["training"]["seed"] == other["data"]["scenes"]["seed"] == 8


def test_ensure_builds_each_seed_at_its_own_path(tmp_path, monkeypatch):
    """Seed 7's file is the scenario's, another seed's a file of its own; a file that matches its recorded
    sha256 is not built again."""
    from lethe_bench import pretrain

    monkeypatch.setattr(pretrain, "DEFAULT_OUT", tmp_path / "backbone.safetensors")
    built = []

    def fake_build(out, show_progress=True, seed=pretrain.DEFAULT_SEED):
        built.append((out, seed))
        out.write_bytes(f"seed {seed}".encode())
        Path(f"{out}.sha256").write_text(f"{pretrain.sha256(out)}  {out.name}\n")
        return out

    monkeypatch.setattr(pretrain, "build", fake_build)
    assert pretrain.ensure() == pretrain.backbone_path() == tmp_path / "backbone.safetensors"
    assert pretrain.ensure(8) == pretrain.backbone_path(8) != pretrain.backbone_path()
    assert pretrain.ensure(8) == pretrain.backbone_path(8)  # already built: not again
    assert built == [(pretrain.backbone_path(), 7), (pretrain.backbone_path(8), 8)]


def _fake_run(seed: int, labels: list[str]) -> dict:
    metrics = {**dict.fromkeys(R1, 30.0), "probe": 10.0}
    models = {label: {"metrics": metrics, "wall_s": 1.0, "verdict": "pass"} for label in labels}
    models["retrain"] |= {"wall_s": 100.0}
    return {"seed": seed, "scope": "client", "n_forget": 10, "n_nonmembers": 10, "models": models,
            "gate_cases": dict.fromkeys(EXPECTED, "pass")}


def test_a_study_keeps_the_entries_another_study_wrote_while_it_ran(tmp_path, monkeypatch):
    """Studies of different scenarios may run at once: each writes its own entries into what the results file
    holds when it finishes, not into what it held when it started."""
    out, docs = tmp_path / "variants.json", tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    labels = ["original", "retrain", *(row.label for row in VARIANTS + BASELINES)]

    def fake_rows(root, scenario, seed, rows):
        if scenario.name == "dirichlet":  # meanwhile another study finishes and writes its entry
            ease_variants.main(["--scenarios", "exclusive", "--seeds", "0", "--json", str(out), "--docs", str(docs)])
        return _fake_run(seed, labels)

    monkeypatch.setattr(ease_variants, "run_rows", fake_rows)
    ease_variants.main(["--scenarios", "dirichlet", "--seeds", "0", "1", "--json", str(out), "--docs", str(docs)])
    scenarios = json.loads(out.read_text())["scenarios"]
    assert set(scenarios) == {"exclusive", "dirichlet"}
    assert scenarios["dirichlet"]["seeds"] == [0, 1] and scenarios["exclusive"]["seeds"] == [0]
    text = docs.read_text()
    assert "--scenarios exclusive --seeds 0" in text and "--scenarios dirichlet --seeds 0 1" in text


def test_a_check_on_other_seeds_runs_the_rows_asked_for_under_its_own_entry(tmp_path, monkeypatch):
    """``--rows`` runs those rows and the default EASE (which the others are compared with); ``--entry`` names the
    entry, so a check on held-out seeds keeps the scenario's published one; without baselines nothing is said about
    them."""
    out, docs = tmp_path / "variants.json", tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    ran = []

    def fake_rows(root, scenario, seed, rows):  # as run_rows: the references and the rows asked for
        ran.append([row.label for row in rows])
        return _fake_run(seed, ["original", "retrain", *ran[-1]])

    monkeypatch.setattr(ease_variants, "run_rows", fake_rows)
    ease_variants.main(["--scenarios", "exclusive", "--seeds", "0", "--json", str(out), "--docs", str(docs)])
    ease_variants.main(["--scenarios", "exclusive", "--seeds", "3", "4", "--rows", "ease, tuned steps only",
                        "--entry", "exclusive, held-out seeds", "--json", str(out), "--docs", str(docs)])
    assert ran[-1] == ran[-2] == ["ease", "ease, tuned steps only"]
    scenarios = json.loads(out.read_text())["scenarios"]
    assert set(scenarios) == {"exclusive", "exclusive, held-out seeds"}  # the published entry is kept
    held_out = scenarios["exclusive, held-out seeds"]
    assert held_out["seeds"] == [3, 4] and set(held_out["seed_avg_gaps"]) == {"ease", "ease, tuned steps only"}
    text = docs.read_text()
    assert "--seeds 3 4 --rows 'ease, tuned steps only' --entry 'exclusive, held-out seeds'" in text
    line = next(line for line in text.splitlines() if line.startswith("| exclusive, held-out seeds | ease, tuned"))
    assert line.endswith("| - |")  # no baseline ran: no claim about them


def test_each_seeds_verdict_metrics_and_repair_stop_are_kept(tmp_path, monkeypatch):
    """A per-seed claim (steps taken, the parent's standard error, a seed's verdict) is read off the results."""
    out, docs = tmp_path / "variants.json", tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")

    def fake_rows(root, scenario, seed, rows):
        run = _fake_run(seed, ["original", "retrain", *(row.label for row in rows)])
        run["models"]["ease"] |= {"verdict": "fail" if seed else "pass",
                                  "repair_stop": {"until": "parent_utility", "steps": 30 + 10 * seed}}
        return run

    monkeypatch.setattr(ease_variants, "run_rows", fake_rows)
    ease_variants.main(["--scenarios", "exclusive", "--seeds", "0", "2", "--rows", "pga", "--entry", "check",
                        "--json", str(out), "--docs", str(docs)])
    per_seed = json.loads(out.read_text())["scenarios"]["check"]["by_seed"]
    assert set(per_seed) == {"original", "retrain", "ease", "pga"}
    assert [s["verdict"] for s in per_seed["ease"]] == ["pass", "fail"]
    assert [s["repair_stop"]["steps"] for s in per_seed["ease"]] == [30, 50]
    assert "repair_stop" not in per_seed["pga"][0] and per_seed["retrain"][1]["metrics"]["probe"] == 10.0


def test_a_subset_of_rows_never_replaces_a_scenarios_entry(tmp_path, monkeypatch):
    import pytest

    def never(*args, **kwargs):
        raise AssertionError("rows ran before the refusal")

    monkeypatch.setattr(ease_variants, "run_rows", never)
    for extra in (["--rows", "pga"], ["--rows", "pga", "--entry", "exclusive"]):
        with pytest.raises(SystemExit) as refused:
            ease_variants.main(["--scenarios", "exclusive", "--seeds", "3", *extra, "--json", str(tmp_path / "v.json"),
                                "--docs", str(tmp_path / "b.md")])
        assert refused.value.code == 2


def test_the_earlier_variants_keep_the_tuned_steps_they_were_measured_with():
    """The default's repair_until changed; a variant published before then must not silently change with it."""
    for row in VARIANTS[2:]:
        if row.params.get("displace", True):
            assert "repair_until" in row.params, row.label
            # and so did the criterion's tolerance: a variant that may measure names the one it was measured with
            if row.params["repair_until"] != "steps":
                assert "utility_tolerance" in row.params, row.label
