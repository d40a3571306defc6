"""Verification before anything is published: figures, reference levels and gates.

Splits: ``forget`` (the erased pairs), ``retain`` (the retained clients' pairs, a fixed
seeded sample of at most ``max_split_items``) and ``test`` (held out). Recall@K depends on
the gallery size, so gates compare like with like:

- with a retrain reference (the benchmark) the reference level is the reference model's
  figure on the same split;
- without one (production) it is the erased model's Recall@1 on held-out non-member
  pairs, subsampled to the size of the forget gallery it is compared with.

Gates (defaults in :class:`GateConfig`): forget R@1 <= reference + ``forget_margin`` in
both directions; retain R@1 >= before - ``retain_drop`` in both directions; MIA AUC <=
reference AUC + ``mia_margin`` for both attacks (the reference AUC is the retrain
model's, or 0.5 without one). A failed gate means no new version.

The report also carries ``distributions["similarity"]``: the similarity attack's scores of
the forget pairs (members) and of the held-out test pairs (non-members) as histograms on
shared bins (:func:`~ease_engine.verification.membership.similarity_distribution`), from
the same encoding pass as the AUCs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ease_engine.data.dataset import CaptionDataset
from ease_engine.evaluation.evaluate import concept_items, concept_probe, retrieval_metrics
from ease_engine.evaluation.splits import sample_gallery
from ease_engine.models.factory import ClipBundle
from ease_engine.verification.membership import membership_scores

DIRECTIONS = ("i2t", "t2i")


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    forget_margin: float = Field(2.0, ge=0, description="forget R@1 may exceed the reference by this (points)")
    retain_drop: float = Field(3.0, ge=0, description="retain R@1 may fall below the pre-erasure model by this")
    mia_margin: float = Field(0.05, ge=0, description="MIA AUC may exceed the reference AUC by this")
    max_split_items: int = Field(1000, ge=10, description="retain/test are evaluated on at most this many pairs")
    seed: int = 0


class Gate(BaseModel):
    name: str
    value: float
    threshold: float
    comparison: str  # "<=" or ">="
    passed: bool

    @classmethod
    def check(cls, name: str, value: float, comparison: str, threshold: float) -> Gate:
        passed = value <= threshold if comparison == "<=" else value >= threshold
        return cls(
            name=name, value=round(value, 4), threshold=round(threshold, 4), comparison=comparison, passed=bool(passed)
        )


class VerificationReport(BaseModel):
    metrics: dict[str, dict[str, float]]  # split -> Recall@K (after erasure)
    before: dict[str, dict[str, float]]  # split -> Recall@K of the pre-erasure model
    probe: dict[str, dict[str, float]] = Field(default_factory=dict)
    membership: dict[str, float]
    reference: dict
    gates: list[Gate]
    # "similarity" -> {"edges", "members", "nonmembers", "n_*", "*_mean", "*_median", "*_split"}:
    # the similarity attack's score histograms, forget pairs (members) vs held-out test pairs
    distributions: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]


def verification_splits(
    train: CaptionDataset, test: CaptionDataset, forget_items: np.ndarray, retain_items: np.ndarray, config: GateConfig
) -> dict[str, CaptionDataset]:
    return {
        "forget": train.subset(forget_items, name="forget"),
        "retain": sample_gallery(train.subset(retain_items, name="retain"), config.max_split_items, config.seed),
        "test": sample_gallery(test, config.max_split_items, config.seed + 1),
    }


def evaluate_splits(
    bundle: ClipBundle, splits: dict[str, CaptionDataset], probe: tuple[str, str] | None, device: str = "cpu"
) -> tuple[dict, dict]:
    metrics = {name: retrieval_metrics(bundle, data, device) for name, data in splits.items()}
    probes = {}
    if probe is not None:
        for name, data in splits.items():
            if len(concept_items(data, *probe)):
                probes[name] = concept_probe(bundle, data, *probe, device)
    return metrics, probes


def verify(
    after: ClipBundle,
    before_metrics: dict[str, dict[str, float]],
    splits: dict[str, CaptionDataset],
    config: GateConfig,
    reference: dict | None = None,
    probe: tuple[str, str] | None = None,
    device: str = "cpu",
) -> VerificationReport:
    """Measure ``after`` and check the gates.

    ``before_metrics``: Recall@K of the pre-erasure model on the same splits.
    ``reference``: ``{"kind": "retrain", "metrics": ..., "membership": ...}`` from the retrain
    model, or None to use held-out non-member pairs.
    """
    metrics, probes = evaluate_splits(after, splits, probe, device)
    scores = membership_scores(after, splits["forget"], splits["test"], seed=config.seed, device=device)
    membership = scores.summary()
    distributions = {
        "similarity": {**scores.similarity_distribution(), "members_split": "forget", "nonmembers_split": "test"}
    }
    if reference is None:
        size = min(len(splits["forget"]), len(splits["test"]))
        forget_sample = sample_gallery(splits["forget"], size, config.seed + 2)
        nonmember_sample = sample_gallery(splits["test"], size, config.seed + 3)
        forget_level = retrieval_metrics(after, forget_sample, device)
        reference = {
            "kind": "nonmember",
            "gallery_size": size,
            "forget_at_reference_size": forget_level,
            "metrics": {"forget": retrieval_metrics(after, nonmember_sample, device)},
            "membership": {"similarity_auc": 0.5, "loss_auc": 0.5},
        }
        forget_now = forget_level
    else:
        forget_now = metrics["forget"]
    gates = []
    for d in DIRECTIONS:
        key = f"{d}_r1"
        gates.append(
            Gate.check(
                f"forget_{key}", forget_now[key], "<=", reference["metrics"]["forget"][key] + config.forget_margin
            )
        )
        gates.append(
            Gate.check(
                f"retain_{key}", metrics["retain"][key], ">=", before_metrics["retain"][key] - config.retain_drop
            )
        )
    for attack in ("similarity_auc", "loss_auc"):
        gates.append(
            Gate.check(f"mia_{attack}", membership[attack], "<=", reference["membership"][attack] + config.mia_margin)
        )
    return VerificationReport(
        metrics=metrics,
        before=before_metrics,
        probe=probes,
        membership=membership,
        reference=reference,
        gates=gates,
        distributions=distributions,
    )
