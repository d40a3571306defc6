"""Membership inference: can an attacker tell forget pairs from pairs the model never saw?

Two attacks, each scored by the ROC AUC of members (forget pairs) against held-out
non-members (0.5 = indistinguishable, 1.0 = every member ranks above every non-member):

- similarity: the score of a pair is the cosine similarity of the image and its caption
  (averaged over its captions); members of a trained CLIP model score higher.
- loss: the score is minus the pair's contrastive loss against a fixed gallery of
  non-member captions and images, in both directions (image to text and text to image).

:func:`membership_scores` keeps the per-pair scores; besides the AUCs they give the
similarity attack's distributions (:func:`similarity_distribution`), plotted in the audit
report: a compact histogram of the members' and the non-members' scores on shared bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu

from ease_engine.data.dataset import CaptionDataset
from ease_engine.evaluation.evaluate import encode_images, encode_texts
from ease_engine.federation.training import gallery_contrastive_loss
from ease_engine.models.factory import ClipBundle


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(member score > non-member score) + 0.5 P(tie): the Mann-Whitney form of the ROC AUC."""
    member_scores, nonmember_scores = np.asarray(member_scores), np.asarray(nonmember_scores)
    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        raise ValueError("AUC needs at least one member and one non-member score")
    u = mannwhitneyu(member_scores, nonmember_scores, alternative="two-sided").statistic
    return float(u / (len(member_scores) * len(nonmember_scores)))


def pair_embeddings(bundle: ClipBundle, dataset: CaptionDataset, device: str = "cpu"):
    """Image embeddings (N, D) and the mean of each image's normalised caption embeddings (N, D)."""
    texts, owner = dataset.caption_owner()
    images = encode_images(bundle, dataset, device=device)
    captions = encode_texts(bundle, texts, device=device)
    sums = torch.zeros(len(dataset), captions.shape[1]).index_add_(0, torch.from_numpy(owner), captions)
    counts = torch.bincount(torch.from_numpy(owner), minlength=len(dataset)).clamp(min=1)
    return images, sums / counts[:, None]


def similarity_scores(images: torch.Tensor, texts: torch.Tensor) -> np.ndarray:
    return (F.normalize(images, dim=1) * F.normalize(texts, dim=1)).sum(dim=1).numpy()


def loss_scores(
    images: torch.Tensor,
    texts: torch.Tensor,
    gallery_images: torch.Tensor,
    gallery_texts: torch.Tensor,
    temperature: float,
) -> np.ndarray:
    """Minus the symmetric InfoNCE loss of each pair against a non-member gallery."""
    return (-gallery_contrastive_loss(images, texts, gallery_images, gallery_texts, 1.0 / temperature)).numpy()


SIMILARITY_BINS = 40
SIMILARITY_RESOLUTION = 0.05  # the bins' outer edges are multiples of this


def _summary(scores: np.ndarray) -> tuple[float | None, float | None]:
    if len(scores) == 0:
        return None, None
    return round(float(np.mean(scores)), 6), round(float(np.median(scores)), 6)


def similarity_distribution(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    bins: int = SIMILARITY_BINS,
    resolution: float = SIMILARITY_RESOLUTION,
) -> dict[str, Any]:
    """Histograms of member and non-member scores on shared bins, JSON-ready (lists, floats, ints).

    ``bins`` equal bins span the joint min..max of both score sets, widened to multiples of
    ``resolution`` and kept within [-1, 1] (cosine similarities): a trained CLIP model's
    pairs lie in a narrow band (often 0.0-0.5), where fixed [-1, 1] bins would be too coarse.
    Non-finite scores are dropped; a score outside the edges by rounding falls in the outer bin.
    Returns ``edges`` (``bins`` + 1), ``members`` and ``nonmembers`` (counts, summing to the
    number of finite scores of each set), ``n_members``, ``n_nonmembers`` and the mean and
    median of each set (None for an empty set).
    """
    if bins < 1 or not resolution > 0:
        raise ValueError("need at least one bin and a positive resolution")
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    members, nonmembers = members[np.isfinite(members)], nonmembers[np.isfinite(nonmembers)]
    joint = np.concatenate([members, nonmembers])
    if len(joint) == 0:
        raise ValueError("a similarity distribution needs at least one finite score")
    per_unit = 1.0 / resolution
    low = max(-1.0, math.floor(float(joint.min()) * per_unit) / per_unit)
    high = min(1.0, math.ceil(float(joint.max()) * per_unit) / per_unit)
    if high <= low:  # every score equal, on a multiple of the resolution
        low, high = (high - resolution, high) if high + resolution > 1.0 else (low, low + resolution)
    edges = np.round(np.linspace(low, high, bins + 1), 6)

    def counts(scores: np.ndarray) -> list[int]:
        return [int(c) for c in np.histogram(np.clip(scores, edges[0], edges[-1]), bins=edges)[0]]

    members_mean, members_median = _summary(members)
    nonmembers_mean, nonmembers_median = _summary(nonmembers)
    return {
        "edges": [float(e) for e in edges],
        "members": counts(members),
        "nonmembers": counts(nonmembers),
        "n_members": len(members),
        "n_nonmembers": len(nonmembers),
        "members_mean": members_mean,
        "members_median": members_median,
        "nonmembers_mean": nonmembers_mean,
        "nonmembers_median": nonmembers_median,
    }


@dataclass(frozen=True)
class MembershipScores:
    """Per-pair attack scores: members (forget pairs) and held-out non-members.

    ``similarity_nonmembers`` scores every non-member; ``loss_nonmembers`` only those not
    drawn into the loss attack's gallery.
    """

    similarity_members: np.ndarray
    similarity_nonmembers: np.ndarray
    loss_members: np.ndarray
    loss_nonmembers: np.ndarray
    n_members: int
    n_nonmembers: int

    def summary(self) -> dict[str, float]:
        """Both attacks' AUCs and the set sizes (what :func:`membership_inference` returns)."""
        return {
            "similarity_auc": auc(self.similarity_members, self.similarity_nonmembers),
            "loss_auc": auc(self.loss_members, self.loss_nonmembers),
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
        }

    def similarity_distribution(self, bins: int = SIMILARITY_BINS) -> dict[str, Any]:
        return similarity_distribution(self.similarity_members, self.similarity_nonmembers, bins)


def membership_scores(
    bundle: ClipBundle,
    members: CaptionDataset,
    nonmembers: CaptionDataset,
    gallery_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> MembershipScores:
    """Both attacks' scores, members against non-members (one encoding pass over each set).

    The loss attack's gallery is drawn from the non-members (and those drawn are not
    scored), so no pair is compared against itself.
    """
    if len(nonmembers) < 4:
        raise ValueError("membership inference needs at least 4 non-member pairs")
    m_img, m_txt = pair_embeddings(bundle, members, device)
    n_img, n_txt = pair_embeddings(bundle, nonmembers, device)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(nonmembers))
    size = min(gallery_size, len(nonmembers) // 2)
    gallery, scored = order[:size], order[size:]
    temperature = 1.0 / float(bundle.model.logit_scale.detach().exp().clamp(max=100.0))
    g_img, g_txt = n_img[gallery], n_txt[gallery]
    return MembershipScores(
        similarity_members=similarity_scores(m_img, m_txt),
        similarity_nonmembers=similarity_scores(n_img, n_txt),
        loss_members=loss_scores(m_img, m_txt, g_img, g_txt, temperature),
        loss_nonmembers=loss_scores(n_img[scored], n_txt[scored], g_img, g_txt, temperature),
        n_members=len(members),
        n_nonmembers=len(nonmembers),
    )


def membership_inference(
    bundle: ClipBundle,
    members: CaptionDataset,
    nonmembers: CaptionDataset,
    gallery_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, float]:
    """AUC of both attacks, members against non-members (see :func:`membership_scores`)."""
    return membership_scores(bundle, members, nonmembers, gallery_size, seed, device).summary()
