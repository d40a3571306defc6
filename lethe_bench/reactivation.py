"""Reactivation: does erased knowledge come back when the federation keeps training?

From an erased model, FedAvg continues for K rounds on the retained clients at the federation's normal
learning rate (the Forget Lock filtering every update, or not), optionally with a relearning attack: some
of the forgotten pairs re-injected into one retained client's data. In the shared-concept scenario a
retained client holds some of the erased concept itself, so the federation can legitimately re-learn it;
the lock's question is whether the erased client's own directions come back. Every ``every`` rounds the
verification splits are measured (R@1, the concept probe, MIA AUC, the ledger residual).
"""

from __future__ import annotations

import numpy as np

from ease_engine.federation.fedavg import fedavg_round, round_participants
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.factory import ClipBundle
from lethe_bench.markdown import table
from lethe_bench.measure import Bench, figures_metrics


def continue_training(
    bench: Bench,
    bundle: ClipBundle,
    rounds: int,
    lock: ForgetLock | None = None,
    reinjected: int = 0,
    seed: int = 0,
    lr: float | None = None,
    every: int = 1,
    clients: list[int] | None = None,
) -> list[dict]:
    """K more FedAvg rounds on the retained data from ``bundle`` (a copy is trained); ``lr`` defaults to the
    federation's peak learning rate; ``clients`` (default: every client the erasure retains) train, the first
    of them with the re-injected pairs."""
    context, target = bench.context, bench.target
    bundle = bundle.copy()
    setup = context.with_model(bundle)
    retained_items_of = context.retained_items_of(target)
    clients = [k for k in (context.retained_clients(target) if clients is None else clients)
               if len(retained_items_of(k))]
    attacker = clients[0]
    injected = np.random.default_rng(seed).choice(context.forget_items(target), size=reinjected, replace=False)

    def items_of(client: int) -> np.ndarray:
        items = retained_items_of(client)
        return np.concatenate([items, injected]) if client == attacker and reinjected else items

    lr = context.config.training.lr if lr is None else lr
    start = context.config.training.rounds + 100  # fresh seeds, distinct from the federation's own rounds
    curve = [_point(bench, bundle, 0, 0, 0)]
    interventions = failed_closed = 0
    for r in range(rounds):
        participants = round_participants(setup.config, clients, start + r)
        stats = fedavg_round(setup, start + r, participants, lr, items_of=items_of, lock=lock)
        interventions += sum(s["lock_interventions"] for s in stats.values())
        failed_closed += sum(s["lock_failed_closed"] for s in stats.values())
        if (r + 1) % every == 0 or r + 1 == rounds:
            curve.append(_point(bench, bundle, r + 1, interventions, failed_closed))
            interventions = failed_closed = 0
    return curve


def _point(bench: Bench, bundle: ClipBundle, round_index: int, interventions: int, failed_closed: int) -> dict:
    return {"round": round_index, **figures_metrics(bench.measure(bundle)), "lock_interventions": interventions,
            "lock_failed_closed": failed_closed}


def curves_table(curves: dict[str, list[dict]], residual: str = "ledger residual") -> str:
    """Each run's move from its first to its last point (means over seeds, ± the standard deviation at the end:
    :func:`lethe_bench.summary.stats` per metric and point) and its lock interventions in all."""
    rows = []
    for label, curve in curves.items():
        first, last = curve[0], curve[-1]

        def move(metric: str, digits: int = 1, first=first, last=last) -> str:
            if metric not in first or metric not in last:
                return "-"
            return (f"{first[metric]['mean']:.{digits}f} -> {last[metric]['mean']:.{digits}f} ± "
                    f"{last[metric]['std']:.{digits}f}")

        interventions = sum(point["lock_interventions"] for point in curve)
        rows.append([label, move("forget_i2t_r1"), move("forget_t2i_r1"), move("probe"), move("ledger_residual", 2),
                     f"{interventions:.0f}"])
    return table(["run", "forget i2t R@1", "forget t2i R@1", "probe", residual, "lock interventions"], rows)
