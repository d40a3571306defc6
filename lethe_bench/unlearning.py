"""The unlearning benchmark: every method against the retrain reference, on every scenario, over seeds.

    lethe bench [--scenarios exclusive dirichlet ...] [--seeds 0 1 2] [--quick] [--jobs 2]
    python -m lethe_bench.unlearning ...

Without ``--seeds`` each scenario runs its own seeds (``Scenario.seeds``: three, six for real-images).

Per scenario (``lethe_bench.scenarios``) and seed: the original federation and its retrain reference
(trained once and cached by config hash, ``lethe_bench.references``), every method row and EASE ablation
(``lethe_bench.rows``) measured on the verification splits (the audit split: no method reads it), the
production verdict of each, the gate cases (negative controls, EASE, the retrain reference as a candidate)
and, in the shared-concept scenario, reactivation over further FedAvg rounds with and without the Forget
Lock. Writes the section ``unlearning`` of docs/benchmarks.md and docs/results/unlearning.json (mean and
standard deviation over seeds; each gap to the retrain mean is judged against the retrain-to-retrain spread).
``--quick`` runs tiny versions of the scenarios (minutes) and writes nothing into docs/.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ease_engine.atomic import write_json
from lethe_bench.machine import describe as describe_machine
from lethe_bench.markdown import replace_section, table
from lethe_bench.pretrain import ensure as ensure_pretrained
from lethe_bench.reactivation import curves_table
from lethe_bench.references import backbone_digest, ensure_references, reference_paths, references_cached
from lethe_bench.run_seed import results_path, run_seed
from lethe_bench.scenarios import SCENARIOS
from lethe_bench.summary import R1, gap_table, gate_case_table, scenario_table, summarise_scenario

REACTIVATION_SCENARIO = "shared-concept"
REINJECTED = 50  # forget pairs re-injected into one retained client (about 10% of its data): a relearning attack


def reactivation_table(summary: dict) -> str:
    return curves_table(summary["reactivation"])


def bars(summaries: dict[str, dict]) -> str:
    """Issue 10's bars for EASE, per scenario (gaps to the retrain mean)."""
    rows = []
    for name, summary in summaries.items():
        ease = summary["methods"].get("ease")
        if ease is None:
            continue
        gap = ease["gap_to_retrain"]
        baselines = {k: v for k, v in summary["methods"].items() if k not in ("original", "retrain")
                     and not k.startswith("ease")}
        others = [v["avg_gap"] for v in baselines.values()]
        rows.append([
            name,
            f"{max(gap['forget_i2t_r1'], gap['forget_t2i_r1']):.1f}",
            f"{max(gap[m] for m in R1[2:]):.1f}",
            f"{gap['probe']:.1f}" if "probe" in gap else "-",
            "yes" if others and ease["avg_gap"] <= min(others) else "no",
            f"{ease['speedup']:.0f}x" if ease["speedup"] else "-",
            f"{ease['work_speedup']:.0f}x" if ease.get("work_speedup") else "-",
            per_seed_comparison(ease, baselines),
        ])
    return table(["scenario", "forget |gap| (bar 2.0)", "retain/test |gap| (bar 3.0)", "probe |gap| (bar 5)",
                  "lowest Avg. Gap of the baselines", "speed-up (bar 20x)", "pairs processed, retrain / EASE",
                  "Avg. Gap per seed: EASE / best baseline"],
                 rows) + ("\n\nSpeed-up is retrain's wall time (measured when the reference was trained) over EASE's "
                          "(measured when the row ran): two runs, so the ratio moves with whatever else the machine "
                          "ran at either time (docs/results/unlearning.json keeps the command). The last column "
                          "counts work instead (pairs forward and backward; EASE's linear algebra not counted), which "
                          "no load changes; '-' where the scenario's rows were written before it was recorded. The "
                          "last column takes each seed's Avg. Gap to its own retrain, then the mean over seeds: unlike "
                          "the Avg. Gap of the seed means it does not let one seed's overshoot cancel another's "
                          "shortfall.")


def per_seed_comparison(ease: dict, baselines: dict[str, dict]) -> str:
    """EASE's mean per-seed Avg. Gap against the lowest baseline's ('-' where the rows predate the figure)."""
    measured = {k: v["per_seed_gap"]["mean"] for k, v in baselines.items() if v.get("per_seed_gap")}
    if not ease.get("per_seed_gap") or not measured:
        return "-"
    best = min(measured, key=measured.get)
    return f"{ease['per_seed_gap']['mean']:.2f} / {measured[best]:.2f} ({best})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="the seeds of every scenario run (default: each scenario's own, lethe_bench/scenarios.py: "
                             "three, six for real-images)")
    parser.add_argument("--root", type=Path, default=Path("runs/bench"))
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=Path("docs/results/unlearning.json"))
    parser.add_argument("--reactivation-rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny scenarios, one seed, nothing written to docs/")
    parser.add_argument("--jobs", type=int, default=1,
                        help="scenario-seed runs at a time, each in its own process with one torch thread "
                             "(at most the number of cores; each needs up to about 3 GB of memory)")
    parser.add_argument("--references-only", action="store_true",
                        help="only train (or find cached) the original and retrain of each scenario and seed: "
                             "several such processes with disjoint --scenarios/--seeds fill the cache in parallel")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    def log(message: str) -> None:
        print(message, flush=True)

    seeds = {name: list(args.seeds or SCENARIOS[name].seeds) for name in args.scenarios}
    if args.quick:
        seeds, args.root = {name: s[:1] for name, s in seeds.items()}, args.root.with_name(args.root.name + "-quick")
        args.scenarios = [s for s in args.scenarios if s not in ("real-images", "pretrained-lora")]
    earlier = {}
    if not (args.quick or args.references_only):
        earlier = load_results(args.json)  # a results file that cannot be merged into stops the run now, not in hours
    quick = " --quick" if args.quick else ""
    jobs = f" --jobs {args.jobs}" if args.jobs > 1 else ""
    for name in args.scenarios:
        if SCENARIOS[name].needs_pretrained:
            ensure_pretrained()  # once, here: the processes below only read it
    units = [BenchUnit(name, seed, args.root, args.quick, reactivation_rounds(name, args), args.references_only)
             for name in args.scenarios for seed in seeds[name]]
    cached = cached_at_start(units)
    started = time.perf_counter()
    results = run_units(units, args.jobs)
    elapsed = time.perf_counter() - started
    log(f"{len(units)} scenario-seed runs in {elapsed:.0f} s ({args.jobs} at a time)")
    summaries = {}
    for name in [] if args.references_only else args.scenarios:
        rounds = reactivation_rounds(name, args)
        summary = summaries[name] = summarise_scenario([r for u, r in zip(units, results, strict=True)
                                                        if u.scenario == name])
        summary["measured"] = {"date": date.today().isoformat(), "machine": f"{describe_machine()}, torch threads 1",
                               "command": f"lethe bench{quick}{jobs} --scenarios {name} --seeds "
                                          + " ".join(map(str, seeds[name])),
                               # the whole invocation (every scenario it ran, cached references read, not trained)
                               "invocation": {"scenarios": list(args.scenarios), "jobs": args.jobs,
                                              "wall_s": round(elapsed, 1), "units": len(units), **cached}}
        if rounds:
            summary["reactivation_rounds"], summary["reinjected"] = rounds, REINJECTED
        if cached["rows_cached"] == len(units) and "measured" in earlier.get(name, {}):
            summary["measured"] = earlier[name]["measured"]  # nothing was measured now: keep when it was
        backbone = backbone_digest(SCENARIOS[name].config(seeds[name][0], args.quick))
        if backbone:  # the rows come from the cache of this backbone's references (keyed by its sha256)
            summary["measured"]["backbone_sha256"] = backbone
    if args.references_only:
        return
    if args.quick:
        out_json = args.root / "unlearning.json"
        write_json(out_json, {"scenarios": summaries, "command": f"lethe bench{quick}"})
        log(f"wrote {out_json}")
        return
    with results_lock(args.root):  # other bench processes merge into the same files
        merged = merge_results(load_results(args.json), summaries, log)
        write_json(args.json, merged)
        log(f"wrote {args.json} ({', '.join(merged['scenarios'])})")
        replace_section(args.docs, "unlearning", docs_section(merged["scenarios"]))
        log(f"wrote the unlearning section of {args.docs}")


def reactivation_rounds(name: str, args: argparse.Namespace) -> int:
    return args.reactivation_rounds if name == REACTIVATION_SCENARIO and not args.quick else 0


@dataclass(frozen=True)
class BenchUnit:
    """One scenario and seed: its references and (unless ``references_only``) every row, in one process."""

    scenario: str
    seed: int
    root: Path
    quick: bool
    reactivation_rounds: int
    references_only: bool

    @property
    def reinjected(self) -> int:
        """Forget pairs re-injected in the reactivation experiment (none without one)."""
        return REINJECTED if self.reactivation_rounds else 0


def cached_at_start(units: list[BenchUnit]) -> dict[str, int]:
    """How many units found their references trained, and their rows computed, before the invocation began."""
    references = rows = 0
    for unit in units:
        refs = reference_paths(unit.root, SCENARIOS[unit.scenario], unit.seed, unit.quick)
        references += references_cached(refs)
        rows += results_path(refs, SCENARIOS[unit.scenario].scope, unit.reactivation_rounds, unit.reinjected).is_file()
    return {"references_cached": references, "rows_cached": rows}


def run_unit(unit: BenchUnit) -> dict | None:
    def log(message: str) -> None:
        print(message, flush=True)

    scenario = SCENARIOS[unit.scenario]
    if unit.references_only:
        ensure_references(unit.root, scenario, unit.seed, unit.quick, log=log)
        return None
    return run_seed(scenario, unit.seed, unit.root, unit.quick, unit.reactivation_rounds, unit.reinjected, log=log)


def run_units(units: list[BenchUnit], jobs: int) -> list[dict | None]:
    """Each unit's result, in order; with ``jobs`` > 1 that many at a time in fresh processes (spawned, so no
    process inherits another's torch state). Units share only the cache under ``--root``, where each writes
    its own seed's directory (atomically) and reads the others' never."""
    if jobs == 1:
        return [run_unit(unit) for unit in units]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_unit, units))


@contextmanager
def results_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "results.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def load_results(path: Path) -> dict[str, dict]:
    """The scenarios of an existing results file ({} when there is none); a file that cannot be read stops the
    benchmark before it spends hours measuring."""
    if not path.is_file():
        return {}
    try:
        scenarios = json.loads(path.read_text())["scenarios"]
        if not isinstance(scenarios, dict):
            raise TypeError("'scenarios' is not an object")
        return scenarios
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path} is not a results file of this benchmark ({exc}); move it aside or pass "
                         "--json") from None


def merge_results(earlier: dict[str, dict], measured: dict[str, dict], log=print) -> dict:
    """The earlier results with the scenarios just measured replacing theirs, in the order of ``SCENARIOS``.
    A scenario measured here over fewer seeds than before keeps its earlier entry (a per-seed process must not
    replace a three-seed result: run once more over all seeds to write it)."""
    scenarios = dict(earlier)
    for name, summary in measured.items():
        missing = sorted(set(earlier.get(name, {}).get("seeds", [])) - set(summary["seeds"]))
        if missing:
            log(f"kept the earlier {name} results: they include seeds {missing}, which this run did not measure")
            continue
        scenarios[name] = summary
    for name in sorted(set(scenarios) - set(SCENARIOS)):
        log(f"dropped {name} from the results: it is no longer a scenario of this benchmark")
    ordered = {name: scenarios[name] for name in SCENARIOS if name in scenarios}
    return {"scenarios": ordered, "command": "lethe bench (per scenario: scenarios.NAME.measured.command)"}


def _measured_line(name: str, summary: dict) -> str:
    record = summary.get("measured")
    if record is None:
        seeds = " ".join(map(str, summary["seeds"]))
        return (f"- {name}: `lethe bench --scenarios {name} --seeds {seeds}`, written by an earlier version of "
                "this script")
    backbone = f", backbone sha256 {record['backbone_sha256'][:8]}" if record.get("backbone_sha256") else ""
    line = f"- {name}: `{record['command']}` ({record['date']}, {record['machine']}{backbone})"
    run = record.get("invocation")
    if run:
        line += (f"; that invocation over {', '.join(run['scenarios'])} took {run['wall_s'] / 60:.1f} min wall with "
                 f"{run['jobs']} job(s), {run['references_cached']} of {run['units']} scenario-seeds' references "
                 f"and {run['rows_cached']} of their rows cached at its start")
    return line


def rows_time_line(summaries: dict[str, dict]) -> str:
    """The rows' wall time over every scenario, from the distinct invocations that computed them with every
    reference cached and no row cached at their start (how the bench's time target is judged); empty when
    some scenario's rows were not timed that way."""
    runs: dict[tuple, dict] = {}
    for summary in summaries.values():
        run = (summary.get("measured") or {}).get("invocation")
        if not run or run["references_cached"] != run["units"] or run["rows_cached"]:
            return ""
        runs[(tuple(run["scenarios"]), run["wall_s"])] = run
    if not runs or sum(len(run["scenarios"]) for run in runs.values()) != len(summaries):
        return ""  # an invocation also ran a scenario whose published rows a later one computed
    ordered = sorted(runs.values(), key=lambda run: [list(SCENARIOS).index(n) for n in run["scenarios"]])
    parts = " + ".join(f"{run['wall_s'] / 60:.1f}" for run in ordered)
    total = sum(run["wall_s"] for run in ordered) / 60
    jobs = sorted({run["jobs"] for run in ordered})
    return (f"The rows of all {len(summaries)} scenarios, with their references cached and no row cached: {parts} = "
            f"{total:.1f} min wall in {len(ordered)} invocation(s) with {'/'.join(map(str, jobs))} job(s) (the "
            "references' training not included).\n\n")


def docs_section(summaries: dict[str, dict]) -> str:
    summaries = {name: summaries[name] for name in SCENARIOS if name in summaries}
    text = ("## Unlearning benchmark (issues 9 and 10)\n\nEach scenario's tables were written by the command "
            "beside it, on the machine named (other work running beside it). The references and each seed's rows "
            "are cached under `--root` (runs/bench): the rows were computed by that command or, before it, by "
            "processes over single seeds (`--seeds S`) filling the same cache, and are read, not re-run; an "
            "invocation over some scenarios keeps the others' results (machine-readable: "
            "`docs/results/unlearning.json`; wall times per method are those of the process that computed the "
            "row):\n\n" + "\n".join(_measured_line(n, s) for n, s in summaries.items()) + "\n\n"
            + rows_time_line(summaries))
    text += "### Production gate cases\n\n" + gate_case_table(summaries) + "\n\n"
    text += "### Avg. Gap to the retrain mean (R@1 points; lowest non-retrain method in bold)\n\n"
    text += gap_table(summaries) + "\n\n### EASE against issue 10's bars\n\n" + bars(summaries) + "\n\n"
    for name, summary in summaries.items():
        text += scenario_table(f"{name}: {SCENARIOS[name].summary}", summary) + "\n"
        if "reactivation" in summary:
            rounds, reinjected = summary["reactivation_rounds"], summary["reinjected"]
            text += (f"Reactivation: {rounds} more FedAvg rounds on the retained clients at the "
                     f"federation's peak learning rate; client 1 holds 30% of the purple images and, as a relearning "
                     f"attack, {reinjected} of the erased client's pairs are re-injected into the first retained "
                     f"client:\n\n" + reactivation_table(summary) + "\n\n")
    return text


if __name__ == "__main__":
    main()
