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
component the first removed, so a block with several layers takes the nearest update that satisfies
every layer's constraints at once: with B = [E_1 ... E_m] = Q R (Q an orthonormal basis of span(B),
from B's SVD), the change lies in span(B), the
constraints act on R^T z (z = Q^T Delta), and the shortest change in those few coordinates is a
least-distance problem solved exactly (``ease_engine.linalg.least_distance``, Lawson-Hanson via NNLS).
As with one layer, a band wins over the direction rule: when no update satisfies both, the nearest one
inside every band is taken. If the bands themselves leave no update, or a solution fails its own check,
the lock fails closed: the update loses its whole component in span(B), so it moves along no locked
direction (a band the model was already outside then stays violated; ``ForgetLock.failed_closed`` counts
it). One layer is steps 1 and 2 above, exactly.

The intervention count of a call is the number of coordinates i whose E-coordinate of the
update was changed by step 1 or step 2 (each coordinate counted once; with several layers,
the coordinates whose E-coordinate moved by more than the rounding tolerance). The lock keeps running totals
per block in :attr:`ForgetLock.interventions` for the audit report.

The lock is stored as one safetensors file plus a small JSON manifest (no pickle), both
written atomically, so an external aggregator can load and apply it (``forget_lock_files``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ease_engine.linalg._common import WORK_DTYPE, as_tensor
from ease_engine.linalg.forget_lock_files import (
    LOCK_FORMAT,
    MANIFEST_FILENAME,
    SINGLE_ERASURE_FORMAT,
    TENSORS_FILENAME,
    load_lock,
    save_lock,
)
from ease_engine.linalg.least_distance import least_distance
from ease_engine.linalg.locked_block import LockedBlock

Array = torch.Tensor | np.ndarray

ROUNDING_ULPS = 8  # the default tolerance, in units of the update dtype's machine epsilon
FEASIBILITY_SLACK = 1e-6  # relative: how far a multi-layer solution may miss a constraint before failing closed


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
        self.failed_closed: dict[str, int] = {}  # calls whose layers' bands conflicted (module docstring)

    @property
    def metadata(self) -> dict[str, str]:
        return self.erasures[-1]

    @classmethod
    def chained(cls, earlier: ForgetLock | None, later: ForgetLock | None) -> ForgetLock | None:
        """The lock of a version erased from a locked one: ``earlier``'s layers, then ``later``'s.

        Either may be None (a parent without a lock, or a method that publishes none). An erasure of
        ``later`` that ``earlier`` already holds (same metadata, same blocks, equal tensors: the same lock
        loaded twice) is not added again. The result shares the layers' tensors with its inputs; no layer is
        ever modified in place."""
        if earlier is None or later is None:
            return later if earlier is None else earlier
        tolerance = later.tolerance if later.tolerance is not None else earlier.tolerance
        merged = cls(tolerance=tolerance)
        merged.erasures = [dict(m) for m in earlier.erasures]
        for name, layers in earlier._layers.items():
            for index, block in layers.items():
                merged.set_block(name, block, erasure=index)
        for index, metadata in enumerate(later.erasures):
            own = later._erasure_blocks(index)
            if any(metadata == earlier.erasures[j] and _same_blocks(own, earlier._erasure_blocks(j))
                   for j in range(len(earlier.erasures))):
                continue
            merged.erasures.append(dict(metadata))
            for name, block in own.items():
                merged.set_block(name, block, erasure=len(merged.erasures) - 1)
        return merged

    def anchored_at(self, values: Mapping[str, Array]) -> ForgetLock:
        """A copy whose newest erasure's layers are anchored at ``values`` (block name -> parameters; c0 =
        E^T theta), for an erasure whose weights changed after its lock was built. Earlier layers keep theirs."""
        copy = ForgetLock(tolerance=self.tolerance)
        copy.erasures = [dict(m) for m in self.erasures]
        newest = len(self.erasures) - 1
        for name, layers in self._layers.items():
            for index, block in layers.items():
                if index == newest:
                    theta = as_tensor(values[name], name).reshape(-1).to(WORK_DTYPE)
                    block = LockedBlock(block.basis, block.displacement,
                                        block.basis.to(WORK_DTYPE).T @ theta, block.epsilon)
                copy.set_block(name, block, erasure=index)
        return copy

    def _erasure_blocks(self, erasure: int) -> dict[str, LockedBlock]:
        return {name: layers[erasure] for name, layers in self._layers.items() if erasure in layers}

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

    def indexed_layers(self, name: str) -> list[tuple[int, LockedBlock]]:
        """(erasure index, lock) of every erasure that locks block ``name``, oldest first."""
        try:
            return sorted(self._layers[name].items())
        except KeyError:
            raise KeyError(f"block {name!r} is not locked; locked blocks: {self.block_names}") from None

    def layers(self, name: str) -> list[LockedBlock]:
        """Every erasure's lock of block ``name``, oldest first."""
        return [block for _, block in self.indexed_layers(name)]

    def block(self, name: str) -> LockedBlock:
        """The newest erasure's lock of block ``name`` (all of them: :meth:`layers`)."""
        return self.layers(name)[-1]

    def misfit(self, sizes: Mapping[str, int]) -> str | None:
        """What keeps this lock from applying to a model whose trainable blocks have ``sizes`` (name -> number
        of elements), or None when every locked block is one of them, with the same size."""
        for name in self.block_names:
            if name not in sizes:
                return f"it locks block {name!r}, which this model does not train"
            if (dim := self.block(name).dim) != sizes[name]:
                return f"block {name!r} has {dim} elements in the lock and {sizes[name]} in this model"
        return None

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
        every_layer = self.layers(block_name)
        layers = [b for b in every_layer if b.rank > 0]
        delta_in = as_tensor(update, "update")
        dim = every_layer[-1].dim  # one size for every layer (set_block)
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
        delta, changed, failed_closed = _nearest_allowed(layers, delta, theta, tolerance, scale)
        if failed_closed:
            self.failed_closed[block_name] = self.failed_closed.get(block_name, 0) + 1
        count = int(sum(c.sum().item() for c in changed))
        self.interventions[block_name] = self.interventions.get(block_name, 0) + count
        return delta.to(out_dtype).reshape(delta_in.shape), count

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``forget_lock.safetensors`` and ``forget_lock.json`` into ``directory`` atomically
        (``ease_engine.linalg.forget_lock_files``); returns the manifest path."""
        layers = [(name, index, block) for name in self.block_names for index, block in self.indexed_layers(name)]
        return save_lock(Path(directory), layers, self.erasures, self.tolerance)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ForgetLock:
        """Read a lock written by :meth:`save`; checks the format, the checksum, every field and every shape
        (ValueError when any is wrong; OSError when a file is missing or unreadable)."""
        layers, erasures, tolerance = load_lock(Path(directory))
        lock = cls(tolerance=tolerance)
        lock.erasures = erasures
        for name, index, block in layers:
            lock.set_block(name, block, erasure=index)
        return lock


def _same_blocks(a: dict[str, LockedBlock], b: dict[str, LockedBlock]) -> bool:
    return a.keys() == b.keys() and all(
        a[n].epsilon == b[n].epsilon and all(torch.equal(getattr(a[n], f).cpu(), getattr(b[n], f).cpu())
                                             for f in ("basis", "displacement", "anchor")) for n in a)


def _span(stacked: torch.Tensor, stored_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, R) with orthonormal Q (d x r) spanning the columns of ``stacked`` (d x k) and stacked = Q R up to the
    bases' stored precision: from the SVD, so that layers sharing a direction (stored separately, rounded to
    ``stored_eps``) get no spurious coordinate of rounding size."""
    u, s, vh = torch.linalg.svd(stacked, full_matrices=False)
    keep = s > s[0] * stacked.shape[1] * stored_eps * 16
    return u[:, keep], s[keep, None] * vh[keep]


def _constraints(layers: list[LockedBlock], coordinates: list[torch.Tensor], z0: torch.Tensor,
                 theta: torch.Tensor | None, directions: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows G and bounds h of G dz >= h in span(B)'s coordinates: sign_i (a0_i + R_ji^T dz) >= 0 (``directions``)
    and anchor - eps <= E^T theta + a0 + R_j^T dz <= anchor + eps (bands, with ``theta``)."""
    rows, bounds = [], []
    for block, r_j in zip(layers, coordinates, strict=True):
        a0 = r_j.T @ z0
        if directions:
            sign = torch.sign(block.displacement.to(z0.device, WORK_DTYPE))
            moving = sign != 0
            rows.append(sign[moving, None] * r_j.T[moving])
            bounds.append(-sign[moving] * a0[moving])
        if theta is not None and block.epsilon is not None:
            position = block.basis.to(z0.device, WORK_DTYPE).T @ theta + a0
            anchor = block.anchor.to(z0.device, WORK_DTYPE)
            rows += [r_j.T, -r_j.T]
            bounds += [anchor - block.epsilon - position, position - anchor - block.epsilon]
    if not rows:
        return np.zeros((0, z0.numel())), np.zeros(0)
    return torch.cat(rows).cpu().numpy(), torch.cat(bounds).cpu().numpy()


def _nearest_allowed(layers: list[LockedBlock], delta: torch.Tensor, theta: torch.Tensor | None, tolerance: float,
                     scale: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], bool]:
    """The update's nearest point that every layer allows (module docstring); returns it, per layer the
    coordinates it changed by more than the rounding tolerance, and whether the lock failed closed.

    As with one layer, a band wins over the direction rule: when no update satisfies both, the nearest one that
    satisfies every band is taken; only when the bands themselves conflict does the lock fail closed."""
    if len(layers) == 1:
        projected, changed = layers[0].project(delta, theta, tolerance, scale)
        return projected, [changed], False
    stored_eps = max(torch.finfo(b.basis.dtype).eps for b in layers)
    q, r = _span(torch.cat([b.basis.to(device=delta.device, dtype=WORK_DTYPE) for b in layers], dim=1), stored_eps)
    z0 = q.T @ delta
    coordinates, offset = [], 0
    for block in layers:
        coordinates.append(r[:, offset:offset + block.rank])  # a_j = R_j^T z
        offset += block.rank
    dz = None
    for directions in (True, False):
        g, h = _constraints(layers, coordinates, z0, theta, directions)
        step = least_distance(g, h)
        slack = FEASIBILITY_SLACK * max(float(scale), float(np.abs(h).max(initial=0.0)), 1.0)
        if step is not None and bool(np.all(g @ step - h >= -slack)):
            dz = torch.as_tensor(step, dtype=WORK_DTYPE, device=delta.device)
            break
    failed_closed = dz is None
    if failed_closed:
        dz = -z0  # no move along any locked direction
    changed = [(r_j.T @ dz).abs() > tolerance * scale for r_j in coordinates]
    return delta + q @ dz, changed, failed_closed


__all__ = ["LOCK_FORMAT", "MANIFEST_FILENAME", "SINGLE_ERASURE_FORMAT", "TENSORS_FILENAME", "ForgetLock",
           "LockedBlock"]
