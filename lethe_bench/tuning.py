"""Equal tuning: every method gets the same budget (four settings) on one calibration scenario and seed.

    python -m lethe_bench.tuning [--scenario exclusive --seed 0]

Each setting is run once and judged by its Avg. Gap to the retrain reference (the six Recall@1 figures);
the winner of each method becomes its default in code (frozen), and the benchmark then evaluates those
defaults on every scenario and seed. Writes docs/results/tuning.json and the ``tuning`` section of
docs/benchmarks.md (every setting with its figures, so the choice can be checked).
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

from ease_engine.atomic import write_json
from ease_engine.federation.data_cache import FederationDataCache
from ease_engine.models.version_io import load_version
from ease_engine.unlearning import METHODS, UnlearningContext
from lethe_bench.markdown import replace_section, table
from lethe_bench.measure import Bench, report_metrics
from lethe_bench.references import ensure_references
from lethe_bench.run_seed import verdict_word
from lethe_bench.scenarios import SCENARIOS
from lethe_bench.summary import R1

GRIDS: dict[str, list[dict]] = {
    "finetune": [{"rounds": 1, "lr": 5e-4}, {"rounds": 3, "lr": 5e-4}, {"rounds": 3, "lr": 1.5e-3},
                 {"rounds": 6, "lr": 1.5e-3}],
    "pga": [{"radius_fraction": 1 / 3, "steps": 30}, {"radius_fraction": 2 / 3, "steps": 30},
            {"radius_fraction": 1 / 3, "steps": 60}, {"radius_fraction": 2 / 3, "steps": 60}],
    "federaser": [{"calibration_ratio": 0.25}, {"calibration_ratio": 0.5}, {"calibration_ratio": 1.0},
                  {"calibration_ratio": 0.5, "span": "scaled"}],
    "sfu": [{"steps": 10, "lr": 0.01}, {"steps": 30, "lr": 0.01}, {"steps": 30, "lr": 0.03},
            {"steps": 60, "lr": 0.01}],
    "multidelete": [{"steps": 60, "lr": 1e-4}, {"steps": 120, "lr": 1e-4}, {"steps": 60, "lr": 3e-4},
                    {"steps": 120, "lr": 3e-4}],
    "ease": [{"steps": 30}, {"steps": 60}, {"steps": 150}, {"steps": 60, "lr": 5e-3}],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="exclusive", choices=list(SCENARIOS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("runs/bench"))
    parser.add_argument("--methods", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--json", type=Path, default=Path("docs/results/tuning.json"))
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    refs = ensure_references(args.root, scenario, args.seed, log=print)
    cache = FederationDataCache(1)
    context = UnlearningContext.load(refs.original, data_cache=cache)
    bench = Bench.build(context, refs.target, concept=scenario.concept, cache=cache)
    retrain = report_metrics(bench.verify(load_version(refs.retrain)[0]))
    results: dict = {"scenario": args.scenario, "seed": args.seed, "budget": "4 settings per method, one run each",
                     "objective": "Avg. Gap to the retrain reference over the six Recall@1 figures", "methods": {}}
    for name in args.methods:
        runs = []
        for params in GRIDS[name]:
            spec = METHODS[name]
            began = time.perf_counter()
            outcome = spec.unlearn(context, refs.target, spec.params.model_validate(params))
            report = bench.verify(outcome.bundle)
            metrics = report_metrics(report)
            gap = sum(abs(metrics[m] - retrain[m]) for m in R1) / len(R1)
            runs.append({"params": params, "avg_gap": gap, "verdict": verdict_word(report), "metrics": metrics,
                         "wall_s": time.perf_counter() - began})
            print(f"{name} {params}: Avg. Gap {gap:.2f}, verdict {runs[-1]['verdict']}", flush=True)
        best = min(runs, key=lambda r: r["avg_gap"])
        results["methods"][name] = {"runs": runs, "chosen": best["params"]}
    write_json(args.json, results)
    rows = [[name, str(run["params"]), f"{run['avg_gap']:.2f}", run["verdict"], f"{run['wall_s']:.0f}",
             "chosen" if run["params"] == m["chosen"] else ""]
            for name, m in results["methods"].items() for run in m["runs"]]
    text = (f"## Equal tuning (issue 9)\n\nCommand: `python -m lethe_bench.tuning --scenario {args.scenario} --seed "
            f"{args.seed}` ({date.today().isoformat()}); budget: {results['budget']}; objective: "
            f"{results['objective']}. The chosen settings are the methods' defaults in code; the unlearning "
            f"benchmark below evaluates those (seed {args.seed} of {args.scenario} is in-sample for every method "
            f"alike).\n\n" + table(["method", "setting", "Avg. Gap", "verdict", "wall s", ""], rows) + "\n")
    replace_section(args.docs, "tuning", text)


if __name__ == "__main__":
    main()
