"""Reactivation after a chain of two erasures: does the lock still guard the first one?

    python -m lethe_bench.chained_reactivation [--seeds 0 1 2] [--rounds 20] [--reinjected 50]

On the ``shared-concept`` federation (client 0 holds 70% of the purple images, client 1 the other 30%) the
product erases client 0 and then, from that version, client 1 (``ease_engine.erasure.erase`` both times:
the second version holds one lock layer per erasure, docs/ease.md). FedAvg then goes on for ``--rounds``
rounds on the four clients left, at the federation's peak learning rate, with ``--reinjected`` of client
0's pairs re-injected into the first of them (a relearning attack on the FIRST erasure). Three runs from
the same twice-erased model:

- ``chained lock``: the version's lock, both layers (what Lethe publishes);
- ``newest layer only``: only the second erasure's layer, the lock a version published before locks were
  chained held (the weights are the same: they already went through the second erasure's hold of the
  first, which older versions did not do);
- ``no lock``.

Measured every ``rounds // 4`` rounds against client 0's erasure: forget R@1 on its audit pairs, the concept
probe and the ledger residual of client 0's exclusive contribution (0: none of it is back). Each seed's
curves are cached beside its references; the summary (mean and standard deviation over seeds) goes to
docs/results/chained_reactivation.json and the ``chained-reactivation`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from datetime import date
from pathlib import Path

from ease_engine.atomic import write_json
from ease_engine.erasure import erase
from ease_engine.federation.data_cache import FederationDataCache
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.version_io import load_version
from ease_engine.unlearning import METHODS, ErasureTarget, UnlearningContext
from ease_engine.verification.gates import GateConfig
from lethe_bench.machine import describe as describe_machine
from lethe_bench.markdown import replace_section
from lethe_bench.measure import Bench
from lethe_bench.reactivation import continue_training, curves_table
from lethe_bench.references import ensure_references
from lethe_bench.scenarios import SCENARIOS
from lethe_bench.summary import summarise_curves
from lethe_format import layout

SCENARIO = SCENARIOS["shared-concept"]
SECOND_CLIENT = 1  # the other holder of the concept
RUNS = ("chained lock", "newest layer only", "no lock")
CACHE_VERSION = 1  # bump when what a run measures changes in a way the key below does not see


def newest_layer(lock: ForgetLock) -> ForgetLock:
    """The layer of the lock's newest erasure alone (a lock as one erasure publishes it)."""
    newest_index = len(lock.erasures) - 1
    single = ForgetLock(metadata=dict(lock.metadata), tolerance=lock.tolerance)
    for name in lock.block_names:
        for index, block in lock.indexed_layers(name):
            if index == newest_index:
                single.set_block(name, block)
    return single


def run_seed(seed: int, root: Path, rounds: int, reinjected: int, log=print) -> dict:
    refs = ensure_references(root, SCENARIO, seed, log=log)
    key = hashlib.sha256(json.dumps([CACHE_VERSION, rounds, reinjected, SECOND_CLIENT,
                                     METHODS["ease"].params().model_dump(), GateConfig().model_dump()],
                                    sort_keys=True, default=str).encode()).hexdigest()[:10]
    cached = refs.original.parent / f"chained-reactivation-{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    cache = FederationDataCache(1)
    first_target = refs.target
    with tempfile.TemporaryDirectory(dir=refs.original.parent) as work:
        gates = GateConfig()
        first = erase(refs.original, first_target, "ease", None, Path(work) / "first", gates=gates,
                      publish_on_failure=True, data_cache=cache, concept=SCENARIO.concept)
        second = erase(first.version_dir, ErasureTarget(SECOND_CLIENT), "ease", None, Path(work) / "second",
                       gates=gates, publish_on_failure=True, data_cache=cache)
        lock = ForgetLock.load(second.version_dir / layout.FORGET_LOCK_DIR)
        if len(lock.erasures) != 2:
            raise RuntimeError(f"seed {seed}: the twice-erased version holds {len(lock.erasures)} lock layer(s), "
                               "not one per erasure; the runs below would not differ as their labels say")
        twice_erased = load_version(second.version_dir)[0]  # the published weights
    context = UnlearningContext.load(refs.original, data_cache=cache)
    bench = Bench.build(context, first_target, concept=SCENARIO.concept, cache=cache)
    left = [k for k in context.retained_clients(first_target) if k != SECOND_CLIENT]
    locks = {"chained lock": lock, "newest layer only": newest_layer(lock), "no lock": None}
    every = max(1, rounds // 4)
    result = {"seed": seed, "clients_left": left, "layers": len(lock.erasures),
              "verdicts": [str(first.report.verdict), str(second.report.verdict)],
              "inherited_lock_interventions": second.outcome.details.get("inherited_lock_interventions"),
              "curves": {}}
    for label in RUNS:
        result["curves"][label] = continue_training(bench, twice_erased, rounds, lock=locks[label],
                                                    reinjected=reinjected, every=every, clients=left)
        end = result["curves"][label][-1]
        log(f"chained reactivation seed {seed} {label}: residual {end.get('ledger_residual', float('nan')):.3f}, "
            f"probe {end.get('probe', float('nan')):.1f}, forget {end['forget_i2t_r1']:.1f}/{end['forget_t2i_r1']:.1f}")
    write_json(cached, result)
    return result


def summarise(results: list[dict]) -> dict:
    return {"seeds": [r["seed"] for r in results],
            "runs": summarise_curves([{label: r["curves"][label] for label in RUNS} for r in results])}


def docs_section(summary: dict, command: str) -> str:
    rounds = summary["runs"][RUNS[0]][-1]["round"]
    failed_closed = {label: sum(p["lock_failed_closed"] for p in curve) for label, curve in summary["runs"].items()}
    return ("## Reactivation after two erasures (issue 10)\n\n"
            f"Command: `{command}` ({summary['date']}, {summary['machine']}). On the shared-concept federation "
            "(client 0 holds 70% of the purple images, client 1 the other 30%) client 0 is erased, then client 1 "
            "from that version (both through `ease_engine.erasure.erase`, EASE, so the second version holds one "
            f"lock layer per erasure). FedAvg then goes on for {rounds} rounds on the four clients left at the "
            f"federation's peak learning rate, with {summary['reinjected']} of client 0's pairs re-injected into "
            "the first of them: a relearning attack on the first erasure. From the same twice-erased weights: "
            "the version's chained lock; the newest erasure's layer alone (the lock a version held before locks "
            "were chained; the weights themselves already went through the second erasure's hold of the first, "
            "which older versions did not do); no lock. "
            f"Seeds {summary['seeds']}; means over seeds, ± the standard deviation at the end; every figure is "
            "about client 0's erasure (its audit pairs, the purple probe, the share of its exclusive contribution "
            "back in the weights). Updates whose block the chained lock failed closed (bands conflicting): "
            + ", ".join(f"{label} {count:.0f}" for label, count in failed_closed.items()) + ".\n\n"
            + curves_table(summary["runs"], residual="ledger residual (client 0)") + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--reinjected", type=int, default=50)
    parser.add_argument("--root", type=Path, default=Path("runs/bench"))
    parser.add_argument("--json", type=Path, default=Path("docs/results/chained_reactivation.json"))
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="fill the per-seed cache only (a parallel process)")
    args = parser.parse_args(argv)
    results = [run_seed(seed, args.root, args.rounds, args.reinjected) for seed in args.seeds]
    if args.no_write:
        return
    command = (f"python -m lethe_bench.chained_reactivation --seeds {' '.join(map(str, args.seeds))} "
               f"--rounds {args.rounds} --reinjected {args.reinjected}")
    summary = {**summarise(results), "rounds": args.rounds, "reinjected": args.reinjected, "command": command,
               "date": date.today().isoformat(), "machine": describe_machine(),
               "per_seed": results}
    write_json(args.json, summary)
    replace_section(args.docs, "chained-reactivation", docs_section(summary, command))


if __name__ == "__main__":
    main()
