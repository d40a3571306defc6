"""PGA: projected gradient ascent inside a ball around a reference model (Halimi et al. 2022).

The paper ("Federated unlearning: how to efficiently erase a client in FL?") lets the
departing client f ascend its own loss, keeping the weights inside the l2 ball of radius
delta around a reference model w_ref, stopping early once the loss passes a threshold;
the federation then trains a few more FedAvg rounds without f to recover utility.

Reference model. The paper's w_ref = (K theta - theta_f) / (K - 1) is the mean of the
other clients' local models of the last round (equal weights): what the server would have
aggregated in that round without f. We do not keep local models, but the ledger holds
every client's exact contribution C_k = sum_t p_k Delta_k^t, and theta = theta_0 + sum_k C_k.
Generalising the paper's "aggregate without f, weights renormalised over the others" from
the last round to the whole schedule (first order: it ignores that the others' updates
would have been different without f) gives

    w_ref = theta_0 + sum_{k != f} C_k / (1 - p_f) = theta - C_f + p_f / (1 - p_f) * sum_{k != f} C_k

with p_f = n_f / n from the ledger's sample counts. For one round with equal weights this
is exactly the paper's formula. ``reference = "subtract"`` uses theta - C_f instead (f's
contribution removed without renormalising the others').

Radius. The paper sets delta to a third of the mean distance between w_ref and random
models; in a model whose weights are mostly the initialisation that ball never binds
(here |theta| is ~20x |theta - theta_0|). We use delta = ``radius_fraction`` *
|theta - w_ref| (default one third), computed over the trainable blocks: the ascent starts
at theta, the first projection moves it two thirds of the way to w_ref, and the ascent
then moves inside that ball.

Samples scope (a data subject's pairs inside client f): there is no per-pair ledger
reference, so w_ref = theta and the ball bounds how far the ascent may move:
delta = ``sample_radius_fraction`` * (n_s / n_f) * |C_f| / (1 - p_s), the pairs' share of
f's contribution, renormalised like the client-scope gap (``sample_radius`` overrides it
with an absolute value; then no ledger is needed). The forget loss contrasts the subject's pairs against the
client's own remaining pairs (what that client holds), so it is defined even for one pair.

Early stop: the ascent stops once the forget batch's contrastive loss reaches
``stop_loss_ratio`` * ln(candidates), the loss of a model at chance level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ease_engine.federation.training import derive_seed
from ease_engine.models.blocks import read_blocks, write_blocks
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning.base import (
    Cost,
    ErasureTarget,
    Timer,
    UnlearningContext,
    UnlearningError,
    UnlearningOutcome,
)
from ease_engine.unlearning.federated import retained_rounds


class AscentParams(BaseModel):
    """The gradient-ascent budget shared by PGA and SFU."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(30, ge=0, description="most gradient-ascent steps on the forget pairs")
    lr: float = Field(0.01, gt=0, description="SGD step size of the ascent")
    batch_size: int = Field(64, ge=2, description="forget pairs per ascent step (plus negatives in samples scope)")
    max_grad_norm: float | None = Field(
        5.0, gt=0, description="clip the ascent gradient's global norm (None: no clipping)"
    )
    stop_loss_ratio: float = Field(
        1.0, gt=0, description="stop once the forget loss reaches this * ln(candidates) (chance level)"
    )
    repair_rounds: int = Field(2, ge=0, description="FedAvg rounds on the retained data after the ascent")
    repair_lr: float = Field(5e-4, gt=0, description="learning rate of the repair rounds")
    seed: int = Field(0, description="seed of the forget batches and caption choices")


class PgaParams(AscentParams):
    """PGA settings; the defaults follow the paper (delta = a third of a distance, a few repair rounds)."""

    model_config = ConfigDict(extra="forbid")

    reference: Literal["renormalised", "subtract"] = Field(
        "renormalised",
        description="w_ref from the ledger: theta_0 + sum_(k!=f) C_k / (1 - p_f) (the paper's formula over all "
        "rounds), or theta - C_f",
    )
    radius_fraction: float = Field(
        1 / 3, gt=0, description="client scope: delta = this * |theta - w_ref| over the trainable blocks"
    )
    sample_radius_fraction: float = Field(
        1.0, gt=0, description="samples scope: delta = this * (n_s / n_f) * |C_f| / (1 - p_s)"
    )
    sample_radius: float | None = Field(
        None, gt=0, description="samples scope: an absolute delta (overrides sample_radius_fraction)"
    )


# ---------------------------------------------------------------------- geometry
def _norm(values: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in values.values()))


def reference_model(
    theta: dict[str, torch.Tensor],
    contributions: dict[int, dict[str, torch.Tensor]],
    forget: int,
    weight: float,
    mode: str = "renormalised",
) -> dict[str, torch.Tensor]:
    """w_ref per block from the ledger contributions (see the module docstring)."""
    if not 0.0 < weight < 1.0:
        raise UnlearningError(f"PGA needs at least two clients with data (the forget client's weight is {weight})")
    scale = weight / (1.0 - weight)
    out = {}
    for name, value in theta.items():
        c_f = contributions[forget][name].to(value)
        ref = value - c_f
        if mode == "renormalised":
            others = sum(c[name].to(value) for k, c in contributions.items() if k != forget)
            ref = ref + scale * others
        out[name] = ref
    return out


def project_to_ball(
    values: dict[str, torch.Tensor], center: dict[str, torch.Tensor], radius: float
) -> tuple[dict[str, torch.Tensor], bool]:
    """The point of the l2 ball {w : |w - center| <= radius} nearest to ``values`` (all blocks jointly).

    Returns (projected values, whether the projection moved them).
    """
    distance = _norm({name: values[name] - center[name] for name in center})
    if distance <= radius:
        return dict(values), False
    factor = radius / distance
    return {name: center[name] + factor * (values[name] - center[name]) for name in center}, True


# ---------------------------------------------------------------------- forget loss
def forget_loss(
    bundle: ClipBundle,
    context: UnlearningContext,
    forget: np.ndarray,
    negatives: np.ndarray,
    generator: torch.Generator,
) -> torch.Tensor:
    """Contrastive loss of the forget pairs, with ``negatives`` (may be empty) as extra candidates.

    Only the forget pairs' rows (image to text) and columns (text to image) enter the loss.
    Without negatives it is the plain CLIP loss of the forget batch.
    """
    setup = context.setup
    device = setup.device
    items = np.concatenate([forget, negatives]).astype(np.int64)
    images = bundle.image_batch(setup.train, items, device)
    texts = setup.captions.pick(items, generator).to(device)
    image_features, text_features, logit_scale = bundle.model(images, texts)[:3]
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp().clamp(max=100.0) * image_features @ text_features.t()
    n = len(forget)
    labels = torch.arange(n, device=logits.device)
    return 0.5 * (F.cross_entropy(logits[:n], labels) + F.cross_entropy(logits.t()[:n], labels))


def gradient_ascent(
    context: UnlearningContext,
    bundle: ClipBundle,
    target: ErasureTarget,
    params: AscentParams,
    cost: Cost,
    *,
    after_backward: Callable[[torch.nn.Module], None] | None = None,
    after_step: Callable[[torch.nn.Module], None] | None = None,
) -> dict:
    """SGD ascent on the forget pairs' contrastive loss, run by the forget client, in place on ``bundle``.

    ``after_backward`` may rewrite the gradients (SFU's projection), ``after_step`` the
    weights (PGA's ball). In samples scope the client's remaining pairs are the negatives.
    Client samples count every pair forwarded and backpropagated.
    """
    steps, lr, batch_size = params.steps, params.lr, params.batch_size
    max_grad_norm, stop_loss_ratio, seed = params.max_grad_norm, params.stop_loss_ratio, params.seed
    model = bundle.model
    forget = context.forget_items(target)
    own = context.retained_items_of(target)(target.client) if target.scope == "samples" else np.zeros(0, np.int64)
    rng = np.random.default_rng(derive_seed(seed, target.client, 0xA5C))
    generator = torch.Generator().manual_seed(derive_seed(seed, target.client, 0xA5D))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=lr)
    model.train()
    history, stopped, done = [], False, 0
    for step in range(steps):
        f_items = rng.choice(forget, size=min(batch_size, len(forget)), replace=False)
        n_neg = min(max(batch_size - len(f_items), 1), len(own)) if len(own) else 0
        negatives = rng.choice(own, size=n_neg, replace=False) if n_neg else own[:0]
        if len(f_items) + len(negatives) < 2:
            raise UnlearningError("gradient ascent needs at least two pairs to contrast")
        loss = forget_loss(bundle, context, f_items, negatives, generator)
        cost.client_samples += len(f_items) + len(negatives)
        threshold = stop_loss_ratio * math.log(len(f_items) + len(negatives))
        value = float(loss.detach())
        if not math.isfinite(value):
            raise UnlearningError(f"the forget loss became {value} at ascent step {step}; lower lr")
        history.append({"step": step, "forget_loss": value, "chance": threshold / stop_loss_ratio})
        if value >= threshold:
            stopped = True
            break
        optimizer.zero_grad(set_to_none=True)
        (-loss).backward()  # ascent
        if after_backward is not None:
            after_backward(model)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        if after_step is not None:
            after_step(model)
        done += 1
    optimizer.zero_grad(set_to_none=True)
    return {"steps": done, "stopped_at_threshold": stopped, "history": history}


# ---------------------------------------------------------------------- the method
def _client_weights(context: UnlearningContext) -> dict[int, int]:
    ledger = context.ledger
    return {k: (ledger.client(k).n_samples or len(context.setup.client_items(k))) for k in ledger.clients}


def unlearn(context: UnlearningContext, target: ErasureTarget, params: PgaParams) -> UnlearningOutcome:
    context.check_target(target)
    if target.scope == "client" or params.sample_radius is None:
        ledger = context.require_ledger("pga")
        if target.client not in ledger.clients:
            raise UnlearningError(
                f"client {target.client} never took part in training (ledger clients {ledger.clients})"
            )
        sizes = _client_weights(context)
        n_total = sum(sizes.values())
        contributions = {k: ledger.client(k).contribution for k in ledger.clients}
    cost = Cost()
    details: dict = {"scope": target.scope}
    with Timer() as timer:
        bundle = context.fresh_bundle()
        blocks = context.setup.blocks
        theta = context.original_values
        if target.scope == "client":
            p_f = sizes[target.client] / n_total
            w_ref = reference_model(theta, contributions, target.client, p_f, params.reference)
            gap = _norm({name: theta[name] - w_ref[name] for name in theta})
            radius = params.radius_fraction * gap
            details.update(reference=params.reference, forget_weight=p_f, reference_gap=gap)
        else:
            n_s = len(target.pair_ids)
            w_ref = {name: v.clone() for name, v in theta.items()}
            if params.sample_radius is not None:
                radius = params.sample_radius
            else:
                p_s = n_s / n_total
                share = n_s / sizes[target.client]
                radius = params.sample_radius_fraction * share * _norm(contributions[target.client]) / (1 - p_s)
        details["radius"] = radius

        def to_ball(model: torch.nn.Module) -> None:
            projected, moved = project_to_ball(read_blocks(model, blocks), w_ref, radius)
            if moved:
                write_blocks(model, blocks, projected)

        to_ball(bundle.model)  # the ascent starts inside the ball
        details["ascent"] = gradient_ascent(
            context,
            bundle,
            target,
            params,
            cost,
            after_step=to_ball,
        )
        cost.add_round(1, context.numbers_per_model())  # w_ref down to the forget client, its model back
        details["distance_to_reference"] = _norm(
            {name: v - w_ref[name] for name, v in read_blocks(bundle.model, blocks).items()}
        )
        if params.repair_rounds:
            start = context.config.training.rounds
            details["repair"] = retained_rounds(
                context, bundle, target, range(start, start + params.repair_rounds), lambda t: params.repair_lr, cost
            )
    return UnlearningOutcome(bundle, cost, timer.seconds, details=details)
