"""Linear algebra of EASE: the ledger's incremental SVD, subspace splitting, excision and the Forget Lock."""

from ease_engine.linalg.forget_lock import LOCK_FORMAT, ForgetLock, LockedBlock
from ease_engine.linalg.incremental_svd import IncrementalBasis, empty_basis
from ease_engine.linalg.incremental_svd import update as incremental_svd_update
from ease_engine.linalg.subspace import (
    CosineSineSplit,
    cosine_sine_split,
    excise,
    exclusive_basis,
    orthonormal_basis,
    principal_angles,
)

__all__ = [
    "LOCK_FORMAT",
    "CosineSineSplit",
    "ForgetLock",
    "IncrementalBasis",
    "LockedBlock",
    "cosine_sine_split",
    "empty_basis",
    "excise",
    "exclusive_basis",
    "incremental_svd_update",
    "orthonormal_basis",
    "principal_angles",
]
