"""Verification before anything is published: measure the candidate and the unchanged parent on the
audit-side splits (``ease_engine.verification.splits``), check the production gates
(``ease_engine.verification.gates``), and give a verdict: passed, failed or inconclusive.

The retrain reference (``--reference``: the benchmark and audits) is measured on the same splits and
reported beside, with the candidate's gaps to it; it does not change the verdict.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, computed_field

from ease_engine.data.dataset import CaptionDataset
from ease_engine.evaluation.evaluate import concept_items, concept_probe, retrieval_metrics
from ease_engine.evaluation.untrained_words import beaten_share, most_beaten_share
from ease_engine.federation.exclusive import ExclusiveContribution
from ease_engine.models.blocks import ParameterBlock, read_blocks
from ease_engine.models.factory import ClipBundle
from ease_engine.verification.gates import Gate, GateConfig, Verdict
from ease_engine.verification.membership import membership_scores
from ease_engine.verification.splits import VerificationSplits
from ease_engine.verification.statistics import auc_se, chance_r1, difference_se, proportion_se

DIRECTIONS = ("i2t", "t2i")
UTILITY_SPLITS = ("retain", "retained_heldout")


class Figures(BaseModel):
    """What one model shows on the verification splits."""

    recall: dict[str, dict[str, float]]  # split -> Recall@K
    matched: dict[str, dict[str, float]]  # "members" / "nonmembers" -> Recall@K on galleries of one size
    membership: dict[str, float] | None  # AUCs of the members against the matched non-members
    probe: dict[str, float] | None = None  # concept probe on the members
    residual: dict[str, float] | None = None  # ledger residual (all / wholly_exclusive / entangled)
    similarity: dict[str, Any] | None = None  # the similarity attack's histograms (the report's plot)


def measure(
    bundle: ClipBundle,
    splits: VerificationSplits,
    config: GateConfig,
    concept: tuple[str, str] | None = None,
    exclusive: ExclusiveContribution | None = None,
    blocks: list[ParameterBlock] | None = None,
    device: str = "cpu",
) -> Figures:
    recall = {name: retrieval_metrics(bundle, data, device) for name, data in splits.named().items()
              if name not in ("forget", "nonmembers") and len(data)}
    recall["forget"] = retrieval_metrics(bundle, splits.forget_gallery(config.max_split_items, config.seed), device)
    matched, membership, similarity = {}, None, None
    if splits.matched_size >= config.min_nonmembers:
        members, nonmembers = splits.matched_galleries(config.seed)
        matched = {"members": retrieval_metrics(bundle, members, device),
                   "nonmembers": retrieval_metrics(bundle, nonmembers, device)}
        scores = membership_scores(bundle, splits.members, splits.nonmembers, seed=config.seed, device=device,
                                   gallery_size=len(splits.nonmembers) // 3)
        membership = scores.summary()
        similarity = {**scores.similarity_distribution(), "members_split": "forget", "nonmembers_split": "nonmembers"}
    probe = None
    if concept is not None and splits.members.structure is not None and len(concept_items(splits.members, *concept)):
        probe = concept_probe(bundle, splits.members, *concept, device)
    residual = None
    if exclusive is not None and blocks is not None:
        residual = exclusive.residual(read_blocks(bundle.model, blocks))
    return Figures(recall=recall, matched=matched, membership=membership, probe=probe, residual=residual,
                   similarity=similarity)


def _forgetting_gates(candidate: Figures, parent: Figures, splits: VerificationSplits, config: GateConfig,
                      probe_gated: bool = True) -> list:
    gates = []
    n = splits.matched_size
    if candidate.matched:
        for d in DIRECTIONS:
            key = f"{d}_r1"

            def gap(figures: Figures, key=key) -> float:
                return figures.matched["members"][key] - figures.matched["nonmembers"][key]

            member, nonmember = candidate.matched["members"][key], candidate.matched["nonmembers"][key]
            width = config.r1_tolerance + config.z * difference_se(member, n, nonmember, n)
            gates.append(Gate.check(
                f"forget_vs_nonmember_{key}", "forgetting",
                f"Recall@1 ({d}) on the erased pairs minus that on pairs of the same client the model never saw "
                f"(galleries of {n}); an erased model treats both alike",
                gap(candidate), -width, width, gap(parent)))
        m, k = splits.members, len(splits.nonmembers) - len(splits.nonmembers) // 3
        for attack in ("similarity_auc", "loss_auc"):
            scored = len(splits.nonmembers) if attack == "similarity_auc" else k
            width = config.mia_tolerance + config.z * auc_se(0.5, len(m), scored)
            gates.append(Gate.check(
                f"mia_{attack}", "forgetting",
                f"membership-inference AUC ({attack.split('_')[0]} attack) of the erased pairs against the same "
                "client's unseen pairs; 0.5 means an attacker cannot tell them apart",
                candidate.membership[attack], 0.5 - width, 0.5 + width, parent.membership[attack]))
    if candidate.residual is not None and not math.isnan(candidate.residual["all"]):
        gates.append(Gate.check(
            "ledger_residual", "forgetting",
            "share of the client's exclusive contribution (what no other client's updates span, from the "
            "ledger) still in the weights; 1 for the parent, near 0 for a model never trained on the client",
            candidate.residual["all"], None, config.residual_max, parent.residual["all"]))
    if probe_gated and candidate.probe is not None and parent.probe is not None:
        gates.append(_probe_gate(candidate.probe, parent.probe, config))
    return gates


def _probe_gate(candidate: dict[str, float], parent: dict[str, float], config: GateConfig) -> Gate:
    """Where the concept is one word: its rank among never-trained words (a permutation test, the same
    bound for the parent). Otherwise (positions are two words): multiple-choice accuracy at most chance +
    margin + z SE, which a model ignorant of the concept can exceed by elimination (docs/verification.md)."""
    if "beats_untrained" in candidate and "beats_untrained" in parent:
        count = int(candidate["n_untrained"])
        ceiling = most_beaten_share(count, config.z)

        def share(figures: dict[str, float]) -> float:  # from the count of words beaten: a count compared exactly
            return beaten_share(round(figures["beats_untrained"] * count / 100.0), count)

        return Gate.check(
            "concept_probe", "forgetting",
            f"share of {count} words no training caption contains that the concept's word outscores on the "
            "erased images (their mean similarity to the caption naming each word); a model that never learnt "
            f"the concept's word ranks it like one more untrained word, and beats more than {ceiling:.1f}% of "
            "them only by a chance as small as the other gates' (permutation test)",
            share(candidate), None, ceiling, share(parent))
    chance = candidate["chance"]
    se = proportion_se(chance, int(candidate["n_images"]))
    return Gate.check(
        "concept_probe", "forgetting",
        "how often the model picks the true caption of an erased image over the same caption with the named "
        "concept swapped, against chance (no untrained-word ranking for a concept of several words)",
        candidate["accuracy"], None, chance + config.probe_margin + config.z * se, parent["accuracy"])


def _utility_gates(candidate: Figures, parent: Figures, splits: VerificationSplits, config: GateConfig) -> list:
    gates = []
    for split in UTILITY_SPLITS:
        if split not in candidate.recall:
            continue
        n = len(getattr(splits, split))
        chance = chance_r1(n)
        for d in DIRECTIONS:
            key = f"{d}_r1"
            before, after = parent.recall[split][key], candidate.recall[split][key]
            floor = chance + config.utility_keep * (before - chance) - config.z * proportion_se(before, n)
            gates.append(Gate.check(
                f"{split}_{key}", "utility",
                f"Recall@1 ({d}) on the retained clients' {'training' if split == 'retain' else 'unseen'} pairs "
                f"(gallery of {n}) keeps {config.utility_keep:.0%} of the parent's skill above chance",
                after, floor, None, before))
    return gates


def _inconclusive_reasons(parent: Figures, splits: VerificationSplits, gates: list[Gate],
                          config: GateConfig) -> list[str]:
    reasons = []
    n = min(len(splits.members), config.max_split_items)
    if all(parent.recall["forget"][f"{d}_r1"] - chance_r1(n)
           <= config.z * proportion_se(chance_r1(n), n) for d in DIRECTIONS):
        reasons.append("the parent's Recall@1 on the erased pairs is at chance: it shows no knowledge of them to erase")
    for split in UTILITY_SPLITS:
        if split in parent.recall:
            m = len(getattr(splits, split))
            if all(parent.recall[split][f"{d}_r1"] - chance_r1(m) <= config.z * proportion_se(chance_r1(m), m)
                   for d in DIRECTIONS):
                reasons.append(f"the parent's Recall@1 on {split} is at chance: utility cannot be verified")
    forgetting = [g for g in gates if g.kind == "forgetting"]
    if not forgetting:
        reasons.append("no forgetting gate applies (no matched non-members, no ledger residual, no named concept)")
    elif all(g.control_passed for g in forgetting):
        reasons.append("no forgetting gate tells the unchanged parent from an erased model on this data: every one "
                       "passes for the parent too")
    return reasons


def concept_pairs_kept(dataset: CaptionDataset, kept_items: np.ndarray, concept: tuple[str, str] | None) -> int:
    """How many of the training pairs that stay (``kept_items`` of ``dataset``) show ``concept``: the concept
    probe is a gate only when none does (a concept the retained clients also hold is not theirs to lose)."""
    if concept is None or dataset.structure is None or not len(kept_items):
        return 0
    return len(concept_items(dataset.subset(np.asarray(kept_items)), *concept))


class VerificationReport(BaseModel):
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    gates: list[Gate]
    metrics: dict[str, dict[str, float]]  # split -> Recall@K of the candidate
    before: dict[str, dict[str, float]]  # split -> Recall@K of the parent
    matched: dict[str, Any] = Field(default_factory=dict)  # gallery size, candidate's and parent's figures
    membership: dict[str, float] | None = None  # candidate: members against matched non-members
    membership_before: dict[str, float] | None = None
    probe: dict[str, Any] = Field(default_factory=dict)  # {"concept", "candidate", "parent"}
    residual: dict[str, Any] = Field(default_factory=dict)  # {"candidate", "parent"}
    reference: dict = Field(default_factory=dict)  # the retrain tier, when given (reported beside)
    distributions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)

    @computed_field
    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.PASSED

    def failed(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]


def verify(
    candidate: ClipBundle,
    parent: Figures,
    splits: VerificationSplits,
    config: GateConfig,
    concept: tuple[str, str] | None = None,
    exclusive: ExclusiveContribution | None = None,
    blocks: list[ParameterBlock] | None = None,
    reference: dict | None = None,
    device: str = "cpu",
    concept_elsewhere: int = 0,
) -> VerificationReport:
    """Measure ``candidate``, check the gates against ``parent`` (its :func:`measure` figures, the no-op
    control) and give the verdict. ``concept_elsewhere``: how many training pairs that stay show the named
    concept (:func:`concept_pairs_kept`); when any do, the retained clients teach it too, a retrain would know
    it, and the probe is reported but not gated."""
    figures = measure(candidate, splits, config, concept, exclusive, blocks, device)
    gates = (_forgetting_gates(figures, parent, splits, config, probe_gated=concept_elsewhere == 0)
             + _utility_gates(figures, parent, splits, config))
    reasons = [f"failed: {g.summary()}" for g in gates if not g.passed]
    verdict = Verdict.FAILED if reasons else Verdict.PASSED
    if verdict == Verdict.PASSED:
        reasons = _inconclusive_reasons(parent, splits, gates, config)
        verdict = Verdict.INCONCLUSIVE if reasons else Verdict.PASSED
    return VerificationReport(
        verdict=verdict, reasons=reasons, gates=gates, metrics=figures.recall, before=parent.recall,
        matched={"gallery_size": splits.matched_size, "candidate": figures.matched, "parent": parent.matched},
        membership=figures.membership, membership_before=parent.membership,
        probe={"concept": list(concept) if concept else None, "candidate": figures.probe, "parent": parent.probe,
               "gated": bool(concept) and concept_elsewhere == 0, "kept_pairs_with_concept": concept_elsewhere},
        residual={"candidate": figures.residual, "parent": parent.residual},
        reference=reference or {}, distributions={"similarity": figures.similarity} if figures.similarity else {},
        config=config.model_dump(mode="json"),
    )
