"""Mean and spread over seeds, gaps to the retrain mean judged against the retrain-to-retrain spread, the
production-gate outcomes, and the tables of docs/benchmarks.md."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lethe_bench.markdown import table
from lethe_bench.rows import EXPECTED, NOT_A_CONTROL

R1 = ("forget_i2t_r1", "forget_t2i_r1", "retain_i2t_r1", "retain_t2i_r1", "test_i2t_r1", "test_t2i_r1")
OTHER = ("probe", "mia_similarity_auc", "ledger_residual", "retained_heldout_i2t_r1", "retained_heldout_t2i_r1")
SPREAD_Z = 2.0  # a gap is "within the spread" when |gap| <= 2 x the retrain-to-retrain standard deviation


def avg_gap(metrics: dict[str, float], retrain: dict[str, float]) -> float:
    """One run's Avg. Gap to one retrain: the mean absolute difference over the six Recall@1 figures."""
    return sum(abs(metrics[m] - retrain[m]) for m in R1) / len(R1)


def verdict_counts(verdicts: dict[str, int]) -> str:
    """How many seeds got each production verdict, e.g. "fail 1, pass 2" ("-" where no row was verified)."""
    return ", ".join(f"{word} {n}" for word, n in sorted(verdicts.items()) if word != "-") or "-"


def stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def seed_gaps(runs: list[dict], label: str) -> list[float]:
    """Per seed, the Avg. Gap of ``label`` to that seed's own retrain."""
    return [avg_gap(run["models"][label]["metrics"], run["models"]["retrain"]["metrics"]) for run in runs]


def per_seed_gap(runs: list[dict], label: str) -> dict | None:
    """:func:`stats` of :func:`seed_gaps`. The Avg. Gap of the seed means lets one seed's overshoot cancel another's
    shortfall; this does not (None for the retrain itself, or where a seed lacks the row)."""
    if label == "retrain" or any(label not in run["models"] for run in runs):
        return None
    return stats(seed_gaps(runs, label))


def _metric_stats(runs: list[dict], label: str) -> dict[str, dict]:
    present = [run["models"][label]["metrics"] for run in runs if label in run["models"]]
    names = [m for m in (*R1, *OTHER) if all(m in p for p in present)]
    return {m: stats([p[m] for p in present]) for m in names}


def summarise_scenario(runs: list[dict]) -> dict:
    labels = sorted(runs[0]["models"])  # one order, whether the rows were just run or read from the cache
    retrain = _metric_stats(runs, "retrain")
    out: dict = {"seeds": [run["seed"] for run in runs], "scope": runs[0]["scope"],
                 "n_forget": runs[0]["n_forget"], "n_nonmembers": runs[0]["n_nonmembers"],
                 "retrain_spread": {m: s["std"] for m, s in retrain.items()}, "methods": {}}
    retrain_wall = float(np.mean([run["models"]["retrain"]["wall_s"] for run in runs]))
    retrain_pairs = _pairs_processed(runs, "retrain")
    for label in labels:
        metrics = _metric_stats(runs, label)
        gaps = {m: abs(metrics[m]["mean"] - retrain[m]["mean"]) for m in metrics if m in retrain}
        wall = float(np.mean([run["models"][label]["wall_s"] for run in runs]))
        verdicts = Counter(run["models"][label].get("verdict", "-") for run in runs)
        out["methods"][label] = {
            "metrics": metrics,
            "gap_to_retrain": gaps,
            "within_spread": {m: gaps[m] <= SPREAD_Z * retrain[m]["std"] for m in gaps},
            "avg_gap": float(np.mean([gaps[m] for m in R1])),
            "per_seed_gap": per_seed_gap(runs, label),
            "wall_s": wall,
            "speedup": retrain_wall / wall if wall > 0 and label != "retrain" else None,
            "pairs_processed": (pairs := _pairs_processed(runs, label)),
            "work_speedup": retrain_pairs / pairs if pairs and retrain_pairs and label != "retrain" else None,
            "verdicts": dict(verdicts),
        }
    cases = {case: [run["gate_cases"].get(case, "-") for run in runs] for case in EXPECTED}
    out["gate_cases_by_seed"] = cases
    out["gate_cases"] = {case: Counter(words).most_common(1)[0][0] for case, words in cases.items()}
    curves = [run["reactivation"] for run in runs if "reactivation" in run]
    if curves:
        out["reactivation"] = summarise_curves(curves)
    return out


CURVE_METRICS = ("forget_i2t_r1", "forget_t2i_r1", "probe", "ledger_residual")
LOCK_COUNTS = ("lock_interventions", "lock_failed_closed")


def summarise_curves(seeds: list[dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """Reactivation curves over seeds (each: run label -> points, one per measured round, the same rounds in
    every seed): per run and point, :func:`stats` of each metric and the mean of each lock count, where every
    seed has it."""
    def point(label: str, i: int) -> dict:
        points = [seed[label][i] for seed in seeds]
        return {"round": points[0]["round"],
                **{m: stats([p[m] for p in points]) for m in CURVE_METRICS if all(m in p for p in points)},
                **{c: float(np.mean([p[c] for p in points])) for c in LOCK_COUNTS if all(c in p for p in points)}}

    return {label: [point(label, i) for i in range(len(seeds[0][label]))] for label in seeds[0]}


def _pairs_processed(runs: list[dict], label: str) -> float | None:
    """Mean pairs processed (forward and backward, clients and server) by ``label``, if every run recorded it."""
    costs = [run["models"][label].get("cost") for run in runs]
    if any(c is None for c in costs):
        return None
    return float(np.mean([c.get("client_samples", 0) + c.get("server_samples", 0) for c in costs]))


def _cell(s: dict | None, digits: int = 1) -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def scenario_table(name: str, summary: dict) -> str:
    headers = ["method", "forget i2t", "forget t2i", "retain i2t", "retain t2i", "test i2t", "test t2i", "probe",
               "MIA AUC", "residual", "verdicts", "Avg. Gap", "per seed", "wall s", "speed-up"]
    rows = []
    for label, m in summary["methods"].items():
        metrics = m["metrics"]
        verdicts = verdict_counts(m["verdicts"])
        rows.append([label, *(_cell(metrics.get(k)) for k in R1), _cell(metrics.get("probe")),
                     _cell(metrics.get("mia_similarity_auc"), 3), _cell(metrics.get("ledger_residual"), 2), verdicts,
                     "-" if label == "retrain" else f"{m['avg_gap']:.2f}", _cell(m.get("per_seed_gap"), 2),
                     f"{m['wall_s']:.1f}", "-" if m["speedup"] is None else f"{m['speedup']:.0f}x"])
    spread = ", ".join(f"{k} {v:.1f}" for k, v in summary["retrain_spread"].items() if k in R1)
    return (f"#### {name}\n\nSeeds {summary['seeds']}; {summary['n_forget']} erased pairs, "
            f"{summary['n_nonmembers']} matched non-members (audit split). Mean ± standard deviation over seeds; "
            f"R@1 in percent on galleries of at most 500 pairs. Avg. Gap: to the retrain's means; per seed: each "
            f"seed's Avg. Gap to its own retrain, mean ± std ('-' where written before it was recorded). "
            f"Retrain-to-retrain spread (std, R@1 points): {spread}.\n\n" + table(headers, rows) + "\n")


def gap_table(summaries: dict[str, dict]) -> str:
    """Avg. Gap to the retrain mean per method and scenario; the lowest non-retrain method in bold."""
    labels = [label for label in next(iter(summaries.values()))["methods"] if label not in ("original", "retrain")]
    rows = []
    for label in labels:
        cells = []
        for summary in summaries.values():
            m = summary["methods"].get(label)
            if m is None:
                cells.append("-")
                continue
            best = min(v["avg_gap"] for k, v in summary["methods"].items() if k not in ("original", "retrain"))
            cells.append(f"**{m['avg_gap']:.2f}**" if m["avg_gap"] == best else f"{m['avg_gap']:.2f}")
        rows.append([label, *cells])
    return table(["method", *summaries], rows)


def gate_case_table(summaries: dict[str, dict]) -> str:
    rows, notes = [], {}
    for case, expected in EXPECTED.items():
        cells = []
        for summary in summaries.values():
            words = summary["gate_cases_by_seed"][case]
            cell = f"{summary['gate_cases'][case]} ({'/'.join(words)})"
            reason = NOT_A_CONTROL.get((summary["scope"], case))
            if reason:
                mark = notes.setdefault(reason, "†" * (len(notes) + 1))
                cell += f" {mark} (no control here)"
            cells.append(cell)
        rows.append([case, expected, *cells])
    footnotes = "".join(f"\n\n{mark} {reason}" for reason, mark in notes.items())
    return table(["case", "expected", *summaries], rows) + footnotes
