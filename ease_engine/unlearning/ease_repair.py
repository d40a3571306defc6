"""When closure 2's repair stops: after a fixed number of steps, or once a measured utility is back.

A fixed step count is tuned on one federation; how far excision sets a model back, and how far the repair has
to bring it, differs between federations (on ``exclusive`` the retrain's retained Recall@1 is 12, 32 and 12
over three seeds, and the tuned 30 steps bring back enough on seed 0 only: docs/ease.md, "Exclusive: the
federation's strength varies with the seed"). ``repair_until = "parent_utility"`` measures instead:

- the yardstick is the retained clients' CALIBRATION pairs (held out by them, never trained on; in samples
  scope every client's, the subject's pairs are training pairs and never among them). The audit split that
  judges the result is not reachable from a method (``FederationSetup.calibration``), so the criterion cannot
  look at what it is judged on;
- the measure is the mean retrieval recall (Recall@1, 5 and 10, both directions, every caption of an image:
  the protocol of ``evaluation.retrieval``), smoother than Recall@1 alone on a few hundred pairs;
- the target is the parent's measure on the same pairs, less ``utility_tolerance``: by default
  (``"standard_error"``) the parent's measure's own sampling error over the pairs measured (the standard
  deviation of the images' shares of it over the square root of their count, :func:`shares`), or a number of
  points. The parent's measure estimates its utility on the retained clients' held-out data from a few pairs;
  chasing that estimate closer than its own error fits the pairs, not the data. One standard error is a
  heuristic cut, not a test (the models are measured on the same pairs, whose paired difference has a smaller
  error); what it changed, measured: docs/ease.md, "The repair stops within the measure's sampling error".
  The parent is the one model the server holds that was never set back by the excision, and the retrain
  (which the server cannot have) is trained on these clients' data for as long. The parent also learnt from the
  erased client, so where that client's data helped the others the target sits above the retrain and the
  repair overshoots it;
- the repair takes the tuned ``steps`` first, then is measured every ``utility_check_every`` steps, and stops at
  the first measure at or above the target, or after ``max_steps``. The criterion only ever extends the tuned
  repair: where held-out retrieval is near chance for every model (real-images: retained held-out Recall@1 6 to
  10 for the parent and the retrain alike), the measure cannot see what excision took from the training pairs'
  retrieval, and a criterion free to stop at step 0 did so (docs/ease.md, "The repair stops on a measure").

The parent's utility is the right target only where the erased client taught knowledge the retained clients'
data does not draw on. Where its pairs are data like theirs, the parent's utility includes what they gained from
it, and restoring that re-teaches the forget pairs (dirichlet: forget Recall@1 38.0 against the retrain's 21.2;
samples). ``repair_until = "auto"`` (the default) lets the ledger choose (:func:`auto_stop`): the criterion where
some block is wholly exclusive to the erased client (no retained client ever moved it: the row of a word only it
used), the tuned steps elsewhere (docs/ease.md, "The ledger chooses when the repair stops").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ease_engine.data.dataset import CaptionDataset
from ease_engine.evaluation.evaluate import caption_tokens, retrieval_shares
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning.base import UnlearningError

TIE = 1e-9  # points of mean recall: closer than this is the same measure (float summation order)
MIN_PAIRS = 20  # on fewer pairs Recall@10 is near 100 for any model: the measure would be Recall@1's alone


class RepairCriterionError(UnlearningError):
    """The criterion cannot be measured on this federation; the message says why and what to do."""


def require_measurable(data: CaptionDataset) -> None:
    if len(data) < MIN_PAIRS:
        raise RepairCriterionError(
            f"repair_until = 'parent_utility' measures the retained clients' held-out calibration pairs, and this "
            f"federation has {len(data)} of them (at least {MIN_PAIRS} needed): set repair_until = 'steps', or "
            f"train the federation with a larger holdout.client_fraction or a smaller holdout.audit_fraction")


def shares(bundle: ClipBundle, data: CaptionDataset, device: str, tokens: torch.Tensor | None = None) -> np.ndarray:
    """Each image's share of the mean of Recall@1, 5 and 10 in both directions on ``data`` (``tokens``: its
    captions tokenized, as ``caption_tokens`` gives them), in percent (``evaluation.retrieval.per_image_recall``).
    Every measure of the criterion goes through here (the one place tests script it)."""
    return retrieval_shares(bundle, data, device=device, tokens=tokens)


def mean_recall(bundle: ClipBundle, data: CaptionDataset, device: str, tokens: torch.Tensor | None = None) -> float:
    """The mean of Recall@1, 5 and 10 in both directions on ``data``, in percent."""
    return float(np.mean(shares(bundle, data, device, tokens)))


def standard_error(image_shares: np.ndarray) -> float:
    """The sampling error of the mean recall over the images measured: how far it would move, as one standard
    deviation, had other pairs of the same distribution been held out (the images' shares taken as independent;
    a rank depends on the other images too, so this is an approximation)."""
    if len(image_shares) < 2:
        raise RepairCriterionError(f"a standard error needs at least 2 images, got {len(image_shares)}")
    return float(np.std(image_shares, ddof=1) / np.sqrt(len(image_shares)))


def retained_calibration(calibration: CaptionDataset, retained_clients: list[int]) -> CaptionDataset:
    """The calibration pairs the retained clients hold (global held-out pairs excluded: they follow the whole
    distribution, the erased concept included)."""
    owned = np.isin(calibration.client_ids, np.asarray(retained_clients, dtype=calibration.client_ids.dtype))
    return calibration.subset(np.flatnonzero(owned), name="retained-calibration")


def auto_stop(scope: str, wholly_exclusive_blocks: int, steps: int, max_steps: int,
              count_pairs: Callable[[], int]) -> tuple[bool, str]:
    """``repair_until = "auto"``: whether the repair goes on to the parent's utility, and why, in words for the
    record. Only a client erasure whose ledger shows a block no retained client moved, with tuned steps short of
    ``max_steps`` and enough retained calibration pairs to measure (``count_pairs``, asked last), goes on. (The
    benchmark caches rows by their parameters: a change of this rule needs ``RESULTS_VERSION`` bumped.)"""
    if scope != "client":
        return False, ("samples scope: the subject's pairs are data like the rest of its client's, so the parent's "
                       "utility includes what they taught; the tuned steps")
    if not wholly_exclusive_blocks:
        return False, ("no block is wholly exclusive to the erased client: its pairs are data like the retained "
                       "clients', so the parent's utility includes what they taught; the tuned steps")
    if not steps:
        return False, "no displacement steps are set (steps = 0): nothing to extend"
    if steps >= max_steps:
        return False, f"the tuned steps ({steps}) already reach max_steps ({max_steps}): nothing to extend"
    pairs = count_pairs()
    if pairs < MIN_PAIRS:
        return False, f"only {pairs} retained calibration pairs to measure on (at least {MIN_PAIRS}); the tuned steps"
    return True, (f"{wholly_exclusive_blocks} block(s) wholly exclusive to the erased client: on to the parent's "
                  f"utility on {pairs} retained calibration pairs")


@dataclass
class UtilityCriterion:
    """Stop the repair once the model's mean recall on ``data`` reaches the parent's less ``tolerance``."""

    data: CaptionDataset
    parent_value: float  # the parent's mean recall on ``data``
    tolerance: float  # in points of mean recall
    every: int
    first: int = 0  # the first step measured (the tuned step count)
    device: str = "cpu"
    tokens: torch.Tensor | None = field(default=None, repr=False, compare=False)  # ``data``'s captions, tokenized
    # once for every measure
    parent_error: float | None = None  # the parent's measure's standard error over ``data``'s images
    tolerance_rule: Literal["points", "standard_error"] = "points"
    measures: list[dict] = field(default_factory=list)

    @classmethod
    def at_parent(cls, parent: ClipBundle, data: CaptionDataset, tolerance: float | Literal["standard_error"],
                  every: int, first: int = 0, device: str = "cpu") -> UtilityCriterion:
        """The criterion against ``parent`` on ``data``; ``tolerance`` in points, or ``"standard_error"``: the
        parent's measure's standard error over ``data``'s images."""
        require_measurable(data)
        tokens = caption_tokens(parent, data)
        parent_shares = shares(parent, data, device, tokens)
        error = standard_error(parent_shares)
        rule = "standard_error" if tolerance == "standard_error" else "points"
        return cls(data, float(np.mean(parent_shares)), error if rule == "standard_error" else float(tolerance),
                   every, first, device, tokens, parent_error=error, tolerance_rule=rule)

    @property
    def target(self) -> float:
        return self.parent_value - self.tolerance

    def due(self, step: int) -> bool:
        return step >= self.first and (step - self.first) % self.every == 0

    def reached(self, bundle: ClipBundle, step: int) -> bool:
        """Measure ``bundle`` now (recorded in ``measures``); True when it is at or above the target."""
        value = mean_recall(bundle, self.data, self.device, self.tokens)
        # the same recall counts summed over other images can differ in the last bits: a tie is a tie
        reached = value >= self.target - TIE
        self.measures.append({"step": step, "mean_recall": round(value, 3), "reached": reached})
        return reached

    def summary(self) -> dict:
        return {"parent_mean_recall": round(self.parent_value, 3), "target_mean_recall": round(self.target, 3),
                "parent_standard_error": None if self.parent_error is None else round(self.parent_error, 3),
                "tolerance": {"rule": self.tolerance_rule, "points": round(self.tolerance, 3)},
                "pairs": len(self.data), "measures": self.measures,
                "reached": bool(self.measures) and self.measures[-1]["reached"]}
