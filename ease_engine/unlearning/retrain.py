"""retrain: FedAvg from the same initialisation without the erased data, same schedule (the oracle)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ease_engine.federation.fedavg import learning_rate
from ease_engine.models.factory import build_model
from ease_engine.unlearning.base import Cost, ErasureTarget, Timer, UnlearningContext, UnlearningOutcome
from ease_engine.unlearning.federated import retained_rounds


class RetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def unlearn(context: UnlearningContext, target: ErasureTarget, params: RetrainParams) -> UnlearningOutcome:
    cost = Cost()
    with Timer() as timer:
        bundle = build_model(context.config.model)  # the same init_seed / pretrained weights
        bundle.model.to(context.device)
        config = context.config
        history = retained_rounds(
            context, bundle, target, range(config.training.rounds), lambda t: learning_rate(config, t), cost
        )
    return UnlearningOutcome(bundle, cost, timer.seconds, details={"history": history})
