"""Incremental low-rank basis of a stream of vectors (the contribution ledger's U_k^l, S_k^l).

Brand's incremental SVD: with the current factorisation X_old ~ U diag(S) V^T and new
columns X (d x m),

    [U diag(S), X] = [U, Q] [[diag(S), U^T X], [0, R]] * blockdiag(V^T, I),

where Q R is the QR factorisation of the residual (I - U U^T) X. The small
(r + k) x (r + m) core is factorised by SVD, core = U_c S_c V_c^T, and the new basis is
[U, Q] U_c with singular values S_c (V is never stored). The result is then truncated to
the smallest rank whose cumulative squared singular values reach ``energy`` of the total,
never above ``rank_cap``.

Without truncation the singular values are exactly those of the matrix of all vectors seen
so far (stacked as columns), and U spans its column space. Memory is O(d (r + m)).
"""

from __future__ import annotations

import numpy as np
import torch

from ease_engine.linalg._common import (
    WORK_DTYPE,
    as_tensor,
    canonical_signs,
    energy_rank,
    numerical_rank_mask,
)

Array = torch.Tensor | np.ndarray

# Residual directions and core singular values below this fraction of the largest singular
# value are treated as numerical zeros (they carry no information at float32 storage, and a
# Householder QR of a rank-deficient residual would otherwise leak directions inside span(U)).
DEFAULT_RELATIVE_TOLERANCE = 1e-10


def empty_basis(dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
    """The starting state of the ledger: U of shape (dim, 0) and S of shape (0,)."""
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    return torch.zeros((dim, 0), dtype=dtype, device=device), torch.zeros(0, dtype=dtype, device=device)


def update(
    basis: Array,
    singular_values: Array,
    vectors: Array,
    rank_cap: int,
    energy: float = 0.99,
    relative_tolerance: float = DEFAULT_RELATIVE_TOLERANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the columns of ``vectors`` (d x m, or a single d-vector) to the basis (U, S).

    ``basis`` is U (d x r, orthonormal columns; d x 0 on the first call) and
    ``singular_values`` is S (r,), descending. All-zero columns are skipped. Returns the new
    (U', S') with rank r' <= min(rank_cap, d, r + m): the smallest rank whose sum of S'^2
    reaches ``energy`` of the total (``energy`` = 1 keeps every numerically non-zero value).
    Computation runs in float64; the result comes back in U's dtype (float32 if U is not a
    floating tensor). Columns of U' have a canonical sign (largest entry positive), so the
    output is deterministic. Singular values at or below ``relative_tolerance * S'_max``
    are dropped as numerical zeros.
    """
    u_in = as_tensor(basis, "basis")
    s_in = as_tensor(singular_values, "singular_values")
    x_in = as_tensor(vectors, "vectors")
    if u_in.ndim != 2:
        raise ValueError(f"basis must be 2-D (d x r), got shape {tuple(u_in.shape)}")
    if x_in.ndim == 1:
        x_in = x_in.reshape(-1, 1)
    if x_in.ndim != 2 or x_in.shape[0] != u_in.shape[0]:
        raise ValueError(f"vectors must be ({u_in.shape[0]} x m), got shape {tuple(x_in.shape)}")
    if s_in.ndim != 1 or s_in.numel() != u_in.shape[1]:
        raise ValueError(f"singular_values must have {u_in.shape[1]} entries, got shape {tuple(s_in.shape)}")
    if rank_cap < 1:
        raise ValueError(f"rank_cap must be >= 1, got {rank_cap}")
    out_dtype = u_in.dtype if u_in.is_floating_point() else torch.float32

    u = u_in.to(WORK_DTYPE)
    s = s_in.to(WORK_DTYPE)
    x = x_in.to(device=u.device, dtype=WORK_DTYPE)
    x = x[:, torch.linalg.vector_norm(x, dim=0) > 0]
    d, r = u.shape
    m = x.shape[1]
    if m == 0:
        return u_in.clone().to(out_dtype), s_in.clone().to(out_dtype)

    # Project on the current basis; a second Gram-Schmidt pass makes the residual orthogonal
    # to U to working precision even when X lies almost inside span(U).
    # (x^T u)^T rather than u^T x: a transposed tall matrix times a vector is ~50x slower on CPU
    projection = (x.T @ u).T  # (r, m)
    residual = x - u @ projection
    correction = (residual.T @ u).T
    projection = projection + correction
    residual = residual - u @ correction

    # Rank-revealing QR of the residual: QR, then an SVD of the small R factor so that only
    # residual directions with real weight enter the new basis.
    scale = max(float(s.max()) if r else 0.0, float(torch.linalg.matrix_norm(x)))
    q, r_factor = torch.linalg.qr(residual, mode="reduced")  # q: d x min(d, m)
    r_u, r_s, r_vt = torch.linalg.svd(r_factor, full_matrices=False)
    keep = r_s > relative_tolerance * scale
    q = q @ r_u[:, keep]  # d x k, orthonormal, inside the residual's range
    r_factor = r_s[keep, None] * r_vt[keep]  # k x m
    k = q.shape[1]

    core = torch.zeros((r + k, r + m), dtype=WORK_DTYPE, device=u.device)
    core[:r, :r] = torch.diag(s)
    core[:r, r:] = projection
    core[r:, r:] = r_factor
    core_u, core_s, _ = torch.linalg.svd(core, full_matrices=False)

    nonzero = numerical_rank_mask(core_s, (r + k, r + m), relative_tolerance)
    core_s = core_s[nonzero]
    core_u = core_u[:, nonzero]
    rank = energy_rank(core_s, energy, rank_cap)
    core_u = core_u[:, :rank]
    new_u = u @ core_u[:r] + q @ core_u[r:]  # = [U, Q] core_u without building [U, Q]
    new_u = canonical_signs(new_u)
    return new_u.to(out_dtype), core_s[:rank].to(out_dtype)


class IncrementalBasis:
    """Stateful wrapper around :func:`update`: one running (U, S) per client and block.

    >>> tracker = IncrementalBasis(dim=4, rank_cap=2, energy=1.0)
    >>> tracker.add(torch.eye(4)[:, :1]); tracker.rank
    1
    """

    def __init__(
        self,
        dim: int,
        rank_cap: int,
        energy: float = 0.99,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if rank_cap < 1:
            raise ValueError(f"rank_cap must be >= 1, got {rank_cap}")
        energy_rank(torch.zeros(0), energy)  # validates energy
        self.rank_cap = rank_cap
        self.energy = energy
        self.basis, self.singular_values = empty_basis(dim, dtype=dtype, device=device)

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def add(self, vectors: Array) -> None:
        """Fold in ``vectors``: a (d x m) matrix of columns, or one tensor of any shape with d elements."""
        x = as_tensor(vectors, "vectors")
        if x.numel() == self.basis.shape[0]:
            x = x.reshape(-1, 1)
        self.basis, self.singular_values = update(self.basis, self.singular_values, x, self.rank_cap, self.energy)


__all__ = ["DEFAULT_RELATIVE_TOLERANCE", "IncrementalBasis", "empty_basis", "update"]
