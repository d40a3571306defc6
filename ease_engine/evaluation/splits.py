"""Named splits of a federation's data, galleries of one size, and Recall@K / probe on them."""

from __future__ import annotations

import numpy as np

from ease_engine.data.dataset import CaptionDataset
from ease_engine.evaluation.evaluate import concept_items, concept_probe, retrieval_metrics


def sample_gallery(dataset: CaptionDataset, size: int | None, seed: int = 0) -> CaptionDataset:
    """A seeded sample of ``size`` pairs (all of them if the split is smaller or ``size`` is None).

    Recall@K falls as the gallery grows, so splits are compared on galleries of one size.
    """
    if size is None or len(dataset) <= size:
        return dataset
    idx = np.sort(np.random.default_rng(seed).choice(len(dataset), size=size, replace=False))
    return dataset.subset(idx, name=dataset.name)


def select_split(train: CaptionDataset, test: CaptionDataset, split: str) -> CaptionDataset:
    """``test``, ``train``, ``client:K`` (client K's pairs) or ``retain:K`` (every other client's)."""
    if split == "test":
        return test
    if split == "train":
        return train
    kind, _, arg = split.partition(":")
    if kind in ("client", "retain") and arg.lstrip("-").isdigit():
        k = int(arg)
        if k not in train.clients:
            raise ValueError(f"split {split!r}: unknown client {k} (clients: {train.clients})")
        mask = train.client_ids == k if kind == "client" else (train.client_ids != k) & (train.client_ids >= 0)
        return train.subset(np.flatnonzero(mask), name=split)
    raise ValueError(f"unknown split {split!r}; use test, train, client:K or retain:K")


def evaluate_bundle(
    bundle, train, test, splits: list[str], probe: str | None, device: str = "cpu", gallery: int | None = None
) -> dict:
    """Recall@K per split (on a seeded gallery of at most ``gallery`` pairs) and the concept probe."""
    result: dict = {"retrieval": {}, "probe": {}}
    for split in splits:
        data = sample_gallery(select_split(train, test, split), gallery)
        result["retrieval"][split] = retrieval_metrics(bundle, data, device)
        if probe:
            attribute, _, value = probe.partition("=")
            if not value:
                raise ValueError(f"probe must be ATTRIBUTE=VALUE, got {probe!r}")
            if len(concept_items(data, attribute, value)):
                result["probe"][split] = concept_probe(bundle, data, attribute, value, device)
    return result
