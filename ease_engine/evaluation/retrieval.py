"""Cross-modal retrieval Recall@K with several captions per image (the Flickr30K protocol).

Scores are cosine similarities: both embedding sets are L2-normalised here, so callers may
pass raw tower outputs (the CLIP temperature does not change rankings).

- Image to text: the rank of image i is the number of captions NOT belonging to i whose
  score is strictly greater than the best score among i's own captions. Any own caption
  counts as a hit, so recall@K is the share of images with rank < K.
- Text to image: the rank of caption j is the number of images other than its own whose
  score is strictly greater than the score of its own image.

Ties therefore favour the correct item (with continuous embeddings they have probability
zero). The similarity matrix is never built whole: queries are processed in chunks of
``chunk_size`` rows, so peak memory is O(chunk_size * max(N, M)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def retrieval_ranks(
    image_emb: Array,
    text_emb: Array,
    text_owner: Array,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query ranks (0 = correct item first): (image-to-text ranks (N,), text-to-image ranks (M,)).

    ``image_emb`` (N, D), ``text_emb`` (M, D), ``text_owner`` (M,) int: the image index of each
    caption. Every image needs at least one caption.
    """
    return _ranks(*_prepare(image_emb, text_emb, text_owner), chunk_size)


def _ranks(images: torch.Tensor, texts: torch.Tensor, owner: torch.Tensor,
           chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n, m = images.shape[0], texts.shape[0]

    i2t = torch.empty(n, dtype=torch.long, device=images.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        scores = images[start:stop] @ texts.T  # (c, M)
        own = owner[None, :] == torch.arange(start, stop, device=images.device)[:, None]
        best_own = scores.masked_fill(~own, float("-inf")).amax(dim=1, keepdim=True)
        i2t[start:stop] = ((scores > best_own) & ~own).sum(dim=1)

    t2i = torch.empty(m, dtype=torch.long, device=images.device)
    for start in range(0, m, chunk_size):
        stop = min(start + chunk_size, m)
        scores = texts[start:stop] @ images.T  # (c, N)
        own_score = scores.gather(1, owner[start:stop, None])
        # the own image never counts: its score is not strictly greater than itself
        t2i[start:stop] = (scores > own_score).sum(dim=1)
    return i2t, t2i


def recall_at_k(
    image_emb: Array,
    text_emb: Array,
    text_owner: Array,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K in percent (0-100) for both directions: keys ``i2t_r{K}`` and ``t2i_r{K}``.

    recall@K = 100 * mean(rank < K) with the multi-caption ranks of :func:`retrieval_ranks`.
    """
    _check_ks(ks)
    i2t, t2i = retrieval_ranks(image_emb, text_emb, text_owner, chunk_size=chunk_size)
    result: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            result[f"{direction}_r{int(k)}"] = 100.0 * float((ranks < int(k)).double().mean())
    return result


def per_image_recall(
    image_emb: Array,
    text_emb: Array,
    text_owner: Array,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> np.ndarray:
    """The mean of :func:`recall_at_k`'s values (both directions, every K), split into one share per image (N,),
    in percent: their mean is that mean recall, and their spread its sampling error over images.

    Image i's share is half its image-to-text hit rate over ``ks`` plus half the text-to-image hit rates of its
    own captions, summed and scaled by N / M (an image with more captions carries more of the text-to-image
    mean, as it does in ``recall_at_k``).
    """
    _check_ks(ks)
    images, texts, owner = _prepare(image_emb, text_emb, text_owner)
    i2t, t2i = _ranks(images, texts, owner, chunk_size)

    def hit_rate(ranks: torch.Tensor) -> torch.Tensor:
        return torch.stack([(ranks < int(k)).double() for k in ks]).mean(dim=0)

    n, m = len(i2t), len(t2i)
    captions = torch.zeros(n, dtype=torch.float64, device=t2i.device).index_add_(0, owner, hit_rate(t2i))
    return (50.0 * (hit_rate(i2t) + captions * (n / m))).cpu().numpy()


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(int(k) < 1 for k in ks) or len({int(k) for k in ks}) != len(ks):
        raise ValueError(f"ks must be distinct positive integers, got {ks}")


def _prepare(image_emb: Array, text_emb: Array, text_owner: Array) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = _normalised(image_emb, "image_emb")
    texts = _normalised(text_emb, "text_emb").to(device=images.device, dtype=images.dtype)
    owner = torch.as_tensor(np.asarray(text_owner) if not isinstance(text_owner, torch.Tensor) else text_owner)
    if owner.dtype.is_floating_point or owner.dtype == torch.bool or owner.ndim != 1:
        raise ValueError(f"text_owner must be a 1-D integer array, got {owner.dtype} of shape {tuple(owner.shape)}")
    owner = owner.to(device=images.device, dtype=torch.long)
    n, m = images.shape[0], texts.shape[0]
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"embedding sizes differ: images {images.shape[1]}, texts {texts.shape[1]}")
    if n == 0 or m == 0:
        raise ValueError("need at least one image and one caption")
    if owner.numel() != m:
        raise ValueError(f"text_owner has {owner.numel()} entries for {m} captions")
    if int(owner.min()) < 0 or int(owner.max()) >= n:
        raise ValueError(f"text_owner must index images 0..{n - 1}")
    captions_per_image = torch.bincount(owner, minlength=n)
    if bool((captions_per_image == 0).any()):
        missing = torch.nonzero(captions_per_image == 0).flatten()[:5].tolist()
        raise ValueError(f"every image needs at least one caption; images without one include {missing}")
    return images, texts, owner


def _normalised(embeddings: Array, name: str) -> torch.Tensor:
    x = embeddings if isinstance(embeddings, torch.Tensor) else torch.as_tensor(np.asarray(embeddings))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (count, dim), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return torch.nn.functional.normalize(x, dim=1)


__all__ = ["per_image_recall", "recall_at_k", "retrieval_ranks"]
