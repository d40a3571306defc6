"""Measure a model after an erasure against the retrain reference, on fixed splits.

Shared by the unlearning benchmark, the reactivation study and ad-hoc experiments: the
splits are built once per (context, target), so every method is measured on the same
pairs and galleries.
"""

from __future__ import annotations

from dataclasses import dataclass

from ease_engine.data.dataset import CaptionDataset
from ease_engine.erasure import probe_for
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning import ErasureTarget, UnlearningContext
from ease_engine.verification.membership import membership_inference
from ease_engine.verification.report import GateConfig, evaluate_splits, verification_splits

SPLITS = ("forget", "retain", "test")
DIRECTIONS = ("i2t", "t2i")


@dataclass
class Measurement:
    recall: dict[str, dict[str, float]]  # split -> metrics
    probe: dict[str, dict[str, float]]
    membership: dict[str, float]

    def r1(self, split: str, direction: str) -> float:
        return self.recall[split][f"{direction}_r1"]

    def probe_accuracy(self) -> float | None:
        p = self.probe.get("forget")
        return None if p is None else p["accuracy"]

    def to_json(self) -> dict:
        return {"recall": self.recall, "probe": self.probe, "membership": self.membership}


@dataclass
class Bench:
    context: UnlearningContext
    target: ErasureTarget
    splits: dict[str, CaptionDataset]
    probe: tuple[str, str] | None
    device: str = "cpu"

    @classmethod
    def build(cls, context: UnlearningContext, target: ErasureTarget, gates: GateConfig | None = None) -> Bench:
        gates = gates or GateConfig()
        setup = context.setup
        splits = verification_splits(
            setup.train, setup.test, context.forget_items(target), context.retain_items(target), gates
        )
        return cls(context, target, splits, probe_for(context, target), setup.device)

    def measure(self, bundle: ClipBundle) -> Measurement:
        recall, probe = evaluate_splits(bundle, self.splits, self.probe, self.device)
        membership = membership_inference(bundle, self.splits["forget"], self.splits["test"], device=self.device)
        return Measurement(recall, probe, membership)


def gaps(measured: Measurement, reference: Measurement) -> dict[str, float]:
    """|R@1 - retrain's R@1| per split and direction, their mean (Avg. Gap), probe and MIA gaps."""
    out = {f"{split}_{d}": abs(measured.r1(split, d) - reference.r1(split, d)) for split in SPLITS for d in DIRECTIONS}
    out["avg_gap"] = sum(out.values()) / len(out)
    if measured.probe_accuracy() is not None and reference.probe_accuracy() is not None:
        out["probe"] = abs(measured.probe_accuracy() - reference.probe_accuracy())
    for attack in ("similarity_auc", "loss_auc"):
        out[f"mia_{attack}"] = abs(measured.membership[attack] - reference.membership[attack])
    return out
