"""Measure models after an erasure on the verification splits, beside the retrain reference.

One :class:`Bench` per (context, target): the splits come from the audit split (``ease_engine.erasure
.verification_inputs``), so every method is measured on the same pairs and galleries as production
verification judges them, and the production verdict of each model is at hand (``verify``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ease_engine.erasure import verification_inputs
from ease_engine.federation.data_cache import FederationDataCache
from ease_engine.federation.exclusive import ExclusiveContribution
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning import ErasureTarget, UnlearningContext
from ease_engine.verification.gates import GateConfig
from ease_engine.verification.report import Figures, VerificationReport, concept_pairs_kept, measure, verify
from ease_engine.verification.splits import VerificationSplits

SPLITS = ("forget", "retain", "test")
DIRECTIONS = ("i2t", "t2i")


def flat_metrics(recall: dict, probe: dict | None, membership: dict | None, residual: dict | None) -> dict:
    """The benchmark's METRIC names (docs/results/unlearning.json) from one model's figures."""
    out = {f"{split}_{d}_r1": recall[split][f"{d}_r1"] for split in (*SPLITS, "retained_heldout")
           for d in DIRECTIONS if split in recall}
    if probe is not None:
        out["probe"] = probe["accuracy"]
    if membership is not None:
        out["mia_similarity_auc"] = membership["similarity_auc"]
        out["mia_loss_auc"] = membership["loss_auc"]
    if residual is not None and residual["all"] == residual["all"]:
        out["ledger_residual"] = residual["all"]
    return out


def figures_metrics(figures: Figures) -> dict[str, float]:
    return flat_metrics(figures.recall, figures.probe, figures.membership, figures.residual)


def report_metrics(report: VerificationReport) -> dict[str, float]:
    """The candidate's metrics, read off its verification report (no second measurement)."""
    return flat_metrics(report.metrics, report.probe.get("candidate"), report.membership,
                        report.residual.get("candidate"))


@dataclass
class Bench:
    context: UnlearningContext
    target: ErasureTarget
    splits: VerificationSplits
    exclusive: ExclusiveContribution | None
    concept: tuple[str, str] | None
    gates: GateConfig
    parent: Figures
    concept_kept: int = 0  # training pairs that stay and show the concept (the probe is a gate only at 0)

    @classmethod
    def build(cls, context: UnlearningContext, target: ErasureTarget, gates: GateConfig | None = None,
              concept: tuple[str, str] | None = None, cache: FederationDataCache | None = None) -> Bench:
        gates = gates or GateConfig()
        splits, exclusive = verification_inputs(context, target, gates, cache or FederationDataCache(1))
        parent = measure(context.setup.bundle, splits, gates, concept, exclusive, context.setup.blocks,
                         context.device)
        kept = concept_pairs_kept(context.setup.train, context.retain_items(target), concept)
        return cls(context, target, splits, exclusive, concept, gates, parent, kept)

    def measure(self, bundle: ClipBundle) -> Figures:
        return measure(bundle, self.splits, self.gates, self.concept, self.exclusive, self.context.setup.blocks,
                       self.context.device)

    def verify(self, bundle: ClipBundle) -> VerificationReport:
        """The production verdict of ``bundle`` as a candidate (the parent is the no-op control)."""
        return verify(bundle, self.parent, self.splits, self.gates, self.concept, self.exclusive,
                      self.context.setup.blocks, device=self.context.device, concept_elsewhere=self.concept_kept)
