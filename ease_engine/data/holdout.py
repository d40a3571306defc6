"""Held-out data, split once: what methods may use (``calibration``) and what only verification reads
(``audit``).

Every federation keeps two kinds of pairs out of training:

- the global held-out set of the data source (``scenes``' test split, Karpathy ``test``, manifest
  lines without a client): owner ``NO_CLIENT``;
- per-client held-out pairs: each client keeps ``client_fraction`` of its own pairs for local
  validation, as federations do, so verification has non-members drawn from the forget data's own
  distribution (owner: that client).

Each of these held-out groups is split, by owner, into ``calibration`` (an unlearning method may read
it: EASE's non-member target, any tuning) and ``audit`` (``audit_fraction`` of it; only verification
reads it). The split is deterministic from ``seed`` and independent of which clients train (a retrain
reference without client f holds out exactly the same pairs). The held-out sets carry the owner in
``client_ids``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ease_engine.data.dataset import NO_CLIENT, CaptionDataset, concat_datasets


class HoldoutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_fraction: float = Field(
        0.15, ge=0, lt=1, description="share of each client's pairs kept out of training (local validation)"
    )
    audit_fraction: float = Field(
        0.6, gt=0, lt=1, description="share of every held-out group reserved for verification (the audit split)"
    )
    seed: int = 0


@dataclass(frozen=True)
class FederationData:
    """A federation's pairs: ``train`` (client ids: who trains on it), ``calibration`` and ``audit``
    (held out; client ids: the owner, ``NO_CLIENT`` for the global held-out set)."""

    train: CaptionDataset
    calibration: CaptionDataset
    audit: CaptionDataset


def _split(items: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rest): ``round(fraction * n)`` items chosen at random, both sorted."""
    chosen = rng.permutation(items)[: int(math.floor(fraction * len(items) + 0.5))]
    rest = np.setdiff1d(items, chosen)
    return np.sort(chosen), rest


def split_holdout(partitioned: CaptionDataset, heldout: CaptionDataset, config: HoldoutConfig) -> FederationData:
    """Take each client's held-out share out of ``partitioned`` and split every held-out group."""
    combined = concat_datasets([partitioned, heldout.with_clients(np.full(len(heldout), NO_CLIENT))], "pairs")
    n_train = len(partitioned)
    owners = np.where(np.arange(len(combined)) < n_train, combined.client_ids, NO_CLIENT)
    train_items, held = [], {NO_CLIENT: np.arange(n_train, len(combined))}
    for client in partitioned.clients:
        rng = np.random.default_rng([config.seed, 0xC11E, client])
        kept, trained = _split(np.flatnonzero(owners[:n_train] == client), config.client_fraction, rng)
        held[client] = kept
        train_items.append(trained)
    calibration_items, audit_items = [], []
    for owner, items in sorted(held.items()):
        rng = np.random.default_rng([config.seed, 0xA0D1, owner + 1])
        audit, calibration = _split(items, config.audit_fraction, rng)
        audit_items.append(audit)
        calibration_items.append(calibration)
    owned = combined.with_clients(owners)  # held-out pairs keep their owner; global held-out pairs NO_CLIENT
    train = combined.subset(np.sort(np.concatenate(train_items)), name=partitioned.name)
    return FederationData(
        train=train,
        calibration=owned.subset(np.sort(np.concatenate(calibration_items)), name="calibration"),
        audit=owned.subset(np.sort(np.concatenate(audit_items)), name="audit"),
    )
