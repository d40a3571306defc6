"""Production gates: what a model must show to be published as "verified to have forgotten".

No retrain reference is needed. Every gate compares like with like and judges a difference against its
sampling noise (``ease_engine.verification.statistics``); bands are two-sided where erring either way
is detectable (an erased model whose forget pairs look *less* like members than pairs it never saw is
as recognisable as one that still remembers them).

Forgetting gates (docs/verification.md has the reasoning):
- ``forget_vs_nonmember_{i2t,t2i}_r1``: Recall@1 on the erased pairs minus Recall@1 on matched
  non-members (the same client's audit pairs), on galleries of one size, within
  +-(``r1_tolerance`` + z SE);
- ``mia_{similarity,loss}_auc``: membership-inference AUC of the erased pairs against the same
  matched non-members, within 0.5 +-(``mia_tolerance`` + z SE);
- ``ledger_residual`` (client scope, ledger with theta_0): the share of the client's exclusive
  contribution still in the weights, r <= ``residual_max`` (one-sided: a negative r means the weights lie
  beyond a model without that contribution along it, which is not knowledge kept; over-removal shows in the
  utility and membership gates);
- ``concept_probe`` (when the request names a concept): a model that never learnt the concept's word
  treats it as one more untrained token, so the word must not outscore nearly all of 199 words no training
  caption contains (``ease_engine.evaluation.untrained_words``; a permutation test at the level z gives).
  A two-word value (a position) is judged by multiple-choice accuracy against chance + ``probe_margin`` + z SE.

Utility gates: Recall@1 (both directions) on the retained clients' training pairs and on their audit
pairs must keep ``utility_keep`` of the parent's skill above chance, minus z SE:
    floor = chance + utility_keep (parent - chance) - z SE.

Every gate is also evaluated on the unchanged parent (the no-op control). The verdict is ``passed``
only if the candidate passes every gate AND at least one forgetting gate fails for the parent: a check
is evidence only where it rejects what it must reject. Otherwise it is ``inconclusive`` (nothing
measurable to verify: the parent shows no knowledge of the erased pairs, its utility is at chance, or
no forgetting gate tells it from an erased model) or ``failed``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    z: float = Field(2.0, gt=0, description="bands are z standard errors wide (each side)")
    r1_tolerance: float = Field(2.0, ge=0, description="Recall@1 points added to the member vs non-member band")
    mia_tolerance: float = Field(0.03, ge=0, description="AUC added to the membership-inference band around 0.5")
    residual_max: float = Field(0.7, gt=0, description="largest ledger residual (share of the client's exclusive "
                                "contribution still in the weights; one-sided)")
    exclusive_energy: float = Field(0.999, gt=0, le=1, description="energy of the retained support the client's "
                                    "exclusive contribution is measured against")
    exclusivity_ratio: float = Field(0.0, ge=0, description="a block is exclusive to the client when its exclusive "
                                     "share exceeds this times the largest share a retained client shows")
    probe_margin: float = Field(5.0, ge=0, description="concept-probe points allowed above chance, for a concept "
                                "of several words (positions); one-word concepts are ranked among untrained words")
    utility_keep: float = Field(0.5, gt=0, le=1, description="share of the parent's above-chance Recall@1 on "
                                "retained data the candidate must keep (the retrain reference of the default "
                                "federation keeps 84-90%, shared-concept's 69-79%: the erased client's pairs "
                                "taught general skills too)")
    min_nonmembers: int = Field(20, ge=4, description="fewer matched non-members: the pair-level gates do not apply")
    max_split_items: int = Field(500, ge=10, description="each verification split (and the erased pairs' Recall@K "
                                 "gallery) is a seeded sample of at most this many pairs")
    seed: int = 0


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


class Gate(BaseModel):
    """One check: ``low <= value <= high`` (either bound may be open)."""

    name: str
    kind: Literal["forgetting", "utility"]
    description: str
    value: float
    low: float | None = None
    high: float | None = None
    passed: bool
    control_value: float | None = None  # the same figure for the unchanged parent (the no-op control)
    control_passed: bool | None = None

    @computed_field
    @property
    def comparison(self) -> str:
        if self.low is not None and self.high is not None:
            return "within"
        return "<=" if self.high is not None else ">="

    @computed_field
    @property
    def threshold(self) -> float:
        """The binding bound of a one-sided gate; the upper bound of a band."""
        return float(self.high if self.high is not None else self.low)

    @classmethod
    def check(cls, name: str, kind: str, description: str, value: float, low: float | None = None,
              high: float | None = None, control_value: float | None = None) -> Gate:
        def inside(x: float) -> bool:
            return (low is None or x >= low) and (high is None or x <= high)

        return cls(
            name=name, kind=kind, description=description, value=round(float(value), 4),
            low=None if low is None else round(float(low), 4), high=None if high is None else round(float(high), 4),
            passed=inside(value), control_value=None if control_value is None else round(float(control_value), 4),
            control_passed=None if control_value is None else inside(control_value),
        )

    def summary(self) -> str:
        if self.comparison == "within":
            bound = f"in [{self.low:g}, {self.high:g}]"
        else:
            bound = f"{self.comparison} {self.threshold:g}"
        return f"{self.name} = {self.value:g} {bound}: {'pass' if self.passed else 'FAIL'}"
