"""The data verification judges with, built from the audit split (which no unlearning method sees).

- ``members``: the erased pairs (they were trained on);
- ``nonmembers``: matched non-members, the erased client's own audit pairs (held out by that client,
  never trained on, drawn from the forget data's own distribution);
- ``retain``: the retained clients' training pairs (a seeded sample);
- ``retained_heldout``: the retained clients' audit pairs (held-out utility on the data that stays);
- ``test``: the global audit pairs (held-out utility, reported beside the gates).

Members and non-members are compared on galleries of one size (Recall@K falls as a gallery grows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ease_engine.data.dataset import NO_CLIENT, CaptionDataset
from ease_engine.data.holdout import FederationData
from ease_engine.evaluation.splits import sample_gallery


@dataclass(frozen=True)
class VerificationSplits:
    members: CaptionDataset
    nonmembers: CaptionDataset
    retain: CaptionDataset
    retained_heldout: CaptionDataset
    test: CaptionDataset

    @property
    def matched_size(self) -> int:
        """Gallery size of the member vs non-member comparison."""
        return min(len(self.members), len(self.nonmembers))

    def matched_galleries(self, seed: int) -> tuple[CaptionDataset, CaptionDataset]:
        n = self.matched_size
        return sample_gallery(self.members, n, seed), sample_gallery(self.nonmembers, n, seed + 1)

    def forget_gallery(self, size: int, seed: int) -> CaptionDataset:
        """The erased pairs' Recall@K gallery: a seeded sample the size of the other splits' galleries."""
        return sample_gallery(self.members, size, seed + 4)

    def named(self) -> dict[str, CaptionDataset]:
        return {"forget": self.members, "nonmembers": self.nonmembers, "retain": self.retain,
                "retained_heldout": self.retained_heldout, "test": self.test}


def build_verification_splits(
    data: FederationData,
    forget_items: np.ndarray,
    retain_items: np.ndarray,
    client: int,
    retained_clients: list[int],
    max_items: int,
    seed: int = 0,
) -> VerificationSplits:
    """The splits for erasing ``forget_items`` (indices into ``data.train``) of ``client``."""
    audit = data.audit
    retained_audit = np.flatnonzero(np.isin(audit.client_ids, retained_clients) & (audit.client_ids != client))
    return VerificationSplits(
        members=data.train.subset(forget_items, name="forget"),
        nonmembers=sample_gallery(audit.subset(audit.client_indices(client), name="nonmembers"), max_items, seed),
        retain=sample_gallery(data.train.subset(retain_items, name="retain"), max_items, seed + 1),
        retained_heldout=sample_gallery(audit.subset(retained_audit, name="retained_heldout"), max_items, seed + 2),
        test=sample_gallery(audit.subset(audit.client_indices(NO_CLIENT), name="test"), max_items, seed + 3),
    )
