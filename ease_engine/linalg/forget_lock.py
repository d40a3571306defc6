"""The direction-selective Forget Lock (EASE closure 3: federated update drift).

An erased version carries, per parameter block, the exclusive basis E (d x q, orthonormal
columns), the excision displacement d = E^T (theta_after - theta_before) and the anchor
c0 = E^T theta_erased. In every later round, before aggregation, each client update Delta
is filtered:

1. Direction filter. a = E^T Delta. A coordinate with a_i * d_i < 0 points back toward the
   excised knowledge (against the displacement), and is removed: Delta -= E[:, i] a_i.
   Coordinates with a_i * d_i >= 0 (moving further away, or d_i = 0, or a_i = 0) are kept,
   and everything orthogonal to span(E) passes untouched. Coordinates with
   |a_i| <= tolerance * |Delta| count as a_i = 0: they are rounding noise
   of an update orthogonal to E, and removing them would only inflate the count.
2. Drift bound (only in :meth:`ForgetLock.apply_with_state`, only if the block has an
   epsilon). With c = E^T (theta_current + Delta) after step 1, each coordinate is clipped
   to the band [c0_i - epsilon, c0_i + epsilon]: Delta += E (clip(c) - c). Afterwards
   |E^T (theta_current + Delta) - c0| <= epsilon holds coordinate-wise, including when
   theta_current had already left the band (the update then brings it back to the nearest
   band edge). The band is convex, so if every client update is clipped against the same
   theta_current, their FedAvg combination (weights summing to 1) stays inside it too.

The intervention count of a call is the number of coordinates i whose E-coordinate of the
update was changed by step 1 or step 2 (each coordinate counted once). The lock keeps
running totals per block in :attr:`ForgetLock.interventions` for the audit report.

The lock is stored as one safetensors file plus a small JSON manifest (no pickle), both
written atomically, so an external aggregator can load and apply it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ease_engine.atomic import write_bytes
from ease_engine.linalg._common import WORK_DTYPE, as_tensor

Array = torch.Tensor | np.ndarray

LOCK_FORMAT = "lethe.forget_lock/1"
ROUNDING_ULPS = 8  # the default tolerance, in units of the update dtype's machine epsilon
TENSORS_FILENAME = "forget_lock.safetensors"
MANIFEST_FILENAME = "forget_lock.json"


@dataclass
class LockedBlock:
    """The lock of one parameter block: basis E (d x q), displacement d (q), anchor c0 (q)."""

    basis: torch.Tensor
    displacement: torch.Tensor
    anchor: torch.Tensor
    epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.basis.ndim != 2:
            raise ValueError(f"basis must be 2-D (d x q), got shape {tuple(self.basis.shape)}")
        q = self.basis.shape[1]
        for name in ("displacement", "anchor"):
            value = getattr(self, name)
            if value.ndim != 1 or value.numel() != q:
                raise ValueError(f"{name} must have {q} entries (one per basis column), got {tuple(value.shape)}")
        if self.epsilon is not None:
            if not np.isfinite(self.epsilon) or self.epsilon < 0:
                raise ValueError(f"epsilon must be a finite number >= 0 or None, got {self.epsilon}")
            self.epsilon = float(self.epsilon)

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])


class ForgetLock:
    """Per-block direction-selective filter of later federated updates (see module docstring)."""

    def __init__(self, metadata: Mapping[str, str] | None = None, tolerance: float | None = None) -> None:
        """``tolerance`` None (the default): ``ROUNDING_ULPS`` units of the update's own precision (float32:
        about 1e-6), the size of the component rounding alone gives an update orthogonal to E."""
        if tolerance is not None and not 0.0 <= tolerance < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
        self.tolerance = None if tolerance is None else float(tolerance)
        self._blocks: dict[str, LockedBlock] = {}
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.interventions: dict[str, int] = {}

    # -- building -------------------------------------------------------------------------

    def add_block(
        self,
        name: str,
        basis: Array,
        theta_before: Array,
        theta_after: Array,
        theta_erased: Array | None = None,
        epsilon: float | None = None,
    ) -> LockedBlock:
        """Lock block ``name``: d = E^T (theta_after - theta_before), c0 = E^T theta_erased.

        ``theta_erased`` defaults to ``theta_after`` (the published erased parameters).
        Parameters may have any shape with d elements; ``basis`` is E (d x q).
        """
        e = as_tensor(basis, "basis")
        before = as_tensor(theta_before, "theta_before").reshape(-1).to(WORK_DTYPE)
        after = as_tensor(theta_after, "theta_after").reshape(-1).to(WORK_DTYPE)
        erased = after if theta_erased is None else as_tensor(theta_erased, "theta_erased").reshape(-1)
        erased = erased.to(WORK_DTYPE)
        if e.ndim != 2:
            raise ValueError(f"basis must be 2-D (d x q), got shape {tuple(e.shape)}")
        for label, value in (("theta_before", before), ("theta_after", after), ("theta_erased", erased)):
            if value.numel() != e.shape[0]:
                raise ValueError(f"{label} has {value.numel()} elements, basis has {e.shape[0]} rows")
        e64 = e.to(WORK_DTYPE)
        block = LockedBlock(
            basis=e.detach().clone(),
            displacement=e64.T @ (after - before),
            anchor=e64.T @ erased,
            epsilon=epsilon,
        )
        self.set_block(name, block)
        return block

    def set_block(self, name: str, block: LockedBlock) -> None:
        """Install a precomputed :class:`LockedBlock` under ``name`` (replaces an existing one)."""
        if not isinstance(name, str) or not name:
            raise ValueError("block name must be a non-empty string")
        self._blocks[name] = block
        self.interventions.setdefault(name, 0)

    @property
    def block_names(self) -> list[str]:
        return list(self._blocks)

    def block(self, name: str) -> LockedBlock:
        try:
            return self._blocks[name]
        except KeyError:
            raise KeyError(f"block {name!r} is not locked; locked blocks: {self.block_names}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    # -- applying -------------------------------------------------------------------------

    def apply(self, block_name: str, update: Array) -> tuple[torch.Tensor, int]:
        """Direction filter only: drop update components with a_i * d_i < 0, a = E^T update.

        Returns (filtered update in the shape and dtype of ``update``, interventions).
        """
        return self._filter(block_name, update, theta_current=None)

    def apply_with_state(self, block_name: str, update: Array, theta_current: Array) -> tuple[torch.Tensor, int]:
        """Direction filter, then clip so |E^T (theta_current + update) - c0| <= epsilon per coordinate.

        Without an epsilon on the block this equals :meth:`apply`.
        """
        return self._filter(block_name, update, theta_current=theta_current)

    def apply_to_updates(
        self,
        updates: Mapping[str, Array],
        theta_current: Mapping[str, Array] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Filter a whole client update (block name -> tensor). Blocks that are not locked pass unchanged.

        With ``theta_current`` (block name -> current global parameters) the drift bound applies
        as in :meth:`apply_with_state`. Returns (filtered updates, interventions per locked block).
        """
        filtered: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for name, value in updates.items():
            if name not in self._blocks:
                filtered[name] = as_tensor(value, name)
                continue
            state = None if theta_current is None else theta_current[name]
            filtered[name], counts[name] = self._filter(name, value, theta_current=state)
        return filtered, counts

    def _filter(self, block_name: str, update: Array, theta_current: Array | None) -> tuple[torch.Tensor, int]:
        block = self.block(block_name)
        delta_in = as_tensor(update, "update")
        if delta_in.numel() != block.dim:
            raise ValueError(f"update for {block_name!r} has {delta_in.numel()} elements, expected {block.dim}")
        out_dtype = delta_in.dtype if delta_in.is_floating_point() else torch.float32
        if block.rank == 0:
            return delta_in.clone().to(out_dtype), 0

        device = delta_in.device
        e = block.basis.to(device=device, dtype=WORK_DTYPE)
        displacement = block.displacement.to(device=device, dtype=WORK_DTYPE)
        delta = delta_in.reshape(-1).to(WORK_DTYPE)

        coords = e.T @ delta  # a = E^T Delta
        tolerance = self.tolerance if self.tolerance is not None else ROUNDING_ULPS * torch.finfo(out_dtype).eps
        negligible = coords.abs() <= tolerance * torch.linalg.vector_norm(delta)
        toward_excised = (coords * displacement < 0) & ~negligible
        removed = torch.where(toward_excised, coords, torch.zeros_like(coords))
        delta = delta - e @ removed
        changed = toward_excised.clone()

        if theta_current is not None and block.epsilon is not None:
            theta = as_tensor(theta_current, "theta_current").reshape(-1).to(device=device, dtype=WORK_DTYPE)
            if theta.numel() != block.dim:
                raise ValueError(f"theta_current for {block_name!r} has {theta.numel()} elements, expected {block.dim}")
            anchor = block.anchor.to(device=device, dtype=WORK_DTYPE)
            position = e.T @ (theta + delta)
            clipped = torch.clamp(position, anchor - block.epsilon, anchor + block.epsilon)
            correction = clipped - position
            outside = correction != 0
            delta = delta + e @ torch.where(outside, correction, torch.zeros_like(correction))
            changed |= outside

        count = int(changed.sum().item())
        self.interventions[block_name] = self.interventions.get(block_name, 0) + count
        return delta.to(out_dtype).reshape(delta_in.shape), count

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``forget_lock.safetensors`` and ``forget_lock.json`` into ``directory`` atomically.

        Each file is written to a temporary file in the same directory, fsynced and moved into
        place with os.replace; the manifest (written last) records the SHA-256 of the tensors.
        Returns the manifest path.
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        entries = []
        for index, (name, block) in enumerate(self._blocks.items()):
            key = f"block{index}"
            tensors[f"{key}.basis"] = block.basis.detach().cpu().contiguous()
            tensors[f"{key}.displacement"] = block.displacement.detach().cpu().to(WORK_DTYPE).contiguous()
            tensors[f"{key}.anchor"] = block.anchor.detach().cpu().to(WORK_DTYPE).contiguous()
            entries.append({"name": name, "key": key, "dim": block.dim, "rank": block.rank, "epsilon": block.epsilon})
        payload = save_safetensors_bytes(tensors, metadata={"format": LOCK_FORMAT})
        manifest = {
            "format": LOCK_FORMAT,
            "tensors_file": TENSORS_FILENAME,
            "tensors_sha256": hashlib.sha256(payload).hexdigest(),
            "blocks": entries,
            "metadata": self.metadata,
            "tolerance": self.tolerance,
        }
        write_bytes(target / TENSORS_FILENAME, payload)
        manifest_path = target / MANIFEST_FILENAME
        write_bytes(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        return manifest_path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ForgetLock:
        """Read a lock written by :meth:`save`; checks the format, the checksum and every shape."""
        source = Path(directory)
        manifest = json.loads((source / MANIFEST_FILENAME).read_text())
        if manifest.get("format") != LOCK_FORMAT:
            raise ValueError(f"{source / MANIFEST_FILENAME}: unknown format {manifest.get('format')!r}")
        payload = (source / manifest["tensors_file"]).read_bytes()
        if hashlib.sha256(payload).hexdigest() != manifest["tensors_sha256"]:
            raise ValueError(f"{source / manifest['tensors_file']}: checksum does not match the manifest")
        tensors = load_safetensors_bytes(payload)
        lock = cls(metadata=manifest.get("metadata", {}), tolerance=manifest.get("tolerance"))
        for entry in manifest["blocks"]:
            key = entry["key"]
            block = LockedBlock(
                basis=tensors[f"{key}.basis"],
                displacement=tensors[f"{key}.displacement"],
                anchor=tensors[f"{key}.anchor"],
                epsilon=entry["epsilon"],
            )
            if (block.dim, block.rank) != (entry["dim"], entry["rank"]):
                raise ValueError(f"block {entry['name']!r}: stored shape does not match the manifest")
            lock.set_block(entry["name"], block)
        return lock


__all__ = ["LOCK_FORMAT", "ForgetLock", "LockedBlock"]
