"""The repair-objective study's pieces that need no federation: which rows it compares, the per-row cache,
and the comparison with every baseline of the same run."""

from __future__ import annotations

import types

from lethe_bench import ease_variants
from lethe_bench.ease_variants import BASELINES, VARIANTS, compare, run_rows
from lethe_bench.summary import R1


def test_the_baselines_are_the_benchmarks_methods_and_no_ease_row():
    labels = [row.label for row in BASELINES]
    assert labels == ["finetune", "pga", "federaser", "sfu", "multidelete"]
    assert VARIANTS[0].label == "ease" and VARIANTS[0].params == {}  # the default, measured beside its variants


def _summary(gaps: dict[str, float]) -> dict:
    return {"methods": {label: {"avg_gap": gap, "gap_to_retrain": dict.fromkeys(R1, gap), "speedup": 20.0,
                                "work_speedup": 10.0, "verdicts": {"pass": 3}} for label, gap in gaps.items()}}


def test_a_variant_is_marked_only_at_or_below_every_baseline():
    gaps = {row.label: 3.0 for row in BASELINES} | {"pga": 1.5}
    gaps |= {"ease": 2.0, "ease, contrastive repair": 1.5, "ease, anchor + contrastive repair": 1.4,
             "ease w/o displacement": 9.0}
    runs = [{"models": {"retrain": {"metrics": dict.fromkeys(R1, 10.0)}}
             | {label: {"metrics": dict.fromkeys(R1, 10.0 + gap + (seed - 1) * 0.5)} for label, gap in gaps.items()}}
            for seed in range(3)]
    table_rows = compare("s", _summary(gaps), runs)
    rows = {r[1]: r[-1] for r in table_rows}
    assert {r[1]: r[-2] for r in table_rows} == {"ease": "-", "ease, contrastive repair": "3 of 3",
                                                 "ease, anchor + contrastive repair": "3 of 3",
                                                 "ease w/o displacement": "0 of 3"}
    assert rows == {"ease": "no (pga 1.50, pass 3)", "ease, contrastive repair": "yes (pga 1.50, pass 3)",
                    "ease, anchor + contrastive repair": "yes (pga 1.50, pass 3)",
                    "ease w/o displacement": "no (pga 1.50, pass 3)"}


def test_each_row_is_cached_and_only_missing_rows_run(tmp_path, monkeypatch):
    original = tmp_path / "seed0" / "original"
    original.mkdir(parents=True)
    refs = types.SimpleNamespace(original=original, retrain=tmp_path / "seed0" / "retrain", target=None,
                                 retrain_seconds=lambda: 100.0)
    ran = []
    metrics = dict.fromkeys(R1, 1.0)
    monkeypatch.setattr(ease_variants, "ensure_references", lambda root, scenario, seed, log: refs)
    monkeypatch.setattr(ease_variants, "UnlearningContext", types.SimpleNamespace(load=lambda *a, **k: None))
    bench = types.SimpleNamespace(splits=types.SimpleNamespace(members=[1, 2], nonmembers=[3]), parent=None,
                                  verify=lambda bundle: None)
    monkeypatch.setattr(ease_variants, "Bench", types.SimpleNamespace(build=lambda *a, **k: bench))
    monkeypatch.setattr(ease_variants, "load_version", lambda path: (None, None))
    monkeypatch.setattr(ease_variants, "figures_metrics", lambda parent: metrics)
    monkeypatch.setattr(ease_variants, "report_metrics", lambda report: metrics)
    monkeypatch.setattr(ease_variants, "with_retrain_cost", lambda result, refs: result)

    def fake_row(bench, row):
        ran.append(row.label)
        return {"metrics": metrics, "wall_s": 1.0, "_outcome": None}

    monkeypatch.setattr(ease_variants, "run_row", fake_row)
    first = run_rows(tmp_path, "exclusive", 0, VARIANTS[:2], log=lambda _: None)
    again = run_rows(tmp_path, "exclusive", 0, VARIANTS, log=lambda _: None)
    assert ran == [row.label for row in VARIANTS]
    assert set(first["models"]) == {"original", "retrain", *(r.label for r in VARIANTS[:2])}
    assert set(again["models"]) == {"original", "retrain", *(r.label for r in VARIANTS)}
    assert run_rows(tmp_path, "exclusive", 0, VARIANTS, log=lambda _: None) == again and len(ran) == len(VARIANTS)
