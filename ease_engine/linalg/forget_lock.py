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

Steps 1 and 2 together are the Euclidean projection of Delta onto a convex set C (per
coordinate of a an interval: the half-line away from the excised knowledge, cut by the band),
whenever that set is not empty.

A version erased from an erased version holds the locks of both erasures (``ForgetLock.chained``):
each erasure is a *layer*, and a block may be locked by several layers whose bases need not be
orthogonal. Filtering one layer after the other would let the second layer's removal put back a
component the first removed, so a block with several layers is filtered by Dykstra's alternating
projections onto the layers' sets C_1..C_m: it converges to the nearest update that lies in every
C_j (the nearest update that moves toward no erasure's excised knowledge). With one layer it is
step 1 and 2 above, exactly.

The intervention count of a call is the number of coordinates i whose E-coordinate of the
update was changed by step 1 or step 2 (each coordinate counted once; with several layers,
the coordinates whose constraint is active in the final sweep). The lock keeps running totals
per block in :attr:`ForgetLock.interventions` for the audit report.

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

LOCK_FORMAT = "lethe.forget_lock/2"
SINGLE_ERASURE_FORMAT = "lethe.forget_lock/1"  # one erasure, no layers; still read
ROUNDING_ULPS = 8  # the default tolerance, in units of the update dtype's machine epsilon
MAX_SWEEPS = 200  # Dykstra sweeps over a block's layers (orthogonal layers need 2)
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


class ForgetLock:
    """Per-block direction-selective filter of later federated updates (see module docstring).

    ``erasures`` holds one metadata dict per erasure whose directions the lock holds, oldest first;
    ``metadata`` is the newest one's, and :meth:`add_block` / :meth:`set_block` write the newest layer.
    """

    def __init__(self, metadata: Mapping[str, str] | None = None, tolerance: float | None = None) -> None:
        """``tolerance`` None (the default): ``ROUNDING_ULPS`` units of the update's own precision (float32:
        about 1e-6), the size of the component rounding alone gives an update orthogonal to E."""
        if tolerance is not None and not 0.0 <= tolerance < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
        self.tolerance = None if tolerance is None else float(tolerance)
        self.erasures: list[dict[str, str]] = [{str(k): str(v) for k, v in (metadata or {}).items()}]
        self._layers: dict[str, dict[int, LockedBlock]] = {}  # block name -> erasure index -> its lock
        self.interventions: dict[str, int] = {}

    @property
    def metadata(self) -> dict[str, str]:
        return self.erasures[-1]

    @classmethod
    def chained(cls, earlier: ForgetLock | None, later: ForgetLock | None) -> ForgetLock | None:
        """The lock of a version erased from a locked one: ``earlier``'s layers, then ``later``'s.

        Either may be None (a parent without a lock, or a method that publishes none). The result shares
        the layers' tensors with its inputs; no layer is ever modified in place."""
        if earlier is None or later is None:
            return later if earlier is None else earlier
        tolerance = later.tolerance if later.tolerance is not None else earlier.tolerance
        merged = cls(tolerance=tolerance)
        merged.erasures = [dict(m) for m in earlier.erasures] + [dict(m) for m in later.erasures]
        offset = len(earlier.erasures)
        for lock, shift in ((earlier, 0), (later, offset)):
            for name, layers in lock._layers.items():
                for index, block in layers.items():
                    merged.set_block(name, block, erasure=index + shift)
        return merged

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

    def set_block(self, name: str, block: LockedBlock, erasure: int | None = None) -> None:
        """Install ``block`` under ``name`` in layer ``erasure`` (default: the newest erasure's; replaces
        what that layer held for ``name``)."""
        if not isinstance(name, str) or not name:
            raise ValueError("block name must be a non-empty string")
        index = len(self.erasures) - 1 if erasure is None else erasure
        if not 0 <= index < len(self.erasures):
            raise ValueError(f"erasure {index} is not one of this lock's {len(self.erasures)} erasures")
        layers = self._layers.setdefault(name, {})
        if any(b.dim != block.dim for b in layers.values()):
            raise ValueError(f"block {name!r} is locked with another size than {block.dim} elements")
        layers[index] = block
        self.interventions.setdefault(name, 0)

    @property
    def block_names(self) -> list[str]:
        return list(self._layers)

    def layers(self, name: str) -> list[LockedBlock]:
        """Every erasure's lock of block ``name``, oldest first."""
        try:
            return [block for _, block in sorted(self._layers[name].items())]
        except KeyError:
            raise KeyError(f"block {name!r} is not locked; locked blocks: {self.block_names}") from None

    def block(self, name: str) -> LockedBlock:
        """The newest erasure's lock of block ``name`` (all of them: :meth:`layers`)."""
        return self.layers(name)[-1]

    def __contains__(self, name: object) -> bool:
        return name in self._layers

    def __len__(self) -> int:
        return len(self._layers)

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
            if name not in self._layers:
                filtered[name] = as_tensor(value, name)
                continue
            state = None if theta_current is None else theta_current[name]
            filtered[name], counts[name] = self._filter(name, value, theta_current=state)
        return filtered, counts

    def _filter(self, block_name: str, update: Array, theta_current: Array | None) -> tuple[torch.Tensor, int]:
        layers = [b for b in self.layers(block_name) if b.rank > 0]
        delta_in = as_tensor(update, "update")
        dim = self.block(block_name).dim
        if delta_in.numel() != dim:
            raise ValueError(f"update for {block_name!r} has {delta_in.numel()} elements, expected {dim}")
        out_dtype = delta_in.dtype if delta_in.is_floating_point() else torch.float32
        if not layers:
            return delta_in.clone().to(out_dtype), 0
        delta = delta_in.reshape(-1).to(WORK_DTYPE)
        theta = None
        if theta_current is not None:
            theta = as_tensor(theta_current, "theta_current").reshape(-1).to(device=delta.device, dtype=WORK_DTYPE)
            if theta.numel() != dim:
                raise ValueError(f"theta_current for {block_name!r} has {theta.numel()} elements, expected {dim}")
        tolerance = self.tolerance if self.tolerance is not None else ROUNDING_ULPS * torch.finfo(out_dtype).eps
        scale = torch.linalg.vector_norm(delta)
        delta, changed = _dykstra(layers, delta, theta, tolerance, scale)
        count = int(sum(c.sum().item() for c in changed))
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
        for name, layers in self._layers.items():
            for erasure, block in sorted(layers.items()):
                key = f"block{len(entries)}"
                tensors[f"{key}.basis"] = block.basis.detach().cpu().contiguous()
                tensors[f"{key}.displacement"] = block.displacement.detach().cpu().to(WORK_DTYPE).contiguous()
                tensors[f"{key}.anchor"] = block.anchor.detach().cpu().to(WORK_DTYPE).contiguous()
                entries.append({"name": name, "key": key, "erasure": erasure, "dim": block.dim, "rank": block.rank,
                                "epsilon": block.epsilon})
        payload = save_safetensors_bytes(tensors, metadata={"format": LOCK_FORMAT})
        manifest = {
            "format": LOCK_FORMAT,
            "tensors_file": TENSORS_FILENAME,
            "tensors_sha256": hashlib.sha256(payload).hexdigest(),
            "blocks": entries,
            "erasures": self.erasures,
            "metadata": self.metadata,
            "tolerance": self.tolerance,
        }
        write_bytes(target / TENSORS_FILENAME, payload)
        manifest_path = target / MANIFEST_FILENAME
        write_bytes(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        return manifest_path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ForgetLock:
        """Read a lock written by :meth:`save` (or a single-erasure lock of the first format); checks the
        format, the checksum and every shape."""
        source = Path(directory)
        manifest = json.loads((source / MANIFEST_FILENAME).read_text())
        if manifest.get("format") not in (LOCK_FORMAT, SINGLE_ERASURE_FORMAT):
            raise ValueError(f"{MANIFEST_FILENAME}: unknown format {manifest.get('format')!r}")
        payload = (source / manifest["tensors_file"]).read_bytes()
        if hashlib.sha256(payload).hexdigest() != manifest["tensors_sha256"]:
            raise ValueError(f"{manifest['tensors_file']}: checksum does not match the manifest")
        tensors = load_safetensors_bytes(payload)
        erasures = manifest.get("erasures") or [manifest.get("metadata", {})]
        lock = cls(tolerance=manifest.get("tolerance"))
        lock.erasures = [{str(k): str(v) for k, v in m.items()} for m in erasures]
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
            lock.set_block(entry["name"], block, erasure=int(entry.get("erasure", 0)))
        return lock


def _dykstra(layers: list[LockedBlock], delta: torch.Tensor, theta: torch.Tensor | None, tolerance: float,
             scale: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Dykstra's alternating projections of ``delta`` onto every layer's set; returns the update and, per
    layer, the coordinates its last projection changed (its active constraints)."""
    if len(layers) == 1:
        projected, changed = layers[0].project(delta, theta, tolerance, scale)
        return projected, [changed]
    x = delta
    increments = [torch.zeros_like(delta) for _ in layers]
    changed: list[torch.Tensor] = [torch.zeros(b.rank, dtype=torch.bool) for b in layers]
    for _ in range(MAX_SWEEPS):
        moved = torch.zeros((), dtype=WORK_DTYPE, device=delta.device)
        for j, block in enumerate(layers):
            shifted = x + increments[j]
            projected, changed[j] = block.project(shifted, theta, tolerance, scale)
            increments[j] = shifted - projected
            moved = torch.maximum(moved, torch.linalg.vector_norm(projected - x))
            x = projected
        if moved <= tolerance * scale:
            break
    return x, changed


__all__ = ["LOCK_FORMAT", "ForgetLock", "LockedBlock"]
