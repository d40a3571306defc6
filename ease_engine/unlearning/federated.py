"""FedAvg rounds on the retained data, shared by the methods that train federatedly."""

from __future__ import annotations

from ease_engine.federation.fedavg import fedavg_round, round_participants
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning.base import Cost, ErasureTarget, UnlearningContext


def retained_rounds(
    context: UnlearningContext,
    bundle: ClipBundle,
    target: ErasureTarget,
    rounds: range,
    lr_of_round,
    cost: Cost,
    local_epochs: int | None = None,
) -> list[dict]:
    """Run FedAvg rounds on the retained clients (without the target's pairs), in place on ``bundle``.

    ``lr_of_round(t)`` gives each round's learning rate; ``local_epochs`` overrides the
    federation's. Client samples and bytes exchanged are added to ``cost``.
    """
    setup = context.with_model(bundle)
    if local_epochs is not None:
        config = context.config.model_copy(deep=True)
        config.training.local_epochs = local_epochs
        setup.config = config
    items_of = context.retained_items_of(target)
    clients = [k for k in context.retained_clients(target) if len(items_of(k))]
    history = []
    for t in rounds:
        participants = round_participants(setup.config, clients, t)
        stats = fedavg_round(setup, t, participants, lr_of_round(t), items_of=items_of)
        cost.client_samples += sum(s["samples"] for s in stats.values())
        cost.add_round(len(participants), context.numbers_per_model())
        history.append({"round": t, "loss": sum(s["loss"] * s["weight"] for s in stats.values())})
    return history
