"""Principal angles, the cosine-sine split, the exclusive basis and excision (EASE closure 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ease_engine.linalg import (
    cosine_sine_split,
    excise,
    exclusive_basis,
    orthonormal_basis,
    principal_angles,
)


def _random_orthonormal(rng: np.random.Generator, d: int, r: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((d, r)))[0]


def _projector(basis) -> np.ndarray:
    b = np.asarray(basis)
    return b @ b.T


def _complement(basis: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the orthogonal complement of span(basis)."""
    d, r = basis.shape
    full = np.linalg.svd(basis, full_matrices=True)[0]
    return full[:, r:]


def _unit(d: int, i: int) -> np.ndarray:
    v = np.zeros(d)
    v[i] = 1.0
    return v


# -- orthonormal_basis ------------------------------------------------------------------------


def test_orthonormal_basis_spans_the_columns_and_truncates_by_energy():
    rng = np.random.default_rng(0)
    directions = _random_orthonormal(rng, 20, 4)
    weights = np.array([10.0, 5.0, 1.0, 0.1])
    matrix = directions * weights @ _random_orthonormal(rng, 4, 4).T  # singular values = weights
    full = orthonormal_basis(torch.from_numpy(matrix))
    assert full.shape == (20, 4) and full.dtype == torch.float64
    np.testing.assert_allclose(_projector(full), _projector(directions), atol=1e-12)
    top2 = orthonormal_basis(matrix, energy=0.99)
    np.testing.assert_allclose(_projector(top2), _projector(directions[:, :2]), atol=1e-12)
    assert orthonormal_basis(matrix, energy=1.0, rank_cap=3).shape == (20, 3)


def test_orthonormal_basis_of_rank_deficient_zero_and_empty_matrices():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((15, 3))
    matrix = np.concatenate([a, a @ rng.standard_normal((3, 4))], axis=1)  # rank 3
    assert orthonormal_basis(matrix).shape == (15, 3)
    assert orthonormal_basis(np.zeros((15, 4))).shape == (15, 0)
    assert orthonormal_basis(torch.zeros(15, 0)).shape == (15, 0)
    assert orthonormal_basis(torch.zeros(15, 0)).dtype == torch.float32


# -- principal_angles -------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "q"), [(3, 3), (2, 5), (6, 4), (1, 1), (10, 10)])
def test_principal_angles_match_scipy(p, q):
    rng = np.random.default_rng(10 * p + q)
    a = _random_orthonormal(rng, 30, p)
    b = _random_orthonormal(rng, 30, q)
    ours = principal_angles(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    reference = np.sort(scipy.linalg.subspace_angles(a, b))  # scipy: descending
    assert ours.shape == (min(p, q),)
    assert np.all(np.diff(ours) >= 0)
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_small_principal_angles_are_accurate():
    rng = np.random.default_rng(2)
    a = _random_orthonormal(rng, 30, 4)
    tiny = 1e-9
    b = np.linalg.qr(a + tiny * _complement(a)[:, :4])[0]
    ours = principal_angles(a, b).numpy()
    np.testing.assert_allclose(ours, np.full(4, tiny), rtol=1e-5)  # arccos would give ~1e-8 noise
    np.testing.assert_allclose(ours, np.sort(scipy.linalg.subspace_angles(a, b)), rtol=1e-5)


def test_principal_angles_of_empty_subspace():
    assert principal_angles(torch.zeros(5, 0), torch.eye(5)[:, :2]).shape == (0,)


# -- cosine_sine_split ------------------------------------------------------------------------


@pytest.mark.parametrize(("r_retained", "r_forget"), [(3, 2), (2, 3), (3, 3)])
def test_cosine_sine_values_match_scipy_cossin(r_retained, r_forget):
    d = 8
    rng = np.random.default_rng(r_retained * 7 + r_forget)
    u_r = _random_orthonormal(rng, d, r_retained)
    u_f = _random_orthonormal(rng, d, r_forget)
    # the partitioned orthogonal matrix [U_R, U_R_perp]^T [U_f, U_f_perp]
    w = np.concatenate([u_r, _complement(u_r)], axis=1).T @ np.concatenate([u_f, _complement(u_f)], axis=1)
    (_, _), theta, (_, _) = scipy.linalg.cossin(w, p=r_retained, q=r_forget, separate=True)
    split = cosine_sine_split(torch.from_numpy(u_r), torch.from_numpy(u_f))
    assert split.angles.shape == (r_forget,)
    # generic subspaces: min(p, q) proper CS angles; any further forget direction is orthogonal to U_R
    expected = np.concatenate([np.sort(theta), np.full(r_forget - theta.size, math.pi / 2)])
    np.testing.assert_allclose(split.angles.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(np.cos(split.angles.numpy()[: theta.size]), np.cos(np.sort(theta)), atol=1e-12)
    np.testing.assert_allclose(np.sin(split.angles.numpy()[: theta.size]), np.sin(np.sort(theta)), atol=1e-12)


def test_cosine_sine_split_structure():
    rng = np.random.default_rng(3)
    d = 20
    u_r = _random_orthonormal(rng, d, 4)
    u_f = _random_orthonormal(rng, d, 6)  # more forget directions than retained ones
    angles, shared, exclusive, directions = (t.numpy() for t in cosine_sine_split(u_r, u_f))
    assert directions.shape == shared.shape == exclusive.shape == (d, 6)
    # the directions are an orthonormal basis of span(U_f)
    np.testing.assert_allclose(directions.T @ directions, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(_projector(directions), _projector(u_f), atol=1e-12)
    np.testing.assert_allclose(shared + exclusive, directions, atol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(shared, axis=0), np.cos(angles), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(exclusive, axis=0), np.sin(angles), atol=1e-12)
    np.testing.assert_allclose(u_r.T @ exclusive, 0.0, atol=1e-12)  # sine parts leave span(U_R)
    np.testing.assert_allclose(_projector(u_r) @ shared, shared, atol=1e-12)  # cosine parts inside it
    np.testing.assert_allclose(angles[4:], math.pi / 2, atol=1e-12)
    # shared_i = U_R y_i cos(theta_i) with Y from the SVD of U_R^T U_f (up to the sign of each pair)
    y, sigma, _ = np.linalg.svd(u_r.T @ u_f)
    for i in range(4):
        reference = u_r @ y[:, i] * sigma[i]
        assert min(np.abs(shared[:, i] - reference).max(), np.abs(shared[:, i] + reference).max()) < 1e-12


def test_cosine_sine_split_empty_cases():
    d = 6
    u_f = np.eye(d)[:, :2]
    angles, shared, exclusive, directions = cosine_sine_split(np.zeros((d, 0)), u_f)
    np.testing.assert_allclose(angles.numpy(), [math.pi / 2] * 2)
    np.testing.assert_allclose(exclusive.numpy(), directions.numpy())
    assert not shared.numpy().any()
    split = cosine_sine_split(u_f, np.zeros((d, 0)))
    assert split.angles.shape == (0,) and split.exclusive_parts.shape == (d, 0)


# -- exclusive_basis --------------------------------------------------------------------------


def _constructed_case(d: int = 8, rotation: np.ndarray | None = None):
    """U_R = [e1, e2, e3]; U_f = [e1 (shared), e5 (exclusive), cos30 e2 + sin30 e6 (30 degrees)]."""
    e = [_unit(d, i) for i in range(d)]
    thirty = math.radians(30)
    u_r = np.stack([e[0], e[1], e[2]], axis=1)
    u_f = np.stack([e[0], e[4], math.cos(thirty) * e[1] + math.sin(thirty) * e[5]], axis=1)
    if rotation is not None:
        u_r, u_f, e = rotation @ u_r, rotation @ u_f, [rotation @ v for v in e]
    return u_r, u_f, e


@pytest.mark.parametrize("rotated", [False, True])
def test_exclusive_basis_on_constructed_subspaces(rotated):
    rotation = _random_orthonormal(np.random.default_rng(4), 8, 8) if rotated else None
    u_r, u_f, e = _constructed_case(rotation=rotation)
    basis, angles = exclusive_basis(torch.from_numpy(u_r), torch.from_numpy(u_f), sin_min=0.4)
    np.testing.assert_allclose(angles.numpy(), [0.0, math.radians(30), math.pi / 2], atol=1e-12)
    assert basis.shape == (8, 2)
    np.testing.assert_allclose(_projector(basis), _projector(np.stack([e[4], e[5]], axis=1)), atol=1e-12)
    basis, _ = exclusive_basis(u_r, u_f, sin_min=0.6)
    assert basis.shape == (8, 1)
    np.testing.assert_allclose(_projector(basis), np.outer(e[4], e[4]), atol=1e-12)
    # exactly at the threshold (sin 30 = 0.5) the direction is kept
    assert exclusive_basis(u_r, u_f, sin_min=0.5)[0].shape == (8, 2)


def test_exclusive_basis_is_orthonormal_and_orthogonal_to_the_retained_support():
    rng = np.random.default_rng(5)
    u_r = _random_orthonormal(rng, 50, 10)
    u_f = _random_orthonormal(rng, 50, 12)
    basis, angles = exclusive_basis(u_r, u_f, sin_min=0.1)
    b = basis.numpy()
    assert b.shape[1] == int(np.sum(np.sin(angles.numpy()) >= 0.1))
    np.testing.assert_allclose(b.T @ b, np.eye(b.shape[1]), atol=1e-12)
    np.testing.assert_allclose(u_r.T @ b, 0.0, atol=1e-12)
    assert basis.dtype == torch.float64
    assert exclusive_basis(torch.from_numpy(u_r).float(), torch.from_numpy(u_f).float(), 0.1)[0].dtype == (
        torch.float32
    )


def test_exclusive_basis_empty_cases():
    d = 7
    u_r = np.eye(d)[:, :4]
    basis, angles = exclusive_basis(u_r, np.eye(d)[:, 1:3], sin_min=0.1)  # U_f inside U_R
    assert basis.shape == (d, 0)
    np.testing.assert_allclose(angles.numpy(), [0.0, 0.0])
    basis, angles = exclusive_basis(u_r, np.zeros((d, 0)), sin_min=0.1)
    assert basis.shape == (d, 0) and angles.shape == (0,)
    basis, _ = exclusive_basis(np.zeros((d, 0)), np.eye(d)[:, 5:], sin_min=0.1)  # nothing retained
    np.testing.assert_allclose(_projector(basis), _projector(np.eye(d)[:, 5:]), atol=1e-14)
    with pytest.raises(ValueError):
        exclusive_basis(u_r, np.eye(d)[:, 5:], sin_min=0.0)


# -- excise -----------------------------------------------------------------------------------


def test_excision_removes_exactly_the_exclusive_part():
    rotation = _random_orthonormal(np.random.default_rng(6), 8, 8)
    u_r, u_f, e = _constructed_case(rotation=rotation)
    basis, _ = exclusive_basis(u_r, u_f, sin_min=0.4)
    shared_part = 2.0 * e[0] - 1.0 * e[1] + 0.5 * e[2]  # also taught by the retained clients
    exclusive_part = 3.0 * e[4] - 1.5 * e[5]  # only the forget client taught this
    unrelated = 0.7 * e[7]  # outside both subspaces: excision leaves it alone
    contribution = shared_part + exclusive_part + unrelated
    theta_base = np.random.default_rng(7).standard_normal(8)
    theta = theta_base + contribution
    excised = excise(torch.from_numpy(theta), torch.from_numpy(contribution), basis).numpy()
    np.testing.assert_allclose(excised, theta_base + shared_part + unrelated, atol=1e-12)
    np.testing.assert_allclose(theta - excised, exclusive_part, atol=1e-12)


def test_excision_keeps_shape_and_dtype_and_handles_empty_basis():
    rng = np.random.default_rng(8)
    theta = torch.from_numpy(rng.standard_normal((3, 4))).float()
    contribution = torch.from_numpy(rng.standard_normal(12))
    basis = torch.from_numpy(_random_orthonormal(rng, 12, 2))
    out = excise(theta, contribution, basis)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    expected = theta.double().reshape(-1) - basis @ (basis.T @ contribution)
    np.testing.assert_allclose(out.reshape(-1).numpy(), expected.numpy(), atol=1e-6)
    unchanged = excise(theta, contribution, torch.zeros(12, 0))
    assert torch.equal(unchanged, theta) and unchanged.data_ptr() != theta.data_ptr()
    with pytest.raises(ValueError):
        excise(theta, contribution[:5], basis)
