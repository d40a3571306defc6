"""Subspaces read off the contribution ledger, shared by the methods that project on them."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ease_engine.federation.ledger import Ledger
from ease_engine.linalg.subspace import orthonormal_basis


def retained_support(ledger: Ledger, block: str, clients: Iterable[int], energy: float) -> torch.Tensor:
    """U_R = orth[U_k S_k : k in clients] for one block (d x r; d x 0 if no client moved it)."""
    parts = []
    for k in clients:
        record = ledger.records.get(int(k))
        if record is not None and record.basis[block].shape[1]:
            parts.append(record.basis[block] * record.singular_values[block])
    if not parts:
        dim = next(iter(ledger.records.values())).basis[block].shape[0]
        return torch.zeros(dim, 0)
    return orthonormal_basis(torch.cat(parts, dim=1), energy=energy)
