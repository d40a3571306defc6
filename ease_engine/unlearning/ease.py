"""EASE: entanglement-aware anchor closure (../shared/design/EASE.md), as this project builds it.

Closure 1, excision (principal-angle entanglement). Per block l, the retained support
U_R = orth[U_k S_k : k != f] (energy ``retained_energy``) and the forget basis
U_f = orth[U_f, C_f] from the ledger. The cosine-sine split of U_R^T U_f gives the
principal angles; the exclusive basis E^l spans the sine parts of the forget directions
with sin(theta) >= ``sin_min``. A block no retained client ever moved (the embedding row of
a word only the departing client used) is exclusive as a whole: its contribution C_f is
removed exactly, which puts it back where the retrain reference has it.

Deviation, measured on the default federation (docs/benchmarks.md): subtracting
E E^T C_f from ENTANGLED blocks (``excise_blocks="exclusive"``) destroys the model even at
sin >= 0.95, where it takes one or two directions per block and 19% of |C_f|^2: test R@1
falls from 38 to 6 (retrain: 28), because every later round of every client was built on
those directions. So by default only wholly exclusive blocks are excised, and the entangled
blocks' exclusive directions are left to closure 2, which moves along them by the amount
the data asks for instead of by the recorded contribution.

Closure 2, bilateral displacement (bilinear cross-modal coupling). A short optimisation of
BOTH towers (``towers``), each block's gradient projected onto its exclusive basis
(g <- E E^T g), minimising

    L = L_decouple(D_f) + retain_weight * L_retain(D_r)

L_decouple compares the sorted similarities s(x, y) of a batch of forget pairs with the
quantiles of held-out non-member pairs, re-measured with the current model every
``check_every`` steps; with ``decouple="hinge"`` only forget quantiles above the non-member
ones are penalised, so forget pairs are pushed down to the level of pairs the model never
saw and never pulled up (pulling up, ``"match"``, re-taught the concept: probe 72% against
retrain's 7%). L_retain keeps both towers' unimodal embeddings on a retain proxy close to
the ANCHOR model, the original by default: with the entangled blocks not excised there is
nothing for it to pull back, and it keeps retain and test R@1 at retrain's level. The loop
stops after ``steps`` or once the two-sample KS statistic between forget and non-member
similarities is <= ``ks_stop`` (0 disables it: with the hinge the forget similarities end
below the non-members', where the KS statistic grows again).

Closure 3, the Forget Lock (federated update drift): E per block, the displacement
d = E^T (theta_after - theta_before) and the anchor, saved with the version; the
federation applies it to every later client update.

Sample scope: U_f comes from per-sample gradients of the contrastive loss of the
subject's pairs (SVD, rank <= ``sample_rank``); the retained support is the whole ledger;
there is no recorded contribution, so closure 1's excision step is skipped and the
displacement alone removes the pairs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import ks_2samp

from ease_engine.federation.training import EncodedCaptions, derive_seed
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.linalg.subspace import exclusive_basis, orthonormal_basis
from ease_engine.models.blocks import ParameterBlock, read_blocks, write_blocks
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning.base import Cost, ErasureTarget, Timer, UnlearningContext, UnlearningOutcome
from ease_engine.unlearning.support import retained_support


class EaseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # closure 1
    excise: bool = True
    excise_blocks: Literal["exclusive", "wholly_exclusive"] = Field(
        "wholly_exclusive",
        description="exclusive: every block's E E^T C_f; wholly_exclusive: only blocks no retained client moved "
        "(removed exactly), leaving entangled blocks to the displacement",
    )
    sin_min: float = Field(0.95, gt=0, le=1, description="a forget direction is exclusive if sin(angle) >= this")
    retained_energy: float = Field(0.999, gt=0, le=1, description="energy kept in the retained support U_R")
    # closure 2
    displace: bool = True
    towers: Literal["both", "image", "text"] = "both"
    steps: int = Field(40, ge=0)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(64, ge=2)
    retain_weight: float = Field(5.0, ge=0)
    retain_anchor: Literal["excised", "original"] = "original"
    retain_proxy_size: int = Field(512, ge=2, description="retained pairs the server uses as proxy D_r")
    ks_stop: float = Field(0.0, ge=0, le=1, description="stop once KS(forget, non-member similarities) <= this")
    check_every: int = Field(20, ge=1)
    decouple: Literal["hinge", "match"] = Field(
        "hinge", description="hinge: push forget similarities down to the non-member quantiles; match: both ways"
    )
    displace_wholly_exclusive: bool = Field(
        True, description="also move blocks no retained client touched (they were excised exactly)"
    )
    nonmember_reference: Literal["matched", "all"] = Field(
        "matched",
        description="matched: for each forget pair the held-out pair whose caption is nearest in the original "
        "model's text space (non-members of the same distribution); all: every held-out pair",
    )
    refresh_target: bool = Field(
        True, description="re-measure the non-member similarities with the current model at every check"
    )
    # closure 3
    lock: bool = True
    lock_epsilon: float | None = Field(None, gt=0)
    # sample scope
    sample_rank: int = Field(8, ge=1)
    seed: int = 0


# ---------------------------------------------------------------------- closure 1
def forget_basis_for(basis: torch.Tensor, contribution: torch.Tensor | None) -> torch.Tensor:
    """orth[U_f, C_f / |C_f|]: the span of f's updates, guaranteed to contain its contribution."""
    columns = [basis]
    if contribution is not None and float(contribution.norm()) > 0:
        columns.append((contribution / contribution.norm()).reshape(-1, 1))
    return orthonormal_basis(torch.cat(columns, dim=1))


def exclusive_bases(
    context: UnlearningContext, forget_client: int | None, forget_bases: dict[str, torch.Tensor], params: EaseParams
) -> tuple[dict[str, torch.Tensor], dict]:
    """E per block and the principal-angle statistics (for the report and the histogram)."""
    exclusive, angles_deg, whole = {}, [], []
    for name, u_f in forget_bases.items():
        if u_f.shape[1] == 0:
            continue
        others = [k for k in context.ledger.clients if k != forget_client]
        u_r = retained_support(context.ledger, name, others, params.retained_energy)
        if u_r.shape[1] == 0:
            exclusive[name] = u_f
            whole.append(name)
            angles_deg.extend([90.0] * u_f.shape[1])
            continue
        e, angles = exclusive_basis(u_r, u_f, params.sin_min)
        angles_deg.extend(torch.rad2deg(angles).tolist())
        if e.shape[1]:
            exclusive[name] = e
    stats = {
        "principal_angles_deg": [round(a, 3) for a in angles_deg],
        "exclusive_blocks": len(exclusive),
        "wholly_exclusive_blocks": whole,
        "exclusive_rank": int(sum(e.shape[1] for e in exclusive.values())),
    }
    return exclusive, stats


def excise_contribution(
    values: dict[str, torch.Tensor], contributions: dict[str, torch.Tensor], exclusive: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], float]:
    """theta <- theta - E E^T C_f per block; returns the new values and the share of |C_f|^2 removed.

    The ledger's contributions and the bases live on the CPU; the values on the model's device (a GPU)."""
    out, removed, total = dict(values), 0.0, 0.0
    for name, c in contributions.items():
        total += float(c.double().pow(2).sum())
        e = exclusive.get(name)
        if e is None:
            continue
        part = (e @ (e.T @ c)).to(device=values[name].device, dtype=values[name].dtype)
        out[name] = values[name] - part
        removed += float(part.double().pow(2).sum())
    return out, removed / max(total, 1e-30)


# ---------------------------------------------------------------------- closure 2
def _tower_of(block: ParameterBlock) -> str:
    return "image" if block.param.startswith("visual.") else "text"


def pair_similarity(bundle: ClipBundle, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    img = F.normalize(bundle.model.encode_image(images), dim=-1)
    txt = F.normalize(bundle.model.encode_text(tokens), dim=-1)
    return (img * txt).sum(dim=-1)


@torch.no_grad()
def similarities(
    bundle: ClipBundle,
    dataset,
    captions: EncodedCaptions,
    items: np.ndarray,
    device: str,
    generator: torch.Generator,
    batch: int = 256,
) -> torch.Tensor:
    bundle.model.eval()
    out = [
        pair_similarity(
            bundle,
            bundle.image_batch(dataset, items[i : i + batch], device),
            captions.pick(items[i : i + batch], generator).to(device),
        )
        for i in range(0, len(items), batch)
    ]
    return torch.cat(out).cpu()


def quantile_matching_loss(sims: torch.Tensor, target_sorted: torch.Tensor, one_sided: bool = False) -> torch.Tensor:
    """Squared 1-D Wasserstein distance between a batch of similarities and a target distribution.

    ``one_sided`` only penalises quantiles above the target's: forget pairs are pushed down to
    the non-member level but never pulled up to it (pulling up would teach the forgotten pairs).
    """
    levels = (torch.arange(len(sims), dtype=torch.float32) + 0.5) / len(sims)
    index = (levels * len(target_sorted)).long().clamp(max=len(target_sorted) - 1)
    diff = torch.sort(sims).values - target_sorted[index].to(sims.device)
    return (diff.clamp(min=0) if one_sided else diff).pow(2).mean()


@torch.no_grad()
def matched_nonmembers(
    context: UnlearningContext,
    forget_items: np.ndarray,
    test_captions: EncodedCaptions,
    rng,
    generator,
    sample: int = 512,
) -> np.ndarray:
    """For (a sample of) the forget pairs, the nearest held-out pair by caption in the original model's
    text space: non-members of the same distribution, so the decoupling target drops with the concept."""
    setup = context.setup
    device = setup.device
    items = forget_items if len(forget_items) <= sample else rng.choice(forget_items, sample, replace=False)
    model = setup.bundle.model
    model.eval()
    forget_text = F.normalize(model.encode_text(setup.captions.pick(items, generator).to(device)), dim=-1)
    test_items = np.arange(len(setup.test))
    test_text = F.normalize(model.encode_text(test_captions.pick(test_items, generator).to(device)), dim=-1)
    return test_items[(forget_text @ test_text.T).argmax(dim=1).cpu().numpy()]


@torch.no_grad()
def _embed(bundle: ClipBundle, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return bundle.model.encode_image(images), bundle.model.encode_text(tokens)


def bilateral_displacement(
    context: UnlearningContext,
    bundle: ClipBundle,
    anchor: ClipBundle,
    exclusive: dict[str, torch.Tensor],
    target: ErasureTarget,
    params: EaseParams,
    cost: Cost,
    wholly_exclusive: frozenset[str] = frozenset(),
) -> dict:
    setup = context.setup
    forget_items = context.forget_items(target)
    device = setup.device
    model = bundle.model
    generator = torch.Generator().manual_seed(derive_seed(params.seed, 0xEA5E))
    rng = np.random.default_rng(derive_seed(params.seed, 0xD15))
    retain_pool = context.retain_items(target)
    proxy = rng.choice(retain_pool, size=min(params.retain_proxy_size, len(retain_pool)), replace=False)
    test_captions = EncodedCaptions.build(bundle, setup.test)
    if params.nonmember_reference == "matched":
        nonmember = matched_nonmembers(context, forget_items, test_captions, rng, generator)
    else:
        nonmember = np.arange(len(setup.test))
    nonmember_sims = torch.sort(similarities(bundle, setup.test, test_captions, nonmember, device, generator)).values

    blocks = [
        b
        for b in setup.blocks
        if b.name in exclusive
        and params.towers in ("both", _tower_of(b))
        and (params.displace_wholly_exclusive or b.name not in wholly_exclusive)
    ]
    params_by_name = dict(model.named_parameters())
    trainable = {b.param for b in blocks}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    optimizer = torch.optim.Adam([params_by_name[n] for n in sorted(trainable)], lr=params.lr, fused=True)
    probe_items = forget_items if len(forget_items) <= 512 else rng.choice(forget_items, 512, replace=False)
    history = []
    ks = float("nan")
    steps_done = 0
    for step in range(params.steps):
        if step % params.check_every == 0:
            if step and params.refresh_target:
                nonmember_sims = torch.sort(
                    similarities(bundle, setup.test, test_captions, nonmember, device, generator)
                ).values
            sims = similarities(bundle, setup.train, setup.captions, probe_items, device, generator)
            ks = float(ks_2samp(sims.numpy(), nonmember_sims.numpy()).statistic)
            history.append({"step": step, "ks": ks, "forget_mean_sim": float(sims.mean())})
            if ks <= params.ks_stop:
                break
        model.train()
        f_items = rng.choice(forget_items, size=min(params.batch_size, len(forget_items)), replace=False)
        r_items = rng.choice(proxy, size=min(params.batch_size, len(proxy)), replace=False)
        f_sims = pair_similarity(
            bundle,
            bundle.image_batch(setup.train, f_items, device),
            setup.captions.pick(f_items, generator).to(device),
        )
        decouple = quantile_matching_loss(f_sims, nonmember_sims, one_sided=params.decouple == "hinge")
        r_images = bundle.image_batch(setup.train, r_items, device)
        r_tokens = setup.captions.pick(r_items, generator).to(device)
        ref_img, ref_txt = _embed(anchor, r_images, r_tokens)
        retain = F.mse_loss(model.encode_image(r_images), ref_img) + F.mse_loss(model.encode_text(r_tokens), ref_txt)
        loss = decouple + params.retain_weight * retain
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _project_gradients(model, blocks, exclusive)
        optimizer.step()
        cost.client_samples += len(f_items)
        cost.server_samples += len(r_items)
        steps_done += 1
    for p in model.parameters():
        p.requires_grad_(False)
    for b in setup.blocks:
        params_by_name[b.param].requires_grad_(True)
    return {"steps": steps_done, "final_ks": ks, "history": history, "displaced_blocks": len(blocks)}


@torch.no_grad()
def _project_gradients(model, blocks: list[ParameterBlock], exclusive: dict[str, torch.Tensor]) -> None:
    """g <- E E^T g for each displaced block; every other gradient entry of those parameters is zeroed."""
    params = dict(model.named_parameters())
    names = {b.param for b in blocks if params[b.param].grad is not None}
    projected = {name: torch.zeros_like(params[name].grad) for name in names}
    for b in blocks:
        if b.param not in projected:
            continue
        grad = params[b.param].grad
        g = grad[list(b.rows)] if b.rows is not None else grad
        e = exclusive[b.name].to(device=g.device, dtype=g.dtype)
        p = (e @ (e.T @ g.reshape(-1))).reshape(g.shape)
        if b.rows is None:
            projected[b.param] = p
        else:
            projected[b.param][list(b.rows)] = p
    for name, g in projected.items():
        params[name].grad.copy_(g)


# ---------------------------------------------------------------------- sample scope
def per_sample_gradient_bases(
    context: UnlearningContext, bundle: ClipBundle, target: ErasureTarget, params: EaseParams, cost: Cost
) -> dict[str, torch.Tensor]:
    """U_f per block from the gradients of each forget pair's contrastive loss (SVD, rank <= sample_rank)."""
    setup = context.setup
    device = setup.device
    generator = torch.Generator().manual_seed(derive_seed(params.seed, 0x5A3))
    rng = np.random.default_rng(derive_seed(params.seed, 0x5A4))
    items = context.forget_items(target)
    pool = context.retain_items(target)
    gallery = rng.choice(pool, size=min(63, len(pool)), replace=False)
    model = bundle.model
    model.eval()
    columns: dict[str, list[torch.Tensor]] = {b.name: [] for b in setup.blocks}
    g_images = bundle.image_batch(setup.train, gallery, device)
    g_tokens = setup.captions.pick(gallery, generator).to(device)
    with torch.no_grad():
        g_img, g_txt = (F.normalize(t, dim=-1) for t in _embed(bundle, g_images, g_tokens))
    for i in items:
        img = F.normalize(model.encode_image(bundle.image_batch(setup.train, np.array([i]), device)), dim=-1)
        txt = F.normalize(model.encode_text(setup.captions.pick(np.array([i]), generator).to(device)), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100.0)
        i2t = scale * torch.cat([img @ txt.T, img @ g_txt.T], dim=1)
        t2i = scale * torch.cat([txt @ img.T, txt @ g_img.T], dim=1)
        loss = 0.5 * (-F.log_softmax(i2t, dim=1)[0, 0] - F.log_softmax(t2i, dim=1)[0, 0])
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads = _block_grads(model, setup.blocks)
        for name, g in grads.items():
            columns[name].append(g)
        cost.client_samples += 1
    model.zero_grad(set_to_none=True)
    bases = {}
    for name, cols in columns.items():
        if cols:
            bases[name] = orthonormal_basis(torch.stack(cols, dim=1), energy=0.999, rank_cap=params.sample_rank)
    return bases


def _block_grads(model, blocks: list[ParameterBlock]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    out = {}
    for b in blocks:
        grad = params[b.param].grad
        if grad is None:
            continue
        g = grad[list(b.rows)] if b.rows is not None else grad
        if float(g.abs().max()) > 0:
            out[b.name] = g.reshape(-1).detach().to("cpu", copy=True)  # bases are computed on the CPU
    return out


# ---------------------------------------------------------------------- the method
def unlearn(context: UnlearningContext, target: ErasureTarget, params: EaseParams) -> UnlearningOutcome:
    ledger = context.require_ledger("ease")
    cost = Cost()
    details: dict = {}
    with Timer() as timer:
        bundle = context.fresh_bundle()
        blocks = context.setup.blocks
        before = context.original_values
        if target.scope == "client":
            record = ledger.client(target.client)
            forget_bases = {b.name: forget_basis_for(record.basis[b.name], record.contribution[b.name]) for b in blocks}
            exclusive, details["angles"] = exclusive_bases(context, target.client, forget_bases, params)
            values = before
            if params.excise:
                excised = exclusive
                if params.excise_blocks == "wholly_exclusive":
                    whole = set(details["angles"]["wholly_exclusive_blocks"])
                    excised = {name: e for name, e in exclusive.items() if name in whole}
                values, share = excise_contribution(before, record.contribution, excised)
                details["excised_share_of_contribution"] = share
                write_blocks(bundle.model, blocks, values)
        else:
            forget_bases = per_sample_gradient_bases(context, bundle, target, params, cost)
            exclusive, details["angles"] = exclusive_bases(context, None, forget_bases, params)
        anchor = context.fresh_bundle() if params.retain_anchor == "original" else _frozen_copy(bundle)
        if params.displace and params.steps and exclusive:
            context.report_stage("displacing", 0.4)
            details["displacement"] = bilateral_displacement(
                context,
                bundle,
                anchor,
                exclusive,
                target,
                params,
                cost,
                frozenset(details["angles"]["wholly_exclusive_blocks"]),
            )
        lock = None
        if params.lock and exclusive:
            after = read_blocks(bundle.model, blocks)
            lock = ForgetLock(metadata={"method": "ease", "client": str(target.client), "scope": target.scope})
            for name, e in exclusive.items():  # the lock is kept on the CPU (it is saved, then applied anywhere)
                lock.add_block(name, e, before[name].cpu(), after[name].cpu(), epsilon=params.lock_epsilon)
    return UnlearningOutcome(bundle, cost, timer.seconds, lock=lock, details=details)


def _frozen_copy(bundle: ClipBundle) -> ClipBundle:
    anchor = bundle.copy()
    anchor.model.eval()
    return anchor
