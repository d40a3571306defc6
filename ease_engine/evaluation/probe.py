"""Multiple-choice caption probe: does an image prefer its true caption over rewritten ones?

For image i with candidate captions t_i1..t_iC (one of them true), the probe is correct when
cos(v_i, t_i,true) > cos(v_i, t_ij) for every other candidate j. Ties count as wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Array = torch.Tensor | np.ndarray


def probe_correct(
    image_emb: Array,
    candidate_text_emb: Array | Sequence[Array],
    true_index: Array,
) -> torch.Tensor:
    """Per-image boolean (N,): the true candidate has the strictly highest cosine similarity.

    ``image_emb`` (N, D); ``candidate_text_emb`` (N, C, D) or a list of N arrays (C_i, D);
    ``true_index`` (N,) int, the position of the true caption among each image's candidates.
    Embeddings are L2-normalised here. An image with a single candidate is trivially correct.
    """
    images = _float_tensor(image_emb, "image_emb")
    if images.ndim != 2:
        raise ValueError(f"image_emb must be (N, D), got shape {tuple(images.shape)}")
    n = images.shape[0]
    truth = torch.as_tensor(np.asarray(true_index) if not isinstance(true_index, torch.Tensor) else true_index)
    if truth.dtype.is_floating_point or truth.ndim != 1 or truth.numel() != n:
        raise ValueError(f"true_index must be {n} integers, got {truth.dtype} of shape {tuple(truth.shape)}")
    truth = truth.to(device=images.device, dtype=torch.long)
    images = F.normalize(images, dim=1)

    if isinstance(candidate_text_emb, torch.Tensor | np.ndarray):
        candidates = _float_tensor(candidate_text_emb, "candidate_text_emb").to(images.device)
        if candidates.ndim != 3 or candidates.shape[0] != n or candidates.shape[2] != images.shape[1]:
            raise ValueError(f"candidate_text_emb must be ({n}, C, {images.shape[1]}), got {tuple(candidates.shape)}")
        if candidates.shape[1] == 0:
            raise ValueError("candidate_text_emb needs at least one candidate per image")
        scores = torch.einsum("nd,ncd->nc", images.to(candidates.dtype), F.normalize(candidates, dim=2))
        return _strictly_best(scores, truth)

    groups = list(candidate_text_emb)
    if len(groups) != n:
        raise ValueError(f"candidate_text_emb has {len(groups)} groups for {n} images")
    correct = torch.zeros(n, dtype=torch.bool, device=images.device)
    for i, group in enumerate(groups):
        cand = _float_tensor(group, f"candidate_text_emb[{i}]").to(images.device)
        if cand.ndim != 2 or cand.shape[1] != images.shape[1] or cand.shape[0] == 0:
            raise ValueError(f"candidate_text_emb[{i}] must be (C_i >= 1, {images.shape[1]}), got {tuple(cand.shape)}")
        scores = F.normalize(cand, dim=1) @ images[i].to(cand.dtype)
        correct[i] = _strictly_best(scores[None, :], truth[i : i + 1])[0]
    return correct


def _strictly_best(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Rows of ``scores`` (n, C) whose entry at ``truth`` beats every other entry strictly."""
    n, c = scores.shape
    if bool(((truth < 0) | (truth >= c)).any()):
        bad = int(torch.nonzero((truth < 0) | (truth >= c)).flatten()[0])
        raise ValueError(f"true_index[{bad}] = {int(truth[bad])} is outside 0..{c - 1}")
    true_scores = scores.gather(1, truth[:, None])
    is_true = torch.arange(c, device=scores.device)[None, :] == truth[:, None]
    return ((scores < true_scores) | is_true).all(dim=1)


def probe_accuracy(
    image_emb: Array,
    candidate_text_emb: Array | Sequence[Array],
    true_index: Array,
) -> float:
    """Percentage (0-100) of images whose true caption scores strictly highest among its candidates."""
    correct = probe_correct(image_emb, candidate_text_emb, true_index)
    if correct.numel() == 0:
        raise ValueError("probe_accuracy needs at least one image")
    return 100.0 * float(correct.double().mean())


def _float_tensor(x: Array, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not t.dtype.is_floating_point or t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


__all__ = ["probe_accuracy", "probe_correct"]
