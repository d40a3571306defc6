"""Equal tuning: every method gets the same budget (four settings) on one calibration scenario and seed.

    python -m lethe_bench.tuning [--scenario exclusive --seed 0]

Each setting is run once and judged by its Avg. Gap to the retrain reference (the six Recall@1 figures);
the winner of each method becomes its default in code (frozen), and the benchmark then evaluates those
defaults on every scenario and seed. Writes docs/results/tuning.json and the ``tuning`` section of
docs/benchmarks.md (every setting with its figures, so the choice can be checked).

On another scenario or seed (``--scenario dirichlet --seed 3``: a seed the benchmark does not publish) the
same grids are a check of those defaults, not a choice: whether each method's default is still the best
of its grid there, and by how much (docs/results/tuning-check-<scenario>-seed<seed>.json and its own
section).
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
from lethe_bench.summary import R1, avg_gap

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


CALIBRATION = ("exclusive", 0)  # where the defaults were chosen


def is_default(method: str, setting: dict) -> bool:
    """Whether ``setting`` is the method's default in code (what the unlearning benchmark evaluates)."""
    defaults = METHODS[method].params().model_dump()
    return all(defaults[key] == value for key, value in setting.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default=CALIBRATION[0], choices=list(SCENARIOS))
    parser.add_argument("--seed", type=int, default=CALIBRATION[1])
    parser.add_argument("--root", type=Path, default=Path("runs/bench"))
    parser.add_argument("--methods", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--json", type=Path, default=None,
                        help="default: docs/results/tuning.json; elsewhere than the calibration scenario and seed "
                             "(a check of the defaults) docs/results/tuning-check-<scenario>-seed<seed>.json")
    parser.add_argument("--docs", type=Path, default=None, help="default: docs/benchmarks.md")
    args = parser.parse_args(argv)
    check = (args.scenario, args.seed) != CALIBRATION
    label = f"tuning-check-{args.scenario}-seed{args.seed}" if check else "tuning"
    published_json, published_docs = Path("docs/results") / f"{label}.json", Path("docs/benchmarks.md")
    json_path, args.docs = args.json or published_json, args.docs or published_docs
    subset = set(args.methods) != set(GRIDS)
    if subset and (json_path.resolve() == published_json.resolve() or args.docs.resolve() == published_docs.resolve()):
        parser.error("--methods with some of the methods would replace the published results and section with "
                     "theirs alone: pass --json and --docs elsewhere (e.g. under /tmp)")
    scenario = SCENARIOS[args.scenario]
    refs = ensure_references(args.root, scenario, args.seed, log=print)
    cache = FederationDataCache(1)
    context = UnlearningContext.load(refs.original, data_cache=cache)
    bench = Bench.build(context, refs.target, concept=scenario.concept, cache=cache)
    retrain = report_metrics(bench.verify(load_version(refs.retrain)[0]))
    results: dict = {"scenario": args.scenario, "seed": args.seed, "budget": "4 settings per method, one run each",
                     "objective": "Avg. Gap to the retrain reference over the six Recall@1 figures",
                     "retrain": retrain, "methods": {}}
    for name in args.methods:
        runs = []
        for params in GRIDS[name]:
            spec = METHODS[name]
            began = time.perf_counter()
            outcome = spec.unlearn(context, refs.target, spec.params.model_validate(params))
            report = bench.verify(outcome.bundle)
            metrics = report_metrics(report)
            gap = avg_gap(metrics, retrain)
            runs.append({"params": params, "avg_gap": gap, "verdict": verdict_word(report), "metrics": metrics,
                         "wall_s": time.perf_counter() - began, "default": is_default(name, params)})
            print(f"{name} {params}: Avg. Gap {gap:.2f}, verdict {runs[-1]['verdict']}", flush=True)
        best = min(runs, key=lambda r: r["avg_gap"])
        results["methods"][name] = {"runs": runs, ("best" if check else "chosen"): best["params"]}
    write_json(json_path, results)
    command = f"python -m lethe_bench.tuning --scenario {args.scenario} --seed {args.seed}" + (
        " --methods " + " ".join(args.methods) if subset else "")

    def mark(run: dict, method: dict) -> str:
        if not check:
            return "chosen" if run["params"] == method["chosen"] else ""
        return ", ".join(word for word, on in (("default", run["default"]),
                                               ("best here", run["params"] == method["best"])) if on)

    rows = [[name, str(run["params"]), f"{run['avg_gap']:.2f}", run["verdict"], f"{run['wall_s']:.0f}", mark(run, m)]
            for name, m in results["methods"].items() for run in m["runs"]]
    if check:
        text = (f"### Check of the defaults: {args.scenario}, seed {args.seed}\n\nCommand: `{command}` "
                f"({date.today().isoformat()}); the same grids and objective as above, on a scenario and seed "
                "outside the calibration: a check, not a choice (the defaults stay those chosen above). Retrain "
                "reference of this seed: " + ", ".join(f"{m} {retrain[m]:.1f}" for m in R1) + ".\n\n")
    else:
        text = (f"## Equal tuning (issue 9)\n\nCommand: `{command}` ({date.today().isoformat()}); budget: "
                f"{results['budget']}; objective: {results['objective']}. The chosen settings are the methods' "
                f"defaults in code; the unlearning benchmark below evaluates those (seed {args.seed} of "
                f"{args.scenario} is in-sample for every method alike).\n\n")
    text += table(["method", "setting", "Avg. Gap", "verdict", "wall s", ""], rows) + "\n"
    replace_section(args.docs, label, text)


if __name__ == "__main__":
    main()
