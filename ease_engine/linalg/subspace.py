"""Subspace geometry for EASE closure 1 (principal-angle entanglement).

Given the retained support U_R (d x r_R) and the forget client's basis U_f (d x r_f), both
with orthonormal columns, the cosine-sine decomposition

    U_R^T U_f = Y cos(Theta) Z^T

splits every forget direction u_i = U_f z_i into a part shared with the retained clients,
U_R y_i cos(theta_i), and an exclusive part e_i = u_i - U_R y_i cos(theta_i) with
|e_i| = sin(theta_i). The exclusive basis E spans the normalised e_i whose sine reaches
``sin_min``; excision removes E E^T C_f from a block's parameters.

All computations run in float64; results come back in the dtype of the (first) input.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ease_engine.linalg._common import (
    WORK_DTYPE,
    as_tensor,
    canonical_signs,
    energy_rank,
    numerical_rank_mask,
    result_dtype,
)

Array = torch.Tensor | np.ndarray


def orthonormal_basis(
    matrix: Array,
    energy: float = 1.0,
    rank_cap: int | None = None,
    tol: float | None = None,
) -> torch.Tensor:
    """Orthonormal basis (d x k) of the column span of ``matrix`` (d x n), truncated by energy.

    With matrix = U S V^T: drop singular values <= tol * s_max (numerical rank; default
    ``max(d, n) * eps``), then keep the k leading left singular vectors, k the smallest count
    with sum_{i<k} s_i^2 >= energy * sum s_i^2, at most ``rank_cap``. Used for the retained
    support U_R = orth[U_k S_k for k != f]. A zero or empty matrix gives a d x 0 basis.
    """
    m = as_tensor(matrix, "matrix")
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D (d x n), got shape {tuple(m.shape)}")
    out_dtype = result_dtype(m)
    d, n = m.shape
    if n == 0 or d == 0:
        return m.new_zeros((d, 0), dtype=out_dtype)
    work = m.to(WORK_DTYPE)
    u, s, _ = torch.linalg.svd(work, full_matrices=False)
    keep = numerical_rank_mask(s, (d, n), tol)
    s = s[keep]
    u = u[:, keep]
    k = energy_rank(s, energy, rank_cap)
    return canonical_signs(u[:, :k]).to(out_dtype)


def principal_angles(a: Array, b: Array) -> torch.Tensor:
    """Principal angles (radians, ascending, min(p, q) of them) between span(a) and span(b).

    ``a`` (d x p) and ``b`` (d x q) must have orthonormal columns. cos(theta_i) are the
    singular values of a^T b; small angles are taken from the sines instead (the singular
    values of the residual of the smaller basis against the larger one), as in
    scipy.linalg.subspace_angles, because arccos loses half the digits near 0.
    """
    a64 = as_tensor(a, "a").to(WORK_DTYPE)
    b64 = as_tensor(b, "b").to(WORK_DTYPE)
    _check_same_ambient(a64, b64)
    out_dtype = result_dtype(as_tensor(a, "a"))
    k = min(a64.shape[1], b64.shape[1])
    if k == 0:
        return torch.zeros(0, dtype=out_dtype)
    cross = a64.T @ b64
    cosines = torch.linalg.svdvals(cross).clamp(0.0, 1.0)  # descending -> angles ascending
    residual = b64 - a64 @ cross if b64.shape[1] <= a64.shape[1] else a64 - b64 @ cross.T
    sines = torch.linalg.svdvals(residual).clamp(0.0, 1.0).flip(0)  # ascending -> angles ascending
    small = cosines**2 >= 0.5
    angles = torch.where(small, torch.arcsin(sines), torch.arccos(cosines))
    return angles.to(out_dtype)


class CosineSineSplit(NamedTuple):
    """Result of :func:`cosine_sine_split`; column i of each matrix belongs to ``angles[i]``."""

    angles: torch.Tensor  # (r_f,) ascending, radians in [0, pi/2]
    shared_parts: torch.Tensor  # (d, r_f): U_R y_i cos(theta_i)
    exclusive_parts: torch.Tensor  # (d, r_f): e_i = u_i - shared part, |e_i| = sin(theta_i)
    directions: torch.Tensor  # (d, r_f): u_i = U_f z_i, orthonormal, spanning span(U_f)


def cosine_sine_split(retained_basis: Array, forget_basis: Array) -> CosineSineSplit:
    """Split each forget direction into its part shared with U_R and its exclusive part.

    Full SVD U_R^T U_f = Y diag(cos theta) Z^T (Z is r_f x r_f, so all of span(U_f) is
    covered even when r_f > r_R: the extra directions get cos = 0, theta = pi/2).
    u_i = U_f z_i, shared_i = U_R U_R^T u_i = U_R y_i cos(theta_i), e_i = u_i - shared_i.
    Angles are atan2(|e_i|, cos theta_i), accurate at both ends of [0, pi/2].
    ``retained_basis`` (d x r_R) and ``forget_basis`` (d x r_f) need orthonormal columns.
    """
    split, out_dtype = _cosine_sine_split64(retained_basis, forget_basis)
    return CosineSineSplit(*(t.to(out_dtype) for t in split))


def _cosine_sine_split64(retained_basis: Array, forget_basis: Array) -> tuple[CosineSineSplit, torch.dtype]:
    """:func:`cosine_sine_split` in float64, plus the dtype the caller should return."""
    u_r_in = as_tensor(retained_basis, "retained_basis")
    u_f_in = as_tensor(forget_basis, "forget_basis")
    u_r = u_r_in.to(WORK_DTYPE)
    u_f = u_f_in.to(WORK_DTYPE)
    _check_same_ambient(u_r, u_f)
    out_dtype = result_dtype(u_f_in, u_r_in)
    d, r_f = u_f.shape
    r_r = u_r.shape[1]
    if r_f == 0:
        empty = u_f.new_zeros((d, 0))
        return CosineSineSplit(u_f.new_zeros(0), empty, empty.clone(), empty.clone()), out_dtype

    cosines = u_f.new_zeros(r_f)
    if r_r == 0:
        z = torch.eye(r_f, dtype=WORK_DTYPE, device=u_f.device)
    else:
        cross = u_r.T @ u_f  # (r_R, r_f)
        _, sigma, z_t = torch.linalg.svd(cross, full_matrices=True)
        z = z_t.T  # (r_f, r_f): columns z_i, ordered by descending cosine
        cosines[: sigma.numel()] = sigma.clamp(0.0, 1.0)
    directions = u_f @ z
    shared = u_r @ (u_r.T @ directions) if r_r else torch.zeros_like(directions)
    exclusive = directions - shared
    sines = torch.linalg.vector_norm(exclusive, dim=0).clamp(0.0, 1.0)
    angles = torch.atan2(sines, cosines)
    # Sorting by the recomputed angles keeps ascending order even where cos/sin round differently.
    order = torch.argsort(angles, stable=True)
    split = CosineSineSplit(angles[order], shared[:, order], exclusive[:, order], directions[:, order])
    return split, out_dtype


def exclusive_basis(retained_basis: Array, forget_basis: Array, sin_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exclusive basis E = orth{ e_i / sin(theta_i) : sin(theta_i) >= sin_min } and all angles.

    Returns (E of shape d x q, angles of shape r_f ascending). q may be 0. The normalised
    e_i are orthonormal in exact arithmetic (e_i^T e_j = delta_ij sin^2 theta_i); a QR pass
    removes rounding, with signs fixed so column j of E points along its e_i.
    """
    if not 0.0 < sin_min <= 1.0:
        raise ValueError(f"sin_min must be in (0, 1], got {sin_min}")
    split, out_dtype = _cosine_sine_split64(retained_basis, forget_basis)
    exclusive = split.exclusive_parts
    sines = torch.linalg.vector_norm(exclusive, dim=0)
    # a direction within rounding (1e-12 relative) of the threshold counts as reaching it
    selected = sines >= sin_min * (1.0 - 1e-12)
    d = exclusive.shape[0]
    if not bool(selected.any()):
        return exclusive.new_zeros((d, 0), dtype=out_dtype), split.angles.to(out_dtype)
    normalised = exclusive[:, selected] / sines[selected]
    q, r = torch.linalg.qr(normalised, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return (q * signs).to(out_dtype), split.angles.to(out_dtype)


def excise(theta_block: Array, contribution: Array, exclusive: Array) -> torch.Tensor:
    """theta - E E^T C: remove the part of the forget client's contribution C inside span(E).

    ``theta_block`` and ``contribution`` may have any shape with d elements (flattened
    internally, returned in the shape and dtype of ``theta_block``); ``exclusive`` is d x q
    with orthonormal columns (q = 0 returns an unchanged copy).
    """
    theta = as_tensor(theta_block, "theta_block")
    contrib = as_tensor(contribution, "contribution")
    basis = as_tensor(exclusive, "exclusive")
    if theta.numel() != contrib.numel():
        raise ValueError(f"theta_block has {theta.numel()} elements, contribution {contrib.numel()}")
    if basis.ndim != 2 or basis.shape[0] != theta.numel():
        raise ValueError(f"exclusive must be ({theta.numel()} x q), got shape {tuple(basis.shape)}")
    if basis.shape[1] == 0:
        return theta.clone()
    e = basis.to(WORK_DTYPE)
    c = contrib.reshape(-1).to(WORK_DTYPE)
    projection = e @ (e.T @ c)
    out = theta.reshape(-1).to(WORK_DTYPE) - projection
    return out.to(result_dtype(theta)).reshape(theta.shape)


def _check_same_ambient(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"bases must be 2-D, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"bases live in different spaces: {a.shape[0]} vs {b.shape[0]} rows")


__all__ = [
    "CosineSineSplit",
    "cosine_sine_split",
    "excise",
    "exclusive_basis",
    "orthonormal_basis",
    "principal_angles",
]
