"""perturb: the parent plus small random noise. A negative control: the weights move, nothing is
forgotten, so no gate may pass merely because the weights changed.

Each trainable block gets Gaussian noise of norm ``relative_norm`` x the block's own norm (a seeded,
isotropic direction per block)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ease_engine.models.blocks import read_blocks, write_blocks
from ease_engine.unlearning.base import Cost, ErasureTarget, Timer, UnlearningContext, UnlearningOutcome


class PerturbParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relative_norm: float = Field(0.01, gt=0, description="noise norm per block, relative to the block's norm")
    seed: int = 0


def unlearn(context: UnlearningContext, target: ErasureTarget, params: PerturbParams) -> UnlearningOutcome:
    with Timer() as timer:
        bundle = context.fresh_bundle()
        generator = torch.Generator().manual_seed(params.seed)
        values = read_blocks(bundle.model, context.setup.blocks)
        noisy = {}
        for name, value in values.items():
            direction = torch.randn(value.shape, generator=generator, dtype=torch.float64)
            scale = params.relative_norm * float(value.double().norm()) / max(float(direction.norm()), 1e-30)
            noisy[name] = value + (scale * direction).to(value.dtype)
        write_blocks(bundle.model, context.setup.blocks, noisy)
    return UnlearningOutcome(bundle, Cost(), timer.seconds, details={"relative_norm": params.relative_norm})
