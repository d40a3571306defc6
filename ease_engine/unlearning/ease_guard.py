"""EASE's forget-gradient guard (``EaseParams.guard_rank``), used by ``ease.py``: per block the displacement
moves, the leading directions of the forget pairs' per-pair contrastive gradients at the excised model.

Let G (d x n) hold, per block, the gradient of each forget pair's loss against a fixed gallery of retained
pairs (``gallery_contrastive_loss``), one column per pair. The guard wants G's leading left singular subspace
(at most ``rank`` directions). G itself is not formed: it is sketched as Y = G Omega with a Gaussian Omega of
``rank + OVERSAMPLING`` columns (the randomized range finder of Halko, Martinsson and Tropp 2011), and the
guard is Y's leading left singular subspace (99.9% of Y's energy, at most ``rank`` directions): a one-pass
estimate, close to G's where G's spectrum decays fast and looser where it is flat (no power iteration). Each
column of Y is the gradient of one weighted sum of the pairs' losses, sum_i Omega_ij loss_i: a chunk of pairs
costs one forward and one backward per sketch column, so the pairs processed are n (rank + OVERSAMPLING),
more than the n of per-pair gradients, but in batches, and the SVD is of a d x (rank + OVERSAMPLING) matrix,
not d x n. With no more pairs than sketch columns, Omega is the identity: Y = G, exactly. The temperature
(``logit_scale``) is held fixed: it is no knowledge of the pairs.

Measured reason (exclusive, 3 seeds, docs/ease.md "The guard, sketched"): the first build took one backward
per pair over every block and an SVD of d x n per block (n = 1563 forget pairs), which made EASE as slow as
the retrain; only the blocks the displacement moves need a guard, and only its leading directions are kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ease_engine.federation.training import derive_seed, gallery_contrastive_loss
from ease_engine.linalg.subspace import orthonormal_basis
from ease_engine.models.blocks import ParameterBlock, block_gradients, only_trainable
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning.base import Cost, ErasureTarget, UnlearningContext

OVERSAMPLING = 8  # sketch columns beyond the rank kept (Halko et al. suggest 5 to 10)
GALLERY_SIZE = 63  # retained pairs each forget pair's loss is contrasted against (also in samples scope)
CHUNK = 64  # forget pairs per forward pass


def sketch_matrix(n_pairs: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """Omega (n x l): the identity when n <= rank + OVERSAMPLING (the sketch is G itself), else Gaussian."""
    columns = rank + OVERSAMPLING
    if n_pairs <= columns:
        return torch.eye(n_pairs)
    return torch.randn(n_pairs, columns, generator=generator)


def sketch_gradients(model: torch.nn.Module, blocks: list[ParameterBlock],
                     pair_losses: Callable[[np.ndarray], torch.Tensor], items: np.ndarray,
                     omega: torch.Tensor) -> dict[str, torch.Tensor]:
    """Y = G Omega per block (d x l, float32 on the CPU), where column i of G is the gradient of
    ``pair_losses``'s i-th value (one loss per pair of ``items``, computed CHUNK pairs at a time). Blocks whose
    parameter no loss reaches are left out; rows of an embedding no pair uses come back as zero columns. Only
    the blocks' parameters take gradients while it runs."""
    named = dict(model.named_parameters())
    wanted = sorted({b.param for b in blocks})
    if not wanted or not len(items):
        return {}
    sketch: dict[str, torch.Tensor] = {}
    with only_trainable(model, wanted):
        for start in range(0, len(items), CHUNK):
            losses = pair_losses(items[start: start + CHUNK])
            weights = omega[start: start + len(losses)].to(losses)
            for j in range(weights.shape[1]):
                grads = torch.autograd.grad(losses @ weights[:, j], [named[n] for n in wanted],
                                            retain_graph=j + 1 < weights.shape[1], allow_unused=True)
                for name, g in block_gradients(dict(zip(wanted, grads, strict=True)), blocks).items():
                    if name not in sketch:
                        sketch[name] = torch.zeros(g.numel(), weights.shape[1])
                    sketch[name][:, j] += g
    return sketch


def gallery_features(context: UnlearningContext, bundle: ClipBundle, target: ErasureTarget,
                     rng: np.random.Generator, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The image and text features (unnormalised) of GALLERY_SIZE retained pairs drawn with ``rng`` (one caption
    each, drawn with ``generator``): what each forget pair's loss is contrasted against."""
    setup = context.setup
    pool = context.retain_items(target)
    gallery = rng.choice(pool, size=min(GALLERY_SIZE, len(pool)), replace=False)
    bundle.model.eval()
    with torch.no_grad():
        images = bundle.model.encode_image(bundle.image_batch(setup.train, gallery, setup.device))
        texts = bundle.model.encode_text(setup.captions.pick(gallery, generator).to(setup.device))
    return images, texts


def forget_gradient_guard(context: UnlearningContext, bundle: ClipBundle, target: ErasureTarget,
                          blocks: list[ParameterBlock], rank: int, seed: int, cost: Cost,
                          max_pairs: int | None = None) -> dict[str, torch.Tensor]:
    """Per block of ``blocks``, an orthonormal basis (d x k, k <= ``rank``) of the forget pairs' leading
    gradient directions at ``bundle``'s weights (from at most ``max_pairs`` of them, drawn uniformly: the
    leading directions of a uniform sample of G's columns estimate G's); blocks the forget pairs' loss does
    not reach are left out."""
    setup = context.setup
    device = setup.device
    generator = torch.Generator().manual_seed(derive_seed(seed, 0x6A7D))
    rng = np.random.default_rng(derive_seed(seed, 0x6A7E))
    g_img, g_txt = gallery_features(context, bundle, target, rng, generator)
    forget = context.forget_items(target)
    if max_pairs is not None and len(forget) > max_pairs:
        forget = np.sort(rng.choice(forget, size=max_pairs, replace=False))
    model = bundle.model

    def pair_losses(items: np.ndarray) -> torch.Tensor:
        images = model.encode_image(bundle.image_batch(setup.train, items, device))
        texts = model.encode_text(setup.captions.pick(items, generator).to(device))
        scale = model.logit_scale.detach().exp().clamp(max=100.0)
        return gallery_contrastive_loss(images, texts, g_img, g_txt, scale)

    omega = sketch_matrix(len(forget), rank, generator)
    sketch = sketch_gradients(model, blocks, pair_losses, forget, omega)
    cost.client_samples += len(forget) * omega.shape[1]  # each sketch column is a backward pass over every pair
    return {name: orthonormal_basis(y, energy=0.999, rank_cap=rank) for name, y in sketch.items()
            if float(y.abs().max()) > 0}
