"""EASE in samples scope without excision (``sample_excision = "none"``: the earlier design, kept as an
ablation row; the default excises the client's exclusive contribution), used by ``ease.py``.

There is no recorded contribution per pair, so U_s (per block) comes from the gradients of each forget
pair's contrastive loss at the current weights (SVD, rank <= ``sample_rank``); the exclusive basis E
is the part of span(U_s) outside the whole ledger's support (every client, the subject's own included:
the rest of that client's data stays), by the cosine-sine split of principal angles (``sin_min``).
Closure 1's excision needs a contribution, so the displacement alone removes the pairs, moving only
inside E.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ease_engine.federation.exclusive import retained_support
from ease_engine.federation.training import derive_seed, gallery_contrastive_loss
from ease_engine.linalg.subspace import exclusive_basis, orthonormal_basis
from ease_engine.models.blocks import ParameterBlock, block_gradients
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning.base import Cost, ErasureTarget, UnlearningContext
from ease_engine.unlearning.ease_guard import gallery_features


def _block_grads(model, blocks: list[ParameterBlock]) -> dict[str, torch.Tensor]:
    grads = block_gradients({name: p.grad for name, p in model.named_parameters()}, blocks)
    return {name: g for name, g in grads.items() if float(g.abs().max()) > 0}


def per_sample_gradient_bases(context: UnlearningContext, bundle: ClipBundle, target: ErasureTarget,
                              rank: int, seed: int, cost: Cost) -> dict[str, torch.Tensor]:
    """U_s per block from the gradients of each forget pair's contrastive loss (SVD, rank <= ``rank``)."""
    setup = context.setup
    device = setup.device
    generator = torch.Generator().manual_seed(derive_seed(seed, 0x5A3))
    rng = np.random.default_rng(derive_seed(seed, 0x5A4))
    g_img, g_txt = (F.normalize(f, dim=-1) for f in gallery_features(context, bundle, target, rng, generator))
    model = bundle.model
    columns: dict[str, list[torch.Tensor]] = {b.name: [] for b in setup.blocks}
    for i in context.forget_items(target):
        img = model.encode_image(bundle.image_batch(setup.train, np.array([i]), device))
        txt = model.encode_text(setup.captions.pick(np.array([i]), generator).to(device))
        loss = gallery_contrastive_loss(img, txt, g_img, g_txt, model.logit_scale.exp().clamp(max=100.0))[0]
        model.zero_grad(set_to_none=True)
        loss.backward()
        for name, g in _block_grads(model, setup.blocks).items():
            columns[name].append(g)
        cost.client_samples += 1
    model.zero_grad(set_to_none=True)
    return {name: orthonormal_basis(torch.stack(cols, dim=1), energy=0.999, rank_cap=rank)
            for name, cols in columns.items() if cols}


def sample_exclusive_bases(context: UnlearningContext, forget_bases: dict[str, torch.Tensor], sin_min: float,
                           energy: float) -> tuple[dict[str, torch.Tensor], list[float]]:
    """E per block (the subject's gradient directions outside the whole ledger's support) and all angles."""
    ledger = context.require_ledger("ease")
    exclusive, angles = {}, []
    for name, u_s in forget_bases.items():
        support = retained_support(ledger, name, ledger.clients, energy)
        if support.shape[1] == 0:
            exclusive[name] = u_s
            angles.extend([90.0] * u_s.shape[1])
            continue
        e, theta = exclusive_basis(support, u_s, sin_min)
        angles.extend(torch.rad2deg(theta).tolist())
        if e.shape[1]:
            exclusive[name] = e
    return exclusive, angles
