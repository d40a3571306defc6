"""One scenario, one seed: the references, every method row, the production-gate cases, reactivation.

The result is JSON-ready and cached beside the references (``results-<rows key>.json``): a rerun with the
same scenario, seed, rows and code version of the rows costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from ease_engine.atomic import write_json
from ease_engine.erasure import repair_record
from ease_engine.federation.data_cache import FederationDataCache
from ease_engine.models.version_io import load_version
from ease_engine.unlearning import METHODS, UnlearningContext
from ease_engine.verification.report import VerificationReport
from lethe_bench.measure import Bench, figures_metrics, report_metrics
from lethe_bench.reactivation import continue_training
from lethe_bench.references import References, ensure_references
from lethe_bench.rows import GATE_CASES, Row, rows_for
from lethe_bench.scenarios import Scenario

RESULTS_VERSION = 7  # bump when what a row measures or how it is verified changes (2: the residual gate is
# one-sided; 3: a stand-in level for the concept probe, never published; 4: the probe ranks the word among
# untrained words; 5: samples-scope EASE excises the client's exclusive contribution; 6: the probe gate compares
# the count of words beaten, so a word at exactly the allowed count passes; 7: EASE's forget-gradient guard is
# a sketch of the per-pair gradients over the blocks the displacement moves)


def verdict_word(report: VerificationReport) -> str:
    return {"passed": "pass", "failed": "fail"}.get(str(report.verdict), str(report.verdict))


def run_row(bench: Bench, row: Row) -> dict:
    spec = METHODS[row.method]
    began = time.perf_counter()
    outcome = spec.unlearn(bench.context, bench.target, spec.params.model_validate(row.params))
    wall = time.perf_counter() - began
    report = bench.verify(outcome.bundle)
    details = outcome.details or {}
    return {
        "metrics": report_metrics(report),
        "wall_s": outcome.wall_seconds or wall,
        "cost": asdict(outcome.cost),
        "verdict": verdict_word(report),
        "failed_gates": [g.name for g in report.failed()],
        "reasons": report.reasons,
        "angles": {k: v for k, v in (details.get("angles") or {}).items() if k != "principal_angles_deg"},
        "principal_angles_deg": (details.get("angles") or {}).get("principal_angles_deg"),
        # EASE: how its repair stopped and why, the steps it took and its measures (the manifest's record)
        "repair_stop": repair_record(details).get("repair_stop"),
        "_outcome": outcome,
    }


def reactivation(bench: Bench, retrain_bundle, ease_outcome, rounds: int, every: int, reinjected: int) -> dict:
    curves = {}
    for label, bundle, lock in [("retrain", retrain_bundle, None), ("ease + lock", ease_outcome.bundle,
                                                                     ease_outcome.lock),
                                ("ease, no lock", ease_outcome.bundle, None)]:
        curves[label] = continue_training(bench, bundle, rounds, lock=lock, reinjected=reinjected, every=every)
    return curves


def row_key(row: Row) -> str:
    """A row's cache key: the results format and the method's parameters as resolved (defaults included), so a
    change of a default reruns the rows it concerns."""
    resolved = METHODS[row.method].params.model_validate(row.params).model_dump(mode="json")
    return hashlib.sha256(json.dumps([RESULTS_VERSION, row.label, row.method, resolved], sort_keys=True)
                          .encode()).hexdigest()[:10]


def results_path(refs: References, scope: str, reactivation_rounds: int, reinjected: int) -> Path:
    """Where a seed's rows are cached, beside its references: keyed by every row's and gate case's ``row_key``,
    the gate cases' names and the reactivation run."""
    rows = [*rows_for(scope), *(row for row in GATE_CASES.values() if row is not None)]
    key = hashlib.sha256(json.dumps([[row_key(r) for r in rows], sorted(GATE_CASES), reactivation_rounds,
                                     reinjected]).encode()).hexdigest()[:10]
    return refs.original.parent / f"results-{key}.json"


def references_head(bench: Bench, refs: References, scenario: Scenario, seed: int, retrain_bundle=None) -> dict:
    """A seed's result before any row: the scenario, the split sizes, the original and the retrain reference
    (verified as a candidate: its figures, verdict and gate case)."""
    retrain_report = bench.verify(retrain_bundle if retrain_bundle is not None else load_version(refs.retrain)[0])
    return {
        "scenario": scenario.name, "seed": seed, "scope": scenario.scope, "client": scenario.client,
        "n_forget": len(bench.splits.members), "n_nonmembers": len(bench.splits.nonmembers),
        "models": {
            "original": {"metrics": figures_metrics(bench.parent), "wall_s": 0.0},
            "retrain": {"metrics": report_metrics(retrain_report), "wall_s": refs.retrain_seconds(),
                        "verdict": verdict_word(retrain_report),
                        "failed_gates": [g.name for g in retrain_report.failed()]},
        },
        "gate_cases": {"retrain": verdict_word(retrain_report)},
    }


def run_seed(scenario: Scenario, seed: int, root: Path, quick: bool = False, reactivation_rounds: int = 0,
             reinjected: int = 0, log=print) -> dict:
    refs = ensure_references(root, scenario, seed, quick, log)
    rows = rows_for(scenario.scope)
    cached = results_path(refs, scenario.scope, reactivation_rounds, reinjected)
    if cached.is_file():
        return with_retrain_cost(json.loads(cached.read_text()), refs)
    cache = FederationDataCache(1)
    context = UnlearningContext.load(refs.original, data_cache=cache)
    bench = Bench.build(context, refs.target, concept=scenario.concept, cache=cache)
    retrain_bundle = load_version(refs.retrain)[0]
    result = references_head(bench, refs, scenario, seed, retrain_bundle)
    outcomes = {}
    for row in rows:
        row_result = run_row(bench, row)
        outcomes[row.label] = row_result.pop("_outcome")
        result["models"][row.label] = row_result
        log(f"{scenario.name} seed {seed} {row.label}: {row_result['wall_s']:.1f} s, verdict {row_result['verdict']}, "
            f"forget R@1 {row_result['metrics']['forget_i2t_r1']:.1f}/{row_result['metrics']['forget_t2i_r1']:.1f}")
    for case, row in GATE_CASES.items():
        if row is not None:
            case_result = run_row(bench, row)
            case_result.pop("_outcome")
            result["gate_cases"][case] = case_result["verdict"]
            result[f"gate_case_{case}"] = {k: case_result[k] for k in ("metrics", "failed_gates", "reasons")}
        elif case in result["models"]:
            result["gate_cases"][case] = result["models"][case]["verdict"]
    if reactivation_rounds and "ease" in outcomes:
        every = max(1, reactivation_rounds // 4)
        result["reactivation"] = reactivation(bench, retrain_bundle, outcomes["ease"], reactivation_rounds, every,
                                              reinjected)
    write_json(cached, result)
    return with_retrain_cost(result, refs)


def with_retrain_cost(result: dict, refs: References) -> dict:
    """The retrain's cost in the unit every method's ``cost`` counts (pairs processed), read from its history:
    a speed-up in work done, which, unlike wall time, does not depend on what else the machine was running."""
    result["models"]["retrain"]["cost"] = {"client_samples": refs.retrain_pairs_processed(), "server_samples": 0}
    return result
