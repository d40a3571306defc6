"""Small helpers shared by the linear-algebra modules (not part of the public API)."""

from __future__ import annotations

import numpy as np
import torch

WORK_DTYPE = torch.float64


def as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Return ``x`` as a torch tensor (no copy for tensors); reject non-floating and non-finite data."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real floating tensor, got dtype {t.dtype}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def result_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype results are returned in: the first floating dtype among ``tensors``, else float32."""
    for t in tensors:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def energy_rank(singular_values: torch.Tensor, energy: float, rank_cap: int | None = None) -> int:
    """Smallest k with sum_{i<k} s_i^2 >= energy * sum_i s_i^2, capped at ``rank_cap``.

    ``singular_values`` must be sorted descending and already free of numerically-zero
    values. ``energy >= 1`` keeps all of them.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if rank_cap is not None and rank_cap < 0:
        raise ValueError(f"rank_cap must be >= 0, got {rank_cap}")
    n = int(singular_values.numel())
    if n == 0:
        return 0
    if energy >= 1.0:
        k = n
    else:
        squared = singular_values.to(WORK_DTYPE) ** 2
        cumulative = torch.cumsum(squared, 0)
        # first index whose cumulative energy reaches the threshold; +1 turns it into a count
        k = int(torch.searchsorted(cumulative, energy * cumulative[-1]).item()) + 1
        k = min(k, n)
    if rank_cap is not None:
        k = min(k, rank_cap)
    return k


def numerical_rank_mask(singular_values: torch.Tensor, shape: tuple[int, int], tol: float | None) -> torch.Tensor:
    """Boolean mask of singular values above ``tol * s_max`` (numpy's matrix_rank default when None)."""
    if singular_values.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=singular_values.device)
    if tol is None:
        tol = max(shape) * torch.finfo(singular_values.dtype).eps
    s_max = singular_values.max()
    return singular_values > tol * s_max


def canonical_signs(basis: torch.Tensor) -> torch.Tensor:
    """Flip column signs so that the entry of largest magnitude in each column is positive.

    SVD leaves each singular vector's sign free; fixing it makes results reproducible
    across runs and backends without changing the span.
    """
    if basis.numel() == 0:
        return basis
    idx = basis.T.abs().argmax(dim=1)  # row-wise on the transpose: a column reduction is ~10x slower
    signs = torch.sign(basis[idx, torch.arange(basis.shape[1], device=basis.device)])
    signs[signs == 0] = 1
    return basis * signs
