"""Recall@K with several captions per image, and the multiple-choice caption probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ease_engine.evaluation.probe import probe_accuracy, probe_correct
from ease_engine.evaluation.retrieval import per_image_recall, recall_at_k, retrieval_ranks


def _brute_force_positions(images: np.ndarray, texts: np.ndarray, owner: np.ndarray) -> tuple[list, list]:
    """Independent reference: full similarity matrix, sort each query, find the first correct item."""
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    sims = images @ texts.T  # (N, M)
    i2t_positions = []
    for i in range(images.shape[0]):
        order = np.argsort(-sims[i], kind="stable")
        i2t_positions.append(int(np.flatnonzero(owner[order] == i)[0]))
    t2i_positions = []
    for j in range(texts.shape[0]):
        order = np.argsort(-sims[:, j], kind="stable")
        t2i_positions.append(int(np.flatnonzero(order == owner[j])[0]))
    return i2t_positions, t2i_positions


def _brute_force_recall(images: np.ndarray, texts: np.ndarray, owner: np.ndarray, ks) -> dict[str, float]:
    i2t_positions, t2i_positions = _brute_force_positions(images, texts, owner)
    result = {}
    for name, positions in (("i2t", i2t_positions), ("t2i", t2i_positions)):
        for k in ks:
            result[f"{name}_r{k}"] = 100.0 * float(np.mean(np.asarray(positions) < k))
    return result


def _random_case(seed: int, n_images: int = 40, dim: int = 16, max_captions: int = 5):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n_images, dim))
    captions_per_image = rng.integers(1, max_captions + 1, size=n_images)
    owner = np.repeat(np.arange(n_images), captions_per_image)
    rng.shuffle(owner)
    # captions are noisy copies of their image: recall is neither 0 nor 100
    texts = images[owner] + 1.2 * rng.standard_normal((owner.size, dim))
    return images, texts, owner


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(seed):
    images, texts, owner = _random_case(seed)
    ks = (1, 5, 10)
    ours = recall_at_k(torch.from_numpy(images), torch.from_numpy(texts), torch.from_numpy(owner), ks=ks)
    reference = _brute_force_recall(images, texts, owner, ks)
    assert set(ours) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in ks}
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < ours["i2t_r1"] < 100 and 0 < ours["t2i_r1"] < 100


@pytest.mark.parametrize("seed", [0, 1])
def test_per_image_shares_match_a_brute_force_split_and_average_to_the_mean_recall(seed):
    images, texts, owner = _random_case(seed)
    ks = (1, 5, 10)
    shares = per_image_recall(images, texts, owner, ks=ks)
    i2t, t2i = (np.asarray(p) for p in _brute_force_positions(images, texts, owner))
    n, m = len(images), len(texts)
    for i in range(n):  # half the image's own hit rate, half its captions' share of the text-to-image mean
        own = np.mean([i2t[i] < k for k in ks])
        captions = sum(np.mean([t2i[j] < k for k in ks]) for j in np.flatnonzero(owner == i))
        assert shares[i] == pytest.approx(50 * own + 50 * captions * n / m, abs=1e-9), i
    recalls = recall_at_k(images, texts, owner, ks=ks)
    assert shares.mean() == pytest.approx(np.mean(list(recalls.values())), abs=1e-9)
    assert shares.std() > 0  # images differ: the spread is what the sampling error is made of


def test_chunk_size_does_not_change_results():
    images, texts, owner = _random_case(3, n_images=30)
    reference = retrieval_ranks(images, texts, owner, chunk_size=10_000)
    for chunk_size in (1, 7, 30):
        ranks = retrieval_ranks(images, texts, owner, chunk_size=chunk_size)
        assert torch.equal(ranks[0], reference[0]) and torch.equal(ranks[1], reference[1])
    assert recall_at_k(images, texts, owner, chunk_size=1) == recall_at_k(
        images, texts, owner, chunk_size=4096
    )


def test_identity_embeddings_give_full_recall():
    eye = np.eye(10)
    assert all(v == 100.0 for v in recall_at_k(eye, eye, np.arange(10)).values())
    # three captions per image, differently scaled (normalised inside)
    owner = np.repeat(np.arange(10), 3)
    texts = eye[owner] * np.tile([1.0, 2.0, 0.5], 10)[:, None]
    assert all(v == 100.0 for v in recall_at_k(eye, texts, owner).values())


def test_known_permutation():
    # caption j sits on image perm[j] but belongs to image j: correct iff perm[j] == j, otherwise
    # exactly one wrong item (score 1) beats the own one (score 0) and the rank is 1
    perm = np.array([0, 2, 1, 3, 5, 6, 4, 7, 9, 8])  # fixed points 0, 3, 7
    eye = np.eye(10)
    recalls = recall_at_k(eye, eye[perm], np.arange(10), ks=(1, 2, 5))
    assert recalls == {
        "i2t_r1": 30.0,
        "i2t_r2": 100.0,
        "i2t_r5": 100.0,
        "t2i_r1": 30.0,
        "t2i_r2": 100.0,
        "t2i_r5": 100.0,
    }


def test_any_own_caption_counts_for_image_to_text():
    # image 0 has three captions; only one of them is close, and that is enough
    images = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    texts = np.array(
        [
            [0.0, 1.0, 0.3],  # owned by 0 but looks like image 1
            [0.0, 0.1, 1.0],  # owned by 0 but looks like image 2
            [1.0, 0.2, 0.0],  # owned by 0, close to it
            [0.1, 1.0, 0.0],  # owned by 1
            [0.0, 0.0, 1.0],  # owned by 2
        ]
    )
    owner = np.array([0, 0, 0, 1, 2])
    i2t, t2i = retrieval_ranks(images, texts, owner)
    assert i2t.tolist() == [0, 0, 0]
    assert t2i.tolist() == [2, 2, 0, 0, 0]  # images 1 and 2 both beat image 0 for captions 0 and 1
    recalls = recall_at_k(images, texts, owner, ks=(1,))
    assert recalls == {"i2t_r1": 100.0, "t2i_r1": 60.0}


def test_invalid_inputs():
    eye = np.eye(4)
    with pytest.raises(ValueError, match="at least one caption"):
        recall_at_k(eye, eye[:3], np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        recall_at_k(eye, eye, np.array([0, 1, 2, 4]))
    with pytest.raises(ValueError):
        recall_at_k(eye, eye, np.array([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        recall_at_k(eye, np.eye(5)[:4], np.arange(4))
    with pytest.raises(ValueError):
        recall_at_k(eye, eye, np.arange(4), ks=(0,))
    for measure in (recall_at_k, per_image_recall):  # a repeated K would count twice in one and once in the other
        with pytest.raises(ValueError, match="distinct"):
            measure(eye, eye, np.arange(4), ks=(1, 1, 5))


# -- probe ------------------------------------------------------------------------------------


def _probe_case():
    images = np.eye(4)[:3]
    candidates = np.array(
        [
            [[0.0, 1.0, 0.0, 0.0], [1.0, 0.1, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],  # true (1) best: correct
            [[0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],  # true (2) worst: wrong
            [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0]],  # tie after norm: wrong
        ]
    )
    true_index = np.array([1, 2, 0])
    return images, candidates, true_index


def test_probe_on_constructed_embeddings():
    images, candidates, true_index = _probe_case()
    assert probe_correct(images, candidates, true_index).tolist() == [True, False, False]
    assert probe_accuracy(images, candidates, true_index) == pytest.approx(100.0 / 3)
    assert probe_accuracy(images, candidates, np.array([1, 0, 1])) == pytest.approx(100.0 * 2 / 3)


def test_probe_with_a_list_of_candidate_sets():
    images, candidates, true_index = _probe_case()
    as_list = [torch.from_numpy(c) for c in candidates]
    assert probe_accuracy(images, as_list, true_index) == probe_accuracy(images, candidates, true_index)
    ragged = [candidates[0], candidates[1][:1], candidates[2][:2]]  # 3, 1 and 2 candidates
    assert probe_correct(images, ragged, np.array([1, 0, 1])).tolist() == [True, True, False]
    with pytest.raises(ValueError):
        probe_accuracy(images, ragged, np.array([1, 1, 1]))  # index 1 with one candidate
