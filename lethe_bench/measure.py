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
from ease_engine.verification.report import Figures, VerificationReport, measure, verify
from ease_engine.verification.splits import VerificationSplits

SPLITS = ("forget", "retain", "test")
DIRECTIONS = ("i2t", "t2i")


def flat_metrics(figures: Figures) -> dict[str, float]:
    """The benchmark's METRIC names (docs/results/unlearning.json) from one model's figures."""
    out = {f"{split}_{d}_r1": figures.recall[split][f"{d}_r1"] for split in SPLITS for d in DIRECTIONS}
    out["retained_heldout_i2t_r1"] = figures.recall["retained_heldout"]["i2t_r1"]
    out["retained_heldout_t2i_r1"] = figures.recall["retained_heldout"]["t2i_r1"]
    if figures.probe is not None:
        out["probe"] = figures.probe["accuracy"]
    if figures.membership is not None:
        out["mia_similarity_auc"] = figures.membership["similarity_auc"]
        out["mia_loss_auc"] = figures.membership["loss_auc"]
    if figures.residual is not None:
        out["ledger_residual"] = figures.residual["all"]
    return out


@dataclass
class Bench:
    context: UnlearningContext
    target: ErasureTarget
    splits: VerificationSplits
    exclusive: ExclusiveContribution | None
    concept: tuple[str, str] | None
    gates: GateConfig
    parent: Figures

    @classmethod
    def build(cls, context: UnlearningContext, target: ErasureTarget, gates: GateConfig | None = None,
              concept: tuple[str, str] | None = None, cache: FederationDataCache | None = None) -> Bench:
        gates = gates or GateConfig()
        splits, exclusive = verification_inputs(context, target, gates, cache or FederationDataCache(1))
        parent = measure(context.setup.bundle, splits, gates, concept, exclusive, context.setup.blocks,
                         context.device)
        return cls(context, target, splits, exclusive, concept, gates, parent)

    def measure(self, bundle: ClipBundle) -> Figures:
        return measure(bundle, self.splits, self.gates, self.concept, self.exclusive, self.context.setup.blocks,
                       self.context.device)

    def verify(self, bundle: ClipBundle) -> VerificationReport:
        """The production verdict of ``bundle`` as a candidate (the parent is the no-op control)."""
        return verify(bundle, self.parent, self.splits, self.gates, self.concept, self.exclusive,
                      self.context.setup.blocks, device=self.context.device)
