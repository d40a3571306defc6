"""Incremental SVD of the contribution ledger, checked against numpy's batch SVD."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ease_engine.linalg import IncrementalBasis, empty_basis, incremental_svd_update


def _feed(x: np.ndarray, chunk_sizes, rank_cap, energy, dtype=torch.float64):
    u, s = empty_basis(x.shape[0], dtype=dtype)
    start = 0
    for size in chunk_sizes:
        u, s = incremental_svd_update(u, s, torch.from_numpy(x[:, start : start + size]), rank_cap, energy)
        start += size
    assert start == x.shape[1]
    return u, s


def _projector(basis: np.ndarray) -> np.ndarray:
    return basis @ basis.T


def test_without_truncation_matches_batch_svd():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 15))
    u, s = _feed(x, [1, 4, 3, 7], rank_cap=100, energy=1.0)
    ub, sb, _ = np.linalg.svd(x, full_matrices=False)
    assert u.shape == (40, 15) and s.shape == (15,)
    np.testing.assert_allclose(s.numpy(), sb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_projector(u.numpy()), _projector(ub), atol=1e-11)
    # same singular vectors up to sign (the spectrum of random data is simple)
    np.testing.assert_allclose(np.abs(np.sum(u.numpy() * ub, axis=0)), np.ones(15), atol=1e-10)


def test_one_vector_at_a_time_matches_batch_svd():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((25, 10)) * np.linspace(5, 0.1, 10)
    u, s = _feed(x, [1] * 10, rank_cap=10, energy=1.0)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(x, compute_uv=False), rtol=1e-11)


def test_more_vectors_than_dimensions():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 12))
    u, s = _feed(x, [2, 2, 5, 3], rank_cap=50, energy=1.0)
    assert u.shape == (5, 5)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(x, compute_uv=False), rtol=1e-11)
    np.testing.assert_allclose(u.numpy().T @ u.numpy(), np.eye(5), atol=1e-12)


def test_rank_deficient_stream_does_not_grow_rank():
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.standard_normal((30, 4)))[0]
    x = basis @ rng.standard_normal((4, 20))
    u, s = _feed(x, [3, 1, 6, 10], rank_cap=20, energy=1.0)
    assert u.shape == (30, 4)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(x, compute_uv=False)[:4], rtol=1e-10)
    np.testing.assert_allclose(u.numpy().T @ u.numpy(), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(_projector(u.numpy()), _projector(basis), atol=1e-10)


def test_truncation_recovers_a_known_subspace():
    rng = np.random.default_rng(4)
    d, true_rank = 60, 3
    true_basis = np.linalg.qr(rng.standard_normal((d, true_rank)))[0]
    coefficients = rng.standard_normal((true_rank, 120)) * np.array([[5.0], [3.0], [2.0]])
    x = true_basis @ coefficients + 1e-6 * rng.standard_normal((d, 120))
    u, s = _feed(x, [5] * 24, rank_cap=10, energy=0.99)
    assert u.shape[1] == true_rank
    angles = scipy.linalg.subspace_angles(u.numpy(), true_basis)
    assert angles.max() < 1e-5
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(x, compute_uv=False)[:3], rtol=1e-6)


def test_energy_threshold_picks_the_smallest_sufficient_rank():
    # orthogonal vectors with norms 10, 5, 1, 0.1: energies 100, 25, 1, 0.01 of 126.01
    x = np.zeros((6, 4))
    x[[0, 2, 3, 5], [0, 1, 2, 3]] = [10.0, 5.0, 1.0, 0.1]
    for energy, expected in [(0.5, 1), (0.79, 1), (0.8, 2), (0.99, 2), (0.995, 3), (1.0, 4)]:
        u, s = _feed(x, [4], rank_cap=10, energy=energy)
        assert u.shape == (6, expected), energy
        np.testing.assert_allclose(s.numpy(), [10.0, 5.0, 1.0, 0.1][:expected])
    u, s = _feed(x, [4], rank_cap=2, energy=1.0)
    assert u.shape == (6, 2)


def test_orthonormality_is_preserved_over_200_updates():
    rng = np.random.default_rng(5)
    d = 64
    mixing = rng.standard_normal((d, d)) * np.exp(-np.arange(d) / 4.0)
    u, s = empty_basis(d, dtype=torch.float32)
    for step in range(200):
        vectors = (mixing @ rng.standard_normal((d, 2))).astype(np.float32)
        u, s = incremental_svd_update(u, s, torch.from_numpy(vectors), rank_cap=8, energy=0.99)
        assert u.dtype == torch.float32 and s.dtype == torch.float32
        assert u.shape[1] <= 8
        if step % 50 == 49:
            gram = u.double().T @ u.double()
            assert torch.allclose(gram, torch.eye(u.shape[1], dtype=torch.float64), atol=1e-6)
    assert bool((s[:-1] >= s[1:]).all())


def test_deterministic():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((32, 30))
    u1, s1 = _feed(x, [3] * 10, rank_cap=6, energy=0.95)
    u2, s2 = _feed(x.copy(), [3] * 10, rank_cap=6, energy=0.95)
    assert torch.equal(u1, u2) and torch.equal(s1, s2)


def test_zero_vectors_are_skipped():
    rng = np.random.default_rng(7)
    d = 10
    u, s = empty_basis(d, dtype=torch.float64)
    u, s = incremental_svd_update(u, s, torch.zeros(d, 3, dtype=torch.float64), rank_cap=5, energy=1.0)
    assert u.shape == (d, 0) and s.shape == (0,)
    x = torch.from_numpy(rng.standard_normal((d, 2)))
    with_zeros = torch.cat([x[:, :1], torch.zeros(d, 2, dtype=torch.float64), x[:, 1:]], dim=1)
    u1, s1 = incremental_svd_update(u, s, with_zeros, rank_cap=5, energy=1.0)
    u2, s2 = incremental_svd_update(u, s, x, rank_cap=5, energy=1.0)
    assert torch.allclose(u1, u2) and torch.allclose(s1, s2)
    u3, s3 = incremental_svd_update(u1, s1, torch.zeros(d, dtype=torch.float64), rank_cap=5, energy=1.0)
    assert torch.equal(u3, u1) and torch.equal(s3, s1)


def test_dtype_follows_the_state():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    u, s = incremental_svd_update(*empty_basis(8, dtype=torch.float64), x, rank_cap=3, energy=1.0)
    assert u.dtype == torch.float64 and s.dtype == torch.float64
    u, s = incremental_svd_update(*empty_basis(8), x.double(), rank_cap=3, energy=1.0)
    assert u.dtype == torch.float32


def test_invalid_arguments():
    u, s = empty_basis(4)
    with pytest.raises(ValueError):
        incremental_svd_update(u, s, torch.ones(5, 1), rank_cap=2)
    with pytest.raises(ValueError):
        incremental_svd_update(u, s, torch.ones(4, 1), rank_cap=0)
    with pytest.raises(ValueError):
        incremental_svd_update(u, s, torch.ones(4, 1), rank_cap=2, energy=0.0)
    with pytest.raises(ValueError):
        incremental_svd_update(u, s, torch.full((4, 1), float("nan")), rank_cap=2)


def test_incremental_basis_wrapper_flattens_weight_shaped_updates():
    rng = np.random.default_rng(8)
    updates = [rng.standard_normal((3, 4)) for _ in range(5)]
    tracker = IncrementalBasis(dim=12, rank_cap=10, energy=1.0, dtype=torch.float64)
    for delta in updates:
        tracker.add(torch.from_numpy(delta))
    stacked = np.stack([delta.reshape(-1) for delta in updates], axis=1)
    assert tracker.rank == 5
    np.testing.assert_allclose(tracker.singular_values.numpy(), np.linalg.svd(stacked, compute_uv=False))
