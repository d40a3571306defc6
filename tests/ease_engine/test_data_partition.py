"""Federated partitions: complete, deterministic, skewed when asked, exclusive when asked."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ease_engine.data import (
    CaptionDataset,
    DataError,
    PartitionConfig,
    ScenesConfig,
    apply_partition,
    by_category,
    dirichlet,
    exclusive_concepts,
    first_object_labels,
    iid,
    make_scenes,
)


@pytest.fixture(scope="module")
def train() -> CaptionDataset:
    return make_scenes(ScenesConfig(n_train=300, n_test=0, seed=1, image_size=16))[0]


def has(dataset: CaptionDataset, attribute: str, value: str) -> np.ndarray:
    return np.array([value in c[attribute] for c in dataset.concepts])


def label_skew(labels: list[str], client_ids: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    values, label_ids = np.unique(labels, return_inverse=True)
    overall = np.bincount(label_ids, minlength=len(values)) / len(labels)
    distances = []
    for client in np.unique(client_ids):
        local = np.bincount(label_ids[client_ids == client], minlength=len(values))
        distances.append(0.5 * np.abs(local / local.sum() - overall).sum())
    return float(np.mean(distances))


# --------------------------------------------------------------------------- iid
def test_iid_assigns_every_item_once_in_balanced_shares():
    ids = iid(103, 6, seed=0)
    assert ids.dtype == np.int64 and ids.shape == (103,)
    counts = np.bincount(ids, minlength=6)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1 and ids.max() == 5


def test_iid_is_deterministic_per_seed():
    assert np.array_equal(iid(100, 4, seed=7), iid(100, 4, seed=7))
    assert not np.array_equal(iid(100, 4, seed=7), iid(100, 4, seed=8))


def test_iid_needs_an_item_per_client():
    with pytest.raises(DataError, match="only 3 items"):
        iid(3, 4, seed=0)


# --------------------------------------------------------------------------- dirichlet
def test_dirichlet_skews_labels_far_more_than_iid(train):
    labels = first_object_labels(train)
    skewed = dirichlet(labels, 6, alpha=0.1, seed=0)
    balanced = iid(len(train), 6, seed=0)
    assert label_skew(labels, skewed) > 0.35
    assert label_skew(labels, skewed) > 3 * label_skew(labels, balanced)


def test_dirichlet_skew_grows_as_alpha_shrinks(train):
    labels = first_object_labels(train)
    assert label_skew(labels, dirichlet(labels, 6, 0.1, seed=2)) > label_skew(
        labels, dirichlet(labels, 6, 100.0, seed=2)
    )


def test_dirichlet_is_deterministic_and_covers_every_item(train):
    labels = first_object_labels(train)
    ids = dirichlet(labels, 6, alpha=0.5, seed=3)
    assert np.array_equal(ids, dirichlet(labels, 6, alpha=0.5, seed=3))
    assert not np.array_equal(ids, dirichlet(labels, 6, alpha=0.5, seed=4))
    assert ids.shape == (len(train),) and set(np.unique(ids)) == set(range(6))


def test_dirichlet_gives_every_client_an_item_even_with_tiny_alpha():
    labels = ["a"] * 5 + ["b"] * 5
    for seed in range(5):
        ids = dirichlet(labels, 10, alpha=0.01, seed=seed)
        assert sorted(ids) == list(range(10))


def test_dirichlet_fails_clearly_with_fewer_items_than_clients():
    with pytest.raises(DataError, match="only 2 items"):
        dirichlet(["a", "b"], 3, alpha=1.0, seed=0)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(["a", "b"], 2, alpha=0.0, seed=0)


# --------------------------------------------------------------------------- exclusive
def test_exclusive_owner_holds_every_concept_item_and_nobody_else_does(train):
    ids = exclusive_concepts(train, 6, {0: ("colour", "purple")}, n_shared_per_owner=20, seed=0)
    purple = has(train, "colour", "purple")
    assert purple.sum() > 0
    assert np.all(ids[purple] == 0)
    assert not np.any(purple[ids != 0])
    assert (ids == 0).sum() == purple.sum() + 20
    assert ids.shape == (len(train),) and set(np.unique(ids)) == set(range(6))


def test_exclusive_overlapping_owners_go_to_the_lower_client(train):
    owners = {2: ("shape", "circle"), 0: ("colour", "purple")}
    ids = exclusive_concepts(train, 5, owners, n_shared_per_owner=10, seed=0)
    purple, circle = has(train, "colour", "purple"), has(train, "shape", "circle")
    assert (purple & circle).sum() > 0
    assert np.all(ids[purple] == 0)
    assert np.all(ids[circle & ~purple] == 2)
    non_owners = ~np.isin(ids, [0, 2])
    assert not np.any((purple | circle)[non_owners])
    assert (ids == 2).sum() == (circle & ~purple).sum() + 10


def test_exclusive_with_dirichlet_base_is_deterministic(train):
    def make(seed):
        owners = {0: ("colour", "purple")}
        return exclusive_concepts(train, 6, owners, 20, seed=seed, base="dirichlet", alpha=0.3)

    ids = make(5)
    assert np.array_equal(ids, make(5)) and not np.array_equal(ids, make(6))
    assert not np.any(has(train, "colour", "purple")[ids != 0])
    assert set(np.unique(ids)) == set(range(6))


def test_exclusive_rejects_impossible_requests(train):
    with pytest.raises(DataError, match="no item"):
        exclusive_concepts(train, 6, {0: ("colour", "mauve")}, 10, seed=0)
    with pytest.raises(DataError, match="n_shared_per_owner"):
        exclusive_concepts(train, 6, {0: ("colour", "purple")}, 1000, seed=0)
    with pytest.raises(ValueError, match="raise n_clients"):
        exclusive_concepts(train, 2, {0: ("colour", "red"), 1: ("colour", "blue")}, 10, seed=0)
    with pytest.raises(ValueError, match="not one of"):
        exclusive_concepts(train, 3, {5: ("colour", "red")}, 10, seed=0)


# --------------------------------------------------------------------------- config
def test_partition_config_rejects_unknown_keys_and_parses_owner_lists():
    with pytest.raises(ValidationError, match="n_client"):
        PartitionConfig(n_client=3)
    config = PartitionConfig.model_validate({"kind": "exclusive", "owners": {"1": ["shape", "ring"]}})
    assert config.owners == {1: ("shape", "ring")}
    with pytest.raises(ValidationError, match="raise n_clients"):
        PartitionConfig(kind="exclusive", n_clients=1)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "exclusive"])
def test_apply_partition_returns_a_copy_with_client_ids(train, kind):
    config = PartitionConfig(kind=kind, n_clients=4, n_shared_per_owner=10, seed=2)
    parted = apply_partition(train, config)
    assert parted.pair_ids == train.pair_ids and parted.captions == train.captions
    assert np.array_equal(parted.pixels, train.pixels)
    assert parted.clients == [0, 1, 2, 3]
    assert np.all(train.client_ids == -1)  # the input is untouched
    assert np.array_equal(parted.client_ids, apply_partition(train, config).client_ids)
    if kind == "exclusive":
        assert not np.any(has(train, "colour", "purple")[parted.client_ids != 0])


def test_dirichlet_needs_labels_from_object_structure(train):
    photos = CaptionDataset(
        name="photos", pair_ids=["a", "b"], captions=[["x"], ["y"]], image_paths=["a", "b"]
    )
    with pytest.raises(DataError, match="iid"):
        apply_partition(photos, PartitionConfig(kind="dirichlet", n_clients=2))
    assert apply_partition(photos, PartitionConfig(kind="iid", n_clients=2)).clients == [0, 1]


# --------------------------------------------------------------------------- category
def categorised(groups: list[str], attribute: str = "category") -> CaptionDataset:
    """One pixel image per item, each carrying its group as ``concepts[attribute]``."""
    n = len(groups)
    return CaptionDataset(
        name="named",
        pair_ids=[f"p{i}" for i in range(n)],
        captions=[[f"item {i}"] for i in range(n)],
        pixels=np.zeros((n, 2, 2, 3), dtype=np.uint8),
        concepts=[{attribute: frozenset({g})} for g in groups],
    )


GROUPS = ["fish", "birds", "fish", "food", "birds", "tools", "fish"]


def test_by_category_gives_each_category_its_client_in_sorted_order():
    assert by_category(categorised(GROUPS), None).tolist() == [1, 0, 1, 2, 0, 3, 1]  # birds, fish, food, tools


def test_by_category_groups_categories_as_configured():
    ids = by_category(categorised(GROUPS), [["food"], ["fish", "birds"], ["tools"]])
    assert ids.tolist() == [1, 1, 1, 0, 1, 2, 1]
    # the same mapping works on any split that carries the attribute (a held-out set)
    held_out = categorised(["tools", "food"])
    assert by_category(held_out, [["food"], ["fish", "tools"]], every_category_present=False).tolist() == [1, 0]
    with pytest.raises(DataError, match=r"no item of 'named' has category \['fish'\]"):
        by_category(held_out, [["food"], ["fish", "tools"]])


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ([["fish"], ["birds", "food"]], r"with category \['tools'\] belong to no client"),
        ([["fish"], ["birds", "fish"], ["food", "tools"]], "'fish' is given to clients 0 and 1"),
        ([["fish", "whales"], ["birds", "food", "tools"]], r"no item of 'named' has category \['whales'\]"),
    ],
)
def test_by_category_refuses_unassigned_doubled_and_unknown_categories(categories, message):
    with pytest.raises(DataError, match=message):
        by_category(categorised(GROUPS), categories)


def test_by_category_needs_exactly_one_category_per_item():
    dataset = categorised(GROUPS)
    dataset.concepts[3] = {}
    with pytest.raises(DataError, match="'p3' of data set 'named' has no 'category'"):
        by_category(dataset, None)
    dataset.concepts[3] = {"category": frozenset({"fish", "food"})}
    with pytest.raises(DataError, match="has 2 'category' value"):
        by_category(dataset, None)
    with pytest.raises(DataError, match="'p0' of data set 'named' has no 'kind'"):
        by_category(categorised(GROUPS), None, attribute="kind")


def test_category_partition_config_checks_the_client_count():
    with pytest.raises(ValidationError, match="categories lists 2 clients but n_clients is 3"):
        PartitionConfig(kind="category", n_clients=3, categories=[["fish"], ["birds"]])
    with pytest.raises(ValidationError, match="at least one category"):
        PartitionConfig(kind="category", n_clients=2, categories=[["fish"], []])
    with pytest.raises(DataError, match="has 4 categories, but n_clients is 3"):
        apply_partition(categorised(GROUPS), PartitionConfig(kind="category", n_clients=3))
    parted = apply_partition(categorised(GROUPS, "kind"), PartitionConfig(kind="category", n_clients=4,
                                                                         category_attribute="kind", seed=5))
    assert parted.client_ids.tolist() == [1, 0, 1, 2, 0, 3, 1] and parted.clients == [0, 1, 2, 3]
