"""Local CLIP training on one client's pairs: the inner loop of FedAvg.

Everything random (batch order, which caption of each image) comes from a generator
seeded by (run seed, round, client), so a round can be replayed exactly: this is what
makes a resumed federation end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ease_engine.data.dataset import CaptionDataset
from ease_engine.models.factory import ClipBundle


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs and platforms."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class EncodedCaptions:
    """All captions of a data set tokenized once; ``offsets[i]:offsets[i+1]`` are image i's."""

    tokens: torch.Tensor  # (M, context) int64
    offsets: np.ndarray  # (N + 1,)

    @classmethod
    def build(cls, bundle: ClipBundle, dataset: CaptionDataset) -> EncodedCaptions:
        tokens = bundle.tokenize_each_once(dataset.caption_owner()[0])
        counts = np.array([len(c) for c in dataset.captions], dtype=np.int64)
        return cls(tokens=tokens, offsets=np.concatenate([[0], np.cumsum(counts)]))

    def token_ids(self) -> torch.Tensor:
        return torch.unique(self.tokens)

    def pick_rows(self, items: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """One caption per item, chosen uniformly among its captions: its row in ``tokens``."""
        counts = torch.from_numpy(self.offsets[items + 1] - self.offsets[items])
        choice = (torch.rand(len(items), generator=generator) * counts).long()
        return torch.from_numpy(self.offsets[items]) + choice

    def pick(self, items: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """One caption per item, chosen uniformly among its captions: its tokens."""
        return self.tokens[self.pick_rows(items, generator)]


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (the CLIP objective)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp().clamp(max=100.0) * image_features @ text_features.t()
    labels = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def gallery_contrastive_loss(images: torch.Tensor, texts: torch.Tensor, gallery_images: torch.Tensor,
                             gallery_texts: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Each pair's symmetric InfoNCE loss against a gallery of other pairs (one value per pair): its own
    caption among the gallery's captions, and its own image among the gallery's images. Features are
    normalised here; ``scale`` is the inverse temperature. (The membership auditor's loss attack and EASE's
    per-pair gradients in samples scope and its forget-gradient guard.)"""
    images, texts = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    gallery_images, gallery_texts = F.normalize(gallery_images, dim=-1), F.normalize(gallery_texts, dim=-1)
    own = (images * texts).sum(dim=-1, keepdim=True)
    i2t = scale * torch.cat([own, images @ gallery_texts.T], dim=1)
    t2i = scale * torch.cat([own, texts @ gallery_images.T], dim=1)
    return 0.5 * (-F.log_softmax(i2t, dim=1)[:, 0] - F.log_softmax(t2i, dim=1)[:, 0])


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices that are not embeddings.

    Embeddings get no decay so that rows no caption uses get exactly zero update (AdamW's
    step is 0 for a zero gradient and zero moments): they stay out of updates and ledger.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=True)


def batches(items: np.ndarray, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """Shuffled mini-batches; a last batch of one pair is dropped (contrastive needs two)."""
    order = items[torch.randperm(len(items), generator=generator).numpy()]
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [b for b in out if len(b) >= 2]


def train_local(
    bundle: ClipBundle,
    dataset: CaptionDataset,
    captions: EncodedCaptions,
    items: Sequence[int] | np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: str,
    amp: bool = False,
) -> dict[str, float]:
    """Train ``bundle.model`` in place on ``items`` of ``dataset``; returns the mean loss, the step count, the
    samples seen and ``train_seconds``, the time in the steps themselves (each step ends by reading its loss,
    which waits for the device).

    ``amp``: the forward pass runs under bfloat16 autocast (``torch.autocast`` on the device's type); the loss
    is computed in float32 from the features, and the weights, gradients and optimizer stay float32 (bfloat16
    has float32's range, so no loss scaling is needed)."""
    model = bundle.model
    model.train()
    items = np.asarray(items, dtype=np.int64)
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, lr, weight_decay)
    device_type = torch.device(device).type
    total, steps = 0.0, 0
    began = time.perf_counter()
    for _ in range(epochs):
        for batch in batches(items, batch_size, generator):
            images = bundle.image_batch(dataset, batch, device)
            texts = captions.pick(batch, generator).to(device)
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=amp):
                image_features, text_features, logit_scale = model(images, texts)[:3]
            loss = clip_loss(image_features.float(), text_features.float(), logit_scale.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
    return {"loss": total / max(steps, 1), "steps": steps, "samples": steps and int(len(items) * epochs),
            "train_seconds": time.perf_counter() - began}
