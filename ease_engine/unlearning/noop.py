"""noop: returns the parent unchanged. A negative control: verification must FAIL it wherever forgetting
is measurable (``lethe erase V --client 0 --method noop``), and a verdict is only ``passed`` if the
parent itself would fail (see ``ease_engine.verification``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ease_engine.unlearning.base import Cost, ErasureTarget, Timer, UnlearningContext, UnlearningOutcome


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def unlearn(context: UnlearningContext, target: ErasureTarget, params: NoopParams) -> UnlearningOutcome:
    with Timer() as timer:
        bundle = context.fresh_bundle()
    return UnlearningOutcome(bundle, Cost(), timer.seconds)
