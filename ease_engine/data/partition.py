"""Federated partitions: which client holds which pair, deterministic from a seed.

Every function returns an int64 array with one client id per item (0 .. n_clients-1).

* :func:`iid` shuffles the items and deals them out in near-equal shares.
* :func:`dirichlet` is the usual label-Dirichlet non-IID split: for every label the share
  of each client is drawn from Dir(alpha); small alpha gives skewed clients.
* :func:`exclusive_concepts` gives each *owner* client every item that carries its concept
  (e.g. client 0 owns ("colour", "purple")) plus some ordinary items; no other client sees
  that concept. This is the setting in which a whole client's contribution, and with it a
  concept, is erased.
* :func:`by_category` makes each real category one client (client k holds the items whose
  category, e.g. the Unicode emoji group in ``dataset.concepts["category"]``, is one of
  ``categories[k]``): erasing a client erases a category.

:class:`PartitionConfig` and :func:`apply_partition` turn a config into a data set with
client ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ease_engine.data.dataset import CaptionDataset
from ease_engine.data.errors import DataError

Concept = tuple[str, str]  # (attribute, value), e.g. ("colour", "purple")


def _check_clients(n_items: int, n_clients: int) -> None:
    if n_clients < 1:
        raise ValueError(f"n_clients must be at least 1, got {n_clients}")
    if n_items < n_clients:
        raise DataError(
            f"cannot give each of {n_clients} clients an item: there are only {n_items} items; "
            "use fewer clients or more data"
        )


def iid(n_items: int, n_clients: int, seed: int) -> np.ndarray:
    """Shuffle the items and deal them to clients in shares that differ by at most one."""
    _check_clients(n_items, n_clients)
    order = np.random.default_rng(seed).permutation(n_items)
    client_ids = np.empty(n_items, dtype=np.int64)
    for client, share in enumerate(np.array_split(order, n_clients)):
        client_ids[share] = client
    return client_ids


def dirichlet(labels: Sequence[object] | np.ndarray, n_clients: int, alpha: float, seed: int) -> np.ndarray:
    """Label-Dirichlet non-IID split: for each label, client shares ~ Dir(alpha, ..., alpha).

    Every client gets at least one item: a client left empty by the draw receives a random
    item of the currently largest client (deterministic, and rare unless alpha is tiny).
    Raises :class:`DataError` if there are fewer items than clients.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    _, label_ids = np.unique(np.asarray(labels), return_inverse=True)
    label_ids = label_ids.reshape(-1)
    n_items = len(label_ids)
    _check_clients(n_items, n_clients)
    rng = np.random.default_rng(seed)
    client_ids = np.empty(n_items, dtype=np.int64)
    for label in range(int(label_ids.max()) + 1):
        members = rng.permutation(np.flatnonzero(label_ids == label))
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, part in enumerate(np.split(members, cuts)):
            client_ids[part] = client
    _fill_empty_clients(client_ids, n_clients, rng)
    return client_ids


def _fill_empty_clients(client_ids: np.ndarray, n_clients: int, rng: np.random.Generator) -> None:
    """Move one random item from the largest client to each client without items (in place)."""
    for client in range(n_clients):
        counts = np.bincount(client_ids, minlength=n_clients)
        if counts[client] == 0:
            donor = int(np.argmax(counts))
            client_ids[rng.choice(np.flatnonzero(client_ids == donor))] = client


def first_object_labels(dataset: CaptionDataset, attribute: str = "shape") -> list[str]:
    """One label per item for :func:`dirichlet`: ``attribute`` of the first object (scenes).

    The first object is the first in canonical order (the top-most, then left-most one).
    Raises :class:`DataError` for data sets without object structure (real photos).
    """
    if dataset.structure is None:
        raise DataError(
            f"data set {dataset.name!r} has no object structure to take Dirichlet labels from; "
            "use an iid partition for it"
        )
    return [getattr(objects[0], attribute) for objects in dataset.structure]


def _owner_of_items(dataset: CaptionDataset, owners: dict[int, Concept]) -> np.ndarray:
    """For each item the lowest owner client whose concept it carries, or -1 for none."""
    owner_of = np.full(len(dataset), -1, dtype=np.int64)
    for client in sorted(owners, reverse=True):  # lower ids overwrite higher ones
        attribute, value = owners[client]
        has_concept = [value in concepts.get(attribute, ()) for concepts in dataset.concepts]
        owner_of[np.asarray(has_concept, dtype=bool)] = client
    return owner_of


def _check_owners(owners: dict[int, Concept], n_clients: int) -> None:
    if not owners:
        raise ValueError("exclusive_concepts needs at least one owner client")
    for client, concept in owners.items():
        if not 0 <= client < n_clients:
            raise ValueError(f"owner client {client} is not one of the {n_clients} clients")
        if len(concept) != 2:
            raise ValueError(f"owner {client}: concept must be (attribute, value), got {concept!r}")
    if len(owners) >= n_clients:
        raise ValueError(
            f"{len(owners)} owners leave none of the {n_clients} clients for the ordinary items; raise n_clients"
        )


def exclusive_concepts(
    dataset: CaptionDataset,
    n_clients: int,
    owners: dict[int, Concept],
    n_shared_per_owner: int,
    seed: int,
    base: Literal["iid", "dirichlet"] = "iid",
    alpha: float = 0.5,
    label_attribute: str = "shape",
) -> np.ndarray:
    """Owner clients hold *all* items with their concept; the other clients hold none.

    ``owners`` maps a client id to its concept (attribute, value), looked up in
    ``dataset.concepts``. Each owner gets every item carrying its concept plus
    ``n_shared_per_owner`` random ordinary items (items with no owner's concept). An item
    carrying the concepts of several owners goes to the lowest owner id. The remaining
    ordinary items are split among the non-owner clients, ``iid`` or ``dirichlet`` (labels
    from :func:`first_object_labels` with ``label_attribute``). Raises :class:`DataError`
    if an owner would get no concept item or there are too few ordinary items.
    """
    _check_owners(owners, n_clients)
    owners = {int(c): (str(concept[0]), str(concept[1])) for c, concept in owners.items()}
    owner_of = _owner_of_items(dataset, owners)
    for client, concept in sorted(owners.items()):
        if not np.any(owner_of == client):
            raise DataError(
                f"owner client {client}: no item of data set {dataset.name!r} carries {concept} "
                "(or all such items also carry the concept of a lower owner id); choose another concept"
            )
    rng = np.random.default_rng(seed)
    ordinary = rng.permutation(np.flatnonzero(owner_of == -1))
    n_shared = n_shared_per_owner * len(owners)
    others = [c for c in range(n_clients) if c not in owners]
    if len(ordinary) < n_shared + len(others):
        raise DataError(
            f"only {len(ordinary)} items carry no owner concept; {n_shared} are needed as shared items "
            f"and at least {len(others)} for the other clients; lower n_shared_per_owner"
        )
    client_ids = owner_of.copy()
    for k, client in enumerate(sorted(owners)):
        client_ids[ordinary[k * n_shared_per_owner : (k + 1) * n_shared_per_owner]] = client
    rest = np.sort(ordinary[n_shared:])
    base_seed = int(rng.integers(2**63 - 1))
    if base == "iid":
        local = iid(len(rest), len(others), base_seed)
    elif base == "dirichlet":
        labels = first_object_labels(dataset, label_attribute)
        local = dirichlet([labels[i] for i in rest], len(others), alpha, base_seed)
    else:
        raise ValueError(f"base must be 'iid' or 'dirichlet', got {base!r}")
    client_ids[rest] = np.asarray(others, dtype=np.int64)[local]
    return client_ids


def category_of_items(dataset: CaptionDataset, attribute: str) -> list[str]:
    """The one value of ``attribute`` every item carries in ``dataset.concepts``.

    Raises :class:`DataError` for an item without it or with several values.
    """
    values = []
    for i, concepts in enumerate(dataset.concepts):
        found = concepts.get(attribute, frozenset())
        if len(found) != 1:
            raise DataError(
                f"item {dataset.pair_ids[i]!r} of data set {dataset.name!r} has "
                f"{'no' if not found else len(found)} {attribute!r} value(s); a category partition needs exactly one"
            )
        values.append(next(iter(found)))
    return values


def by_category(
    dataset: CaptionDataset,
    categories: Sequence[Sequence[str]] | None,
    attribute: str = "category",
    every_category_present: bool = True,
) -> np.ndarray:
    """Client k holds every item whose ``attribute`` is one of ``categories[k]``.

    ``categories=None`` gives one client per distinct value, in sorted order. Raises
    :class:`DataError` for an item whose category no client holds, for a category named
    twice, and (with ``every_category_present``, so that no client is left empty) for a
    category no item carries. Works on any split that carries the attribute: with
    ``every_category_present=False`` it finds each client's held-out pairs.
    """
    values = category_of_items(dataset, attribute)
    if categories is None:
        categories = [[value] for value in sorted(set(values))]
    client_of: dict[str, int] = {}
    for client, names in enumerate(categories):
        for name in names:
            if name in client_of:
                raise DataError(f"category {name!r} is given to clients {client_of[name]} and {client}")
            client_of[name] = client
    present = set(values)
    unused = sorted(set(client_of) - present)
    if unused and every_category_present:
        raise DataError(f"no item of {dataset.name!r} has {attribute} {unused}; its values are {sorted(present)}")
    unassigned = sorted(present - set(client_of))
    if unassigned:
        raise DataError(
            f"items of {dataset.name!r} with {attribute} {unassigned} belong to no client; add them to categories"
        )
    return np.asarray([client_of[v] for v in values], dtype=np.int64)


class PartitionConfig(BaseModel):
    """How to split a data set among federated clients; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["iid", "dirichlet", "exclusive", "category"] = "iid"
    n_clients: int = Field(6, ge=1)
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (dirichlet, or exclusive base)")
    owners: dict[int, tuple[str, str]] = Field(
        default_factory=lambda: {0: ("colour", "purple")},
        description="exclusive: owner client id -> (attribute, value) it alone holds",
    )
    n_shared_per_owner: int = Field(200, ge=0, description="exclusive: ordinary items each owner also gets")
    concept_shared_with: dict[int, float] = Field(
        default_factory=dict,
        description="exclusive: client k (not an owner) receives this share of every owner's concept items, so the "
        "concept is no longer exclusive (shared-concept scenario: {1: 0.3})",
    )
    base: Literal["iid", "dirichlet"] = Field("iid", description="exclusive: split of the non-owner items")
    label_attribute: Literal["shape", "colour", "size", "position"] = Field(
        "shape", description="dirichlet: attribute of the first object used as the label"
    )
    category_attribute: str = Field("category", description="category: the concepts key that holds the category")
    categories: list[list[str]] | None = Field(
        None, description="category: client k holds the items of categories[k]; None: one client per value, sorted"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _owners_fit(self) -> PartitionConfig:
        if self.kind == "exclusive":
            _check_owners(self.owners, self.n_clients)
            for client, share in self.concept_shared_with.items():
                if client in self.owners or not 0 <= client < self.n_clients:
                    raise ValueError(f"concept_shared_with: client {client} must be a non-owner client")
                if not 0 < share < 1:
                    raise ValueError(f"concept_shared_with: share {share} of client {client} must be in (0, 1)")
            if sum(self.concept_shared_with.values()) >= 1:
                raise ValueError("concept_shared_with: the shares must leave the owners some of their concept items")
        if self.kind == "category" and self.categories is not None:
            if len(self.categories) != self.n_clients:
                raise ValueError(f"categories lists {len(self.categories)} clients but n_clients is {self.n_clients}")
            if any(not names for names in self.categories):
                raise ValueError("every client in categories needs at least one category")
        return self


def partition_ids(dataset: CaptionDataset, config: PartitionConfig) -> np.ndarray:
    """The client id of every pair of ``dataset`` under ``config``."""
    if config.kind == "iid":
        return iid(len(dataset), config.n_clients, config.seed)
    if config.kind == "dirichlet":
        labels = first_object_labels(dataset, config.label_attribute)
        return dirichlet(labels, config.n_clients, config.alpha, config.seed)
    if config.kind == "category":
        client_ids = by_category(dataset, config.categories, config.category_attribute)
        n_found = int(client_ids.max()) + 1
        if n_found != config.n_clients:
            raise DataError(f"data set {dataset.name!r} has {n_found} categories, but n_clients is {config.n_clients}")
        return client_ids
    client_ids = exclusive_concepts(
        dataset,
        config.n_clients,
        config.owners,
        config.n_shared_per_owner,
        config.seed,
        base=config.base,
        alpha=config.alpha,
        label_attribute=config.label_attribute,
    )
    if config.concept_shared_with:
        owners = {int(c): (str(v[0]), str(v[1])) for c, v in config.owners.items()}
        client_ids = share_concept_items(client_ids, _owner_of_items(dataset, owners), config.concept_shared_with,
                                         config.seed)
    return client_ids


def share_concept_items(client_ids: np.ndarray, owner_of: np.ndarray, shares: dict[int, float],
                        seed: int) -> np.ndarray:
    """Give client k a seeded share ``shares[k]`` of every owner's concept items (``owner_of[i]`` >= 0)."""
    out = client_ids.copy()
    rng = np.random.default_rng([seed, 0x5A4E])
    for owner in sorted(set(owner_of[owner_of >= 0].tolist())):
        items = rng.permutation(np.flatnonzero((owner_of == owner) & (client_ids == owner)))
        start = 0
        for client, share in sorted(shares.items()):
            count = int(math.floor(share * len(items) + 0.5))
            out[items[start:start + count]] = client
            start += count
    return out


def apply_partition(dataset: CaptionDataset, config: PartitionConfig) -> CaptionDataset:
    """A copy of ``dataset`` (sharing its images) with client ids assigned by ``config``."""
    out = dataset.with_clients(partition_ids(dataset, config))
    out.skipped = dataset.skipped
    return out
