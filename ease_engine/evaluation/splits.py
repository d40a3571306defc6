"""Named splits of a federation's data, galleries of one size, and Recall@K / probe on them."""

from __future__ import annotations

import numpy as np

from ease_engine.data.dataset import NO_CLIENT, CaptionDataset, concat_datasets
from ease_engine.data.holdout import FederationData
from ease_engine.evaluation.evaluate import concept_items, concept_probe, retrieval_metrics


def sample_gallery(dataset: CaptionDataset, size: int | None, seed: int = 0) -> CaptionDataset:
    """A seeded sample of ``size`` pairs (all of them if the split is smaller or ``size`` is None).

    Recall@K falls as the gallery grows, so splits are compared on galleries of one size.
    """
    if size is None or len(dataset) <= size:
        return dataset
    idx = np.sort(np.random.default_rng(seed).choice(len(dataset), size=size, replace=False))
    return dataset.subset(idx, name=dataset.name)


def select_split(data: FederationData, split: str) -> CaptionDataset:
    """A named split of a federation's pairs:

    ``train`` (every training pair), ``client:K`` (client K's training pairs), ``retain:K`` (every other
    client's), ``test`` (the global held-out pairs, calibration and audit), ``calibration``, ``audit``,
    ``heldout:K`` (client K's own held-out pairs, both parts)."""
    train = data.train
    heldout = concat_datasets([data.calibration, data.audit], "heldout")
    if split == "train":
        return train
    if split in ("calibration", "audit"):
        return getattr(data, split)
    if split == "test":
        return heldout.subset(heldout.client_indices(NO_CLIENT), name="test")
    kind, _, arg = split.partition(":")
    if kind in ("client", "retain", "heldout") and arg.lstrip("-").isdigit():
        k = int(arg)
        if k not in train.clients:
            raise ValueError(f"split {split!r}: unknown client {k} (clients: {train.clients})")
        if kind == "heldout":
            return heldout.subset(heldout.client_indices(k), name=split)
        mask = train.client_ids == k if kind == "client" else (train.client_ids != k) & (train.client_ids >= 0)
        return train.subset(np.flatnonzero(mask), name=split)
    raise ValueError(f"unknown split {split!r}; use train, test, calibration, audit, client:K, retain:K or heldout:K")


def evaluate_bundle(
    bundle, data: FederationData, splits: list[str], probe: str | None, device: str = "cpu", gallery: int | None = None
) -> dict:
    """Recall@K per split (on a seeded gallery of at most ``gallery`` pairs) and the concept probe."""
    result: dict = {"retrieval": {}, "probe": {}}
    for split in splits:
        subset = sample_gallery(select_split(data, split), gallery)
        result["retrieval"][split] = retrieval_metrics(bundle, subset, device)
        if probe:
            attribute, _, value = probe.partition("=")
            if not value:
                raise ValueError(f"probe must be ATTRIBUTE=VALUE, got {probe!r}")
            if len(concept_items(subset, attribute, value)):
                result["probe"][split] = concept_probe(bundle, subset, attribute, value, device)
    return result
