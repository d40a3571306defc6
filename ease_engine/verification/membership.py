"""Membership inference: can an attacker tell forget pairs from pairs the model never saw?

Two attacks, each scored by the ROC AUC of members (forget pairs) against held-out
non-members (0.5 = indistinguishable, 1.0 = every member ranks above every non-member):

- similarity: the score of a pair is the cosine similarity of the image and its caption
  (averaged over its captions); members of a trained CLIP model score higher.
- loss: the score is minus the pair's contrastive loss against a fixed gallery of
  non-member captions and images, in both directions (image to text and text to image).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu

from ease_engine.data.dataset import CaptionDataset
from ease_engine.evaluation.evaluate import encode_images, encode_texts
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
    images, texts = F.normalize(images, dim=1), F.normalize(texts, dim=1)
    gallery_images, gallery_texts = F.normalize(gallery_images, dim=1), F.normalize(gallery_texts, dim=1)
    own = (images * texts).sum(dim=1, keepdim=True)
    i2t = torch.cat([own, images @ gallery_texts.T], dim=1) / temperature
    t2i = torch.cat([own, texts @ gallery_images.T], dim=1) / temperature
    loss = 0.5 * (-F.log_softmax(i2t, dim=1)[:, 0] - F.log_softmax(t2i, dim=1)[:, 0])
    return (-loss).numpy()


def membership_inference(
    bundle: ClipBundle,
    members: CaptionDataset,
    nonmembers: CaptionDataset,
    gallery_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, float]:
    """AUC of both attacks, members against non-members.

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
    return {
        "similarity_auc": auc(similarity_scores(m_img, m_txt), similarity_scores(n_img, n_txt)),
        "loss_auc": auc(
            loss_scores(m_img, m_txt, g_img, g_txt, temperature),
            loss_scores(n_img[scored], n_txt[scored], g_img, g_txt, temperature),
        ),
        "n_members": len(members),
        "n_nonmembers": len(nonmembers),
    }
