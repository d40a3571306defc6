"""MultiDelete, adapted to a federated CLIP (Cheng and Amiri 2024).

MultiDelete ("Multimodal Machine Unlearning") unlearns multimodal pairs with three losses,
implemented here from the paper's description (its public code's unimodal branch is broken,
FIELD-NOTES):

- modality decoupling on the forget pairs: a forget image-text pair should look as
  unrelated as a mismatched pair. For CLIP the pair's joint representation is its cosine
  similarity s(x, y), so L_md = MSE(s(x_f, y_f), s_orig(x_f, y_rand)), where y_rand is the
  caption of a random retained pair and s_orig the ORIGINAL model (fixed targets: the loss
  cannot be lowered by making mismatched pairs look alike too);
- multimodal knowledge retention on retained pairs: L_mm = MSE between the current and the
  original cosine-similarity matrix of a retained batch (every image against every text);
- unimodal knowledge retention on retained pairs: L_um = MSE(f_v(x_r), f_v_orig(x_r)) +
  MSE(f_t(y_r), f_t_orig(y_r)), each tower's embeddings separately.

L = decouple_weight * L_md + multimodal_weight * L_mm + unimodal_weight * L_um, minimised
with Adam on every trainable block for ``steps`` steps.

Federated deployment: the server runs the optimisation on a retain proxy (a seeded sample
of ``retain_proxy_size`` retained pairs, as EASE's displacement does); the forget pairs
stay on the forget client, which computes the decoupling term's gradient at every step.
So each step is a communication round with that client (model down, gradient up), its
forget pairs count as client samples and the retained batch as server samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ease_engine.federation.exclusive import ExclusiveContribution
from ease_engine.federation.training import derive_seed
from ease_engine.models.blocks import read_blocks, write_blocks
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning.base import Cost, ErasureTarget, Timer, UnlearningContext, UnlearningOutcome


class MultiDeleteParams(BaseModel):
    """MultiDelete settings: the three loss weights and the server-side optimisation budget."""

    model_config = ConfigDict(extra="forbid")

    decouple_weight: float = Field(1.0, ge=0, description="weight of modality decoupling on the forget pairs")
    multimodal_weight: float = Field(1.0, ge=0, description="weight of the joint-similarity retention loss")
    unimodal_weight: float = Field(1.0, ge=0, description="weight of the per-tower embedding retention loss")
    steps: int = Field(60, ge=0, description="optimisation steps")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (the equal-tuning winner)")
    batch_size: int = Field(64, ge=2, description="forget pairs and retained pairs per step (each)")
    retain_proxy_size: int = Field(512, ge=2, description="retained pairs the server uses as its proxy")
    seed: int = Field(0, description="seed of the proxy, the batches and the mismatched captions")
    reset_wholly_exclusive: bool = Field(
        False, description="ablation: first remove the client's contribution exactly from the blocks no retained "
        "client moved (EASE's exact excision of wholly exclusive blocks, e.g. the embedding row of a word only "
        "the client used), then optimise; client scope, needs the ledger")


def _encode(bundle: ClipBundle, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return bundle.model.encode_image(images), bundle.model.encode_text(tokens)


def pair_cosine(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """s(x_i, y_i) for each row: cosine similarity of matched rows."""
    return (F.normalize(image_features, dim=-1) * F.normalize(text_features, dim=-1)).sum(dim=-1)


def cosine_matrix(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    return F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T


def multidelete_losses(
    current: ClipBundle,
    original: ClipBundle,
    forget_images: torch.Tensor,
    forget_tokens: torch.Tensor,
    random_tokens: torch.Tensor,
    retain_images: torch.Tensor,
    retain_tokens: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The three MultiDelete losses (differentiable in ``current``; ``original`` is the frozen model)."""
    with torch.no_grad():
        target = pair_cosine(*_encode(original, forget_images, random_tokens))
        ref_img, ref_txt = _encode(original, retain_images, retain_tokens)
    f_img, f_txt = _encode(current, forget_images, forget_tokens)
    r_img, r_txt = _encode(current, retain_images, retain_tokens)
    return {
        "decouple": F.mse_loss(pair_cosine(f_img, f_txt), target),
        "multimodal": F.mse_loss(cosine_matrix(r_img, r_txt), cosine_matrix(ref_img, ref_txt)),
        "unimodal": F.mse_loss(r_img, ref_img) + F.mse_loss(r_txt, ref_txt),
    }


def _reset_wholly_exclusive(context: UnlearningContext, target: ErasureTarget, bundle: ClipBundle) -> None:
    exclusive = ExclusiveContribution.from_ledger(context.require_ledger("multidelete with reset"), target.client)
    values = read_blocks(bundle.model, context.setup.blocks)
    write_blocks(bundle.model, context.setup.blocks, {
        name: value - exclusive.parts[name].to(value) if name in exclusive.wholly_exclusive else value
        for name, value in values.items()})


def unlearn(context: UnlearningContext, target: ErasureTarget, params: MultiDeleteParams) -> UnlearningOutcome:
    context.check_target(target)
    setup = context.setup
    device = setup.device
    cost = Cost()
    with Timer() as timer:
        bundle = context.fresh_bundle()
        if params.reset_wholly_exclusive and target.scope == "client":
            _reset_wholly_exclusive(context, target, bundle)
        original = context.fresh_bundle()  # a frozen copy: setup.bundle itself is never touched
        original.model.eval()
        for p in original.model.parameters():
            p.requires_grad_(False)
        rng = np.random.default_rng(derive_seed(params.seed, target.client, 0x3D1))
        generator = torch.Generator().manual_seed(derive_seed(params.seed, target.client, 0x3D2))
        forget = context.forget_items(target)
        pool = context.retain_items(target)
        proxy = rng.choice(pool, size=min(params.retain_proxy_size, len(pool)), replace=False)
        model = bundle.model
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=params.lr, fused=True)
        model.train()
        history = []
        for step in range(params.steps):
            f_items = rng.choice(forget, size=min(params.batch_size, len(forget)), replace=False)
            r_items = rng.choice(proxy, size=min(params.batch_size, len(proxy)), replace=False)
            mismatched = rng.choice(proxy, size=len(f_items), replace=True)  # retained: never an f pair
            forget_images = bundle.image_batch(setup.train, f_items, device)
            retain_images = bundle.image_batch(setup.train, r_items, device)
            losses = multidelete_losses(
                bundle,
                original,
                forget_images,
                setup.captions.pick(f_items, generator).to(device),
                setup.captions.pick(mismatched, generator).to(device),
                retain_images,
                setup.captions.pick(r_items, generator).to(device),
            )
            loss = (
                params.decouple_weight * losses["decouple"]
                + params.multimodal_weight * losses["multimodal"]
                + params.unimodal_weight * losses["unimodal"]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            cost.client_samples += len(f_items)
            cost.server_samples += len(r_items)
            cost.add_round(1, context.numbers_per_model())  # model to the forget client, its gradient back
            history.append({"step": step, **{k: float(v.detach()) for k, v in losses.items()}})
        optimizer.zero_grad(set_to_none=True)
    details = {"steps": len(history), "retain_proxy": len(proxy), "history": history}
    return UnlearningOutcome(bundle, cost, timer.seconds, details=details)
