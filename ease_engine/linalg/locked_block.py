"""One parameter block's Forget Lock: basis E, displacement d, anchor c0, optional drift band (its checks and
its single-layer filter; ``ease_engine.linalg.forget_lock`` has the rest)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ease_engine.linalg._common import WORK_DTYPE

ORTHONORMALITY_TOLERANCE = 1e-4  # max |E^T E - I|: a float32 basis is orthonormal to about 1e-6


@dataclass
class LockedBlock:
    """The lock of one parameter block: basis E (d x q), displacement d (q), anchor c0 (q)."""

    basis: torch.Tensor
    displacement: torch.Tensor
    anchor: torch.Tensor
    epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.basis.ndim != 2 or not self.basis.is_floating_point():
            raise ValueError(f"basis must be a 2-D floating tensor (d x q), got {self.basis.dtype} "
                             f"{tuple(self.basis.shape)}")
        q = self.basis.shape[1]
        for name in ("basis", "displacement", "anchor"):
            value = getattr(self, name)
            if name != "basis" and (value.ndim != 1 or value.numel() != q or not value.is_floating_point()):
                raise ValueError(f"{name} must have {q} floating entries (one per basis column), got "
                                 f"{value.dtype} {tuple(value.shape)}")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} has NaN or infinite entries")
        gram = self.basis.to(WORK_DTYPE).T @ self.basis.to(WORK_DTYPE)
        if q and float((gram - torch.eye(q, dtype=WORK_DTYPE)).abs().max()) > ORTHONORMALITY_TOLERANCE:
            raise ValueError("basis columns must be orthonormal (E^T E = I)")
        if self.epsilon is not None:
            try:
                epsilon = float(self.epsilon)
            except (TypeError, ValueError, OverflowError):
                epsilon = float("nan")
            if not np.isfinite(epsilon) or epsilon < 0:
                raise ValueError(f"epsilon must be a finite number >= 0 or None, got {self.epsilon!r}")
            self.epsilon = epsilon

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def project(self, delta: torch.Tensor, theta: torch.Tensor | None, tolerance: float,
                scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1 and 2 of the module docstring on a flat WORK_DTYPE update; returns (update, changed
        coordinates). ``scale``: the norm the rounding tolerance is relative to."""
        e = self.basis.to(device=delta.device, dtype=WORK_DTYPE)
        coords = e.T @ delta  # a = E^T Delta
        negligible = coords.abs() <= tolerance * scale
        toward_excised = (coords * self.displacement.to(delta.device, WORK_DTYPE) < 0) & ~negligible
        delta = delta - e @ torch.where(toward_excised, coords, torch.zeros_like(coords))
        changed = toward_excised.clone()
        if theta is not None and self.epsilon is not None:
            anchor = self.anchor.to(device=delta.device, dtype=WORK_DTYPE)
            position = e.T @ (theta + delta)
            correction = torch.clamp(position, anchor - self.epsilon, anchor + self.epsilon) - position
            outside = correction != 0
            delta = delta + e @ torch.where(outside, correction, torch.zeros_like(correction))
            changed |= outside
        return delta, changed
