"""EASE closure 2: bilateral displacement (bilinear cross-modal coupling), used by ``ease.py``.

CLIP's similarity s(x, y) = <f_v(x), f_t(y)> is bilinear in the two towers' outputs, so editing one
tower leaves the forgotten alignment recoverable through the other: the displacement is a short
optimisation of BOTH towers (``towers``),

    L = decouple_weight * L_decouple(D_f) + retain_weight * L_retain(D_r)

- ``L_decouple``: the sorted similarities of a batch of forget pairs against the quantiles of
  non-member pairs of the same distribution (the forget client's own CALIBRATION pairs: held out by
  it, never trained on; the audit split is not reachable from here), re-measured with the current
  model every ``check_every`` steps. ``hinge`` penalises only forget quantiles above the non-members'
  (pairs are pushed down to the level of pairs the model never saw, never pulled up: pulling up
  re-teaches them);
- ``L_retain``: both towers' unimodal embeddings on a retain proxy (retained clients' training pairs)
  kept close to the ANCHOR model's (the parent): this closes the utility gap the excision opens
  (``retain_loss = "contrastive"`` learns the proxy's pairs with the CLIP loss instead, ``"both"`` adds
  the two; ``retain_term``).

After each step the move is projected per block: ``off`` removes its components along the excised
directions (client scope: the displacement must not put back what closure 1 took out), ``onto`` keeps
only the components inside the exclusive basis (samples scope with ``sample_excision = "none"``). Blocks not in
the plan do not move (wholly exclusive blocks: excision put them exactly where a model never trained on
the client has them).

The repair runs ``steps`` steps, or (``repair_until = "parent_utility"``) those and on until the retained clients'
held-out utility is back at the parent's, at most ``max_steps`` (``ease_repair``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp

from ease_engine.federation.training import EncodedCaptions, clip_loss
from ease_engine.models.blocks import ParameterBlock, only_trainable
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning.ease_projection import StepProjection
from ease_engine.unlearning.ease_repair import UtilityCriterion


def tower_of(block: ParameterBlock) -> str:
    return "image" if block.param.startswith("visual.") else "text"


def pair_similarity(bundle: ClipBundle, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    img = F.normalize(bundle.model.encode_image(images), dim=-1)
    txt = F.normalize(bundle.model.encode_text(tokens), dim=-1)
    return (img * txt).sum(dim=-1)


@torch.no_grad()
def similarities(bundle: ClipBundle, dataset, captions: EncodedCaptions, items: np.ndarray, device: str,
                 generator: torch.Generator, batch: int = 256) -> torch.Tensor:
    bundle.model.eval()
    out = [pair_similarity(bundle, bundle.image_batch(dataset, items[i: i + batch], device),
                           captions.pick(items[i: i + batch], generator).to(device))
           for i in range(0, len(items), batch)]
    return torch.cat(out).cpu()


def quantile_matching_loss(sims: torch.Tensor, target_sorted: torch.Tensor, one_sided: bool = False) -> torch.Tensor:
    """Squared 1-D Wasserstein distance between a batch of similarities and a target distribution;
    ``one_sided`` only penalises quantiles above the target's."""
    levels = (torch.arange(len(sims), dtype=torch.float32) + 0.5) / len(sims)
    index = (levels * len(target_sorted)).long().clamp(max=len(target_sorted) - 1)
    diff = torch.sort(sims).values - target_sorted[index].to(sims.device)
    return (diff.clamp(min=0) if one_sided else diff).pow(2).mean()


@dataclass
class DisplacementPlan:
    """What the optimisation moves and how: the data it sees and the per-block gradient projection."""

    blocks: list[ParameterBlock]  # the blocks that move
    directions: dict[str, torch.Tensor]  # block -> orthonormal columns (d x q) of the projection
    mode: Literal["off", "onto"]
    forget_items: np.ndarray  # into the training set
    retain_proxy: np.ndarray  # into the training set
    nonmember_data: object  # a CaptionDataset of non-members (calibration pairs)
    nonmember_captions: EncodedCaptions
    criterion: UtilityCriterion | None = None  # stop once the retained utility is back (else after ``steps``)
    history: list[dict] = field(default_factory=list)


class AnchorEmbeddings:
    """The anchor's (the parent's) embeddings of retain-proxy images and captions, each computed once, the first
    time a batch holds it: the anchor does not change during the repair and an image's input is deterministic
    (the evaluation transform), so re-encoding the same pair at every step only repeated work (one forward pass of
    both towers per step: about a seventh of a step's compute)."""

    def __init__(self, anchor: ClipBundle):
        self.model = anchor.model
        self.images: dict[int, torch.Tensor] = {}  # training item -> image embedding
        self.texts: dict[int, torch.Tensor] = {}  # caption row (``EncodedCaptions.tokens``) -> text embedding

    @torch.no_grad()
    def __call__(self, items: np.ndarray, rows: torch.Tensor, images: torch.Tensor,
                 tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        return (self._lookup(self.images, [int(i) for i in items], images, self.model.encode_image),
                self._lookup(self.texts, [int(r) for r in rows], tokens, self.model.encode_text))

    @staticmethod
    def _lookup(cache: dict[int, torch.Tensor], keys: list[int], inputs: torch.Tensor, encode) -> torch.Tensor:
        missing = [k for k, key in enumerate(keys) if key not in cache]
        if missing:
            for k, feature in zip(missing, encode(inputs[missing]), strict=True):
                cache[keys[k]] = feature
        return torch.stack([cache[key] for key in keys])


def retain_term(model, images: torch.Tensor, tokens: torch.Tensor, kind: str,
                anchored: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The utility term on a batch of retained pairs: ``anchor`` keeps both towers' embeddings at the parent's
    (``anchored``: the parent's image and text embeddings of the batch; the function the excision disturbed; it
    cannot exceed the parent), ``contrastive`` learns the pairs with the CLIP loss (the retrain's own objective),
    ``both`` adds the two."""
    if kind not in ("anchor", "contrastive", "both"):
        raise ValueError(f"unknown retain term {kind!r}: use anchor, contrastive or both")
    image_features, text_features = model.encode_image(images), model.encode_text(tokens)
    loss = torch.zeros((), device=image_features.device)
    if kind in ("anchor", "both"):
        if anchored is None:
            raise ValueError(f"the {kind!r} retain term needs the parent's embeddings of the batch (anchored)")
        loss = loss + F.mse_loss(image_features, anchored[0]) + F.mse_loss(text_features, anchored[1])
    if kind in ("contrastive", "both"):
        loss = loss + clip_loss(image_features, text_features, model.logit_scale.detach())
    return loss


def displace(bundle: ClipBundle, anchor: ClipBundle, setup, plan: DisplacementPlan, params, generator,
             rng: np.random.Generator) -> dict:
    """Run the optimisation in place on ``bundle``; returns steps, the final KS statistic and the history."""
    device = setup.device
    model = bundle.model
    if anchor.model is model:
        raise ValueError("the anchor must be a copy of the parent, not the model being repaired: the repair moves it")
    trainable = {b.param for b in plan.blocks}
    named = dict(model.named_parameters())
    with only_trainable(model, trainable):
        optimizer = torch.optim.Adam([named[n] for n in sorted(trainable)], lr=params.lr, fused=True)
        projection = StepProjection(model, plan.blocks, plan.directions, plan.mode)
        anchor_embeddings = AnchorEmbeddings(anchor) if params.retain_loss in ("anchor", "both") else None
        forget = plan.forget_items
        probe_items = forget if len(forget) <= 512 else rng.choice(forget, 512, replace=False)
        nonmember_items = np.arange(len(plan.nonmember_data))
        target = None
        ks, steps_done = float("nan"), 0
        criterion = plan.criterion
        for step in range(params.max_steps if criterion else params.steps):
            if criterion and criterion.due(step) and criterion.reached(bundle, step):
                break
            if step % params.check_every == 0:
                target = torch.sort(similarities(bundle, plan.nonmember_data, plan.nonmember_captions,
                                                 nonmember_items, device, generator)).values
                sims = similarities(bundle, setup.train, setup.captions, probe_items, device, generator)
                ks = float(ks_2samp(sims.numpy(), target.numpy()).statistic)
                plan.history.append({"step": step, "ks": ks, "forget_mean_sim": float(sims.mean()),
                                     "nonmember_mean_sim": float(target.mean())})
            model.train()
            loss = torch.zeros((), device=device)
            if params.decouple != "none" and params.decouple_weight > 0:
                f_items = rng.choice(forget, size=min(params.batch_size, len(forget)), replace=False)
                f_sims = pair_similarity(bundle, bundle.image_batch(setup.train, f_items, device),
                                         setup.captions.pick(f_items, generator).to(device))
                loss = loss + params.decouple_weight * quantile_matching_loss(f_sims, target,
                                                                              one_sided=params.decouple == "hinge")
            if params.retain_weight > 0:
                r_items = rng.choice(plan.retain_proxy, size=min(params.batch_size, len(plan.retain_proxy)),
                                     replace=False)
                r_images = bundle.image_batch(setup.train, r_items, device)
                r_rows = setup.captions.pick_rows(r_items, generator)
                r_tokens = setup.captions.tokens[r_rows].to(device)
                anchored = None
                if anchor_embeddings is not None:
                    anchored = anchor_embeddings(r_items, r_rows, r_images, r_tokens)
                loss = loss + params.retain_weight * retain_term(model, r_images, r_tokens, params.retain_loss,
                                                                 anchored)
            if not loss.requires_grad:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            projection.apply()
            steps_done += 1
        if criterion and (not criterion.measures or criterion.measures[-1]["step"] != steps_done):
            criterion.reached(bundle, steps_done)  # where the repair ended, for the record
    model.eval()
    result = {"steps": steps_done, "final_ks": ks, "history": plan.history, "displaced_blocks": len(plan.blocks)}
    if criterion:
        result["repair_criterion"] = criterion.summary()
    return result
