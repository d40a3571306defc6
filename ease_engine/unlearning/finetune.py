"""finetune: more FedAvg rounds on the retained data only, from the original model.

Forgetting comes only from catastrophic interference: cheap, and the classic weak baseline.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ease_engine.unlearning.base import Cost, ErasureTarget, Timer, UnlearningContext, UnlearningOutcome
from ease_engine.unlearning.federated import retained_rounds


class FinetuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(3, ge=1)
    lr: float = Field(1.5e-3, gt=0)  # the equal-tuning winner (docs/benchmarks.md, tuning)


def unlearn(context: UnlearningContext, target: ErasureTarget, params: FinetuneParams) -> UnlearningOutcome:
    cost = Cost()
    with Timer() as timer:
        bundle = context.fresh_bundle()
        start = context.config.training.rounds
        history = retained_rounds(
            context, bundle, target, range(start, start + params.rounds), lambda t: params.lr, cost
        )
    return UnlearningOutcome(bundle, cost, timer.seconds, details={"history": history})
