"""What only one client taught, read off the contribution ledger: its exclusive contribution.

Per block l, with the retained support U_R = orth[U_k S_k : k != f] (:func:`retained_support`, truncated at
``energy``), client f's exclusive contribution is the part of its exact contribution C_f that no retained
client's updates span:

    x_f = (I - U_R U_R^T) C_f,        exclusive share  e_f = |x_f|^2 / |C_f|^2.

A high share alone is no evidence of knowledge only f holds: in a high-dimensional block, rank-limited
bases of clients holding the SAME kind of data also leave much of each contribution outside the others'
span (six IID clients show "exclusive" directions at 84-90 degrees). So each block's share is compared with
a null from the retained clients themselves: e_k of every retained client k against the others (f left out,
as f is left out of its own comparison). A block **stands out** when e_f > ``DISTINGUISHABLE_RATIO`` x
max_k e_k, or when no retained client moved it at all (wholly exclusive: the word "purple" only f's captions
use). With ``ratio`` the contribution keeps only such blocks; with ``ratio = 0`` (the default of EASE and of
verification) it keeps every block f moved: what f alone put into a block is f's imprint (knowledge and the
idiosyncrasies of its pairs alike), and a model never trained on f lacks it too. Measured on the default
federation: only the "purple" row stands out (entangled blocks: e_f <= 1.13 x the null), yet the retrain
reference keeps 16% of f's whole exclusive contribution and the parent 113%.

FedAvg gives theta_T = theta_0 + sum_k C_k exactly, and <C_f, x_f> = |x_f|^2, so the **residual** of any
model theta, the share of f's exclusive contribution still in it,

    r(theta) = ( sum <theta - theta_0, x_f> - sum_{k != f} <C_k, x_f> ) / sum |x_f|^2    (sums over blocks)

is exactly 1 for the parent: what the retained clients themselves put along x_f in the federation's run
(the ledger knows it) is not f's and is subtracted. It is 0 once x_f is removed, stays ~1 for any change that
does not remove f's contribution (more rounds on the retained clients, small noise: nearly orthogonal to x_f
by construction), and a model never trained on f lands near 0 (its retained clients' different trajectory
puts some weight along x_f by chance: measured on the scenarios, docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ease_engine.federation.ledger import Ledger
from ease_engine.linalg.subspace import orthonormal_basis, principal_angles

DISTINGUISHABLE_RATIO = 1.5
# An exclusive share at the rounding level of float32 contributions is nothing: after an erasure debited a client's
# recorded contribution by its x_f (``Ledger.debited``), re-projecting leaves only that rounding (shares ~1e-15),
# and normalising it would turn noise into lock directions and a residual denominator. Real shares are >= 1e-3.
ROUNDING_SHARE = (64 * torch.finfo(torch.float32).eps) ** 2


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


def _outside(contribution: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    c = contribution.double()
    if support.shape[1] == 0:
        return c
    u = support.double()
    return c - u @ (u.T @ c)


def _share(part: torch.Tensor, contribution: torch.Tensor) -> float:
    total = float(contribution.double().pow(2).sum())
    return float(part.pow(2).sum()) / total if total > 0 else 0.0


@dataclass(frozen=True)
class ExclusiveContribution:
    client: int
    parts: dict[str, torch.Tensor]  # x_f (float64) of the exclusive blocks
    share: dict[str, float]  # e_f of every block f moved
    null_share: dict[str, float]  # max over retained clients of e_k (0 where none moved it; only when computed)
    wholly_exclusive: frozenset[str]  # blocks no retained client moved
    initial: dict[str, torch.Tensor] | None  # theta_0 per block, when the ledger recorded it
    others: dict[str, float]  # sum_{k != f} <C_k, x_f> per exclusive block: the retained clients' own weight
    angles_deg: list[float]  # principal angles between f's update span and the retained support, every block

    @classmethod
    def from_ledger(cls, ledger: Ledger, client: int, energy: float = 0.999, ratio: float = 0.0,
                    null: bool = False) -> ExclusiveContribution:
        """``ratio`` > 0 keeps only blocks that stand out of the retained clients' own shares; computing those
        shares (``null``, implied by a ratio) costs one support per retained client and block."""
        null = null or ratio > 0
        record = ledger.client(client)
        others = [k for k in ledger.clients if k != client]
        parts, share, null_share, whole, on_x, angles = {}, {}, {}, set(), {}, []
        for block in ledger.blocks:
            name = block.name
            c_f = record.contribution[name]
            if float(c_f.abs().max()) == 0.0:
                continue
            support = retained_support(ledger, name, others, energy)
            x_f = _outside(c_f, support)
            u_f = record.basis[name]
            if u_f.shape[1] and support.shape[1]:
                angles.extend(torch.rad2deg(principal_angles(support, u_f)).tolist())
            else:
                angles.extend([90.0] * max(u_f.shape[1], 1))
            share_f = _share(x_f, c_f)
            if share_f <= ROUNDING_SHARE:
                continue
            share[name] = share_f
            moved_by = [k for k in others if float(ledger.records[k].contribution[name].abs().max()) > 0.0]
            if not moved_by:
                whole.add(name)
                parts[name] = x_f
                null_share[name] = 0.0
                continue
            if null:
                null_share[name] = max(
                    _share(_outside(ledger.records[k].contribution[name],
                                    retained_support(ledger, name, [j for j in others if j != k], energy)),
                           ledger.records[k].contribution[name])
                    for k in moved_by)
            if ratio <= 0 or share[name] > ratio * null_share[name]:
                parts[name] = x_f
        for name, x in parts.items():
            on_x[name] = float(sum(float(ledger.records[k].contribution[name].double() @ x) for k in others))
        initial = None if ledger.initial is None else {k: v.double() for k, v in ledger.initial.items()}
        return cls(int(client), parts, share, null_share, frozenset(whole), initial, on_x,
                   [round(a, 3) for a in angles])

    @property
    def entangled(self) -> frozenset[str]:
        """Exclusive blocks that retained clients moved too (excised along x_f, not as a whole)."""
        return frozenset(self.parts) - self.wholly_exclusive

    def energy(self) -> float:
        return float(sum(float(x.pow(2).sum()) for x in self.parts.values()))

    def residual(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """r over the exclusive blocks, and over the wholly exclusive and entangled ones (nan where empty,
        or without theta_0)."""
        num = {"all": 0.0, "wholly_exclusive": 0.0, "entangled": 0.0}
        den = dict(num)
        for name, x in self.parts.items():
            if self.initial is None:
                break
            moved = values[name].reshape(-1).double().cpu() - self.initial[name]
            group = "wholly_exclusive" if name in self.wholly_exclusive else "entangled"
            dot, norm = float(moved @ x) - self.others[name], float(x @ x)
            for key in ("all", group):
                num[key] += dot
                den[key] += norm
        return {key: (num[key] / den[key] if den[key] > 0 else float("nan")) for key in num}

    def standing_out(self) -> list[str] | None:
        """Blocks whose exclusive share stands out of the retained clients' (or that none of them moved); None
        when the retained clients' shares were not computed."""
        if set(self.null_share) != set(self.share):
            return None
        return sorted(name for name, share in self.share.items()
                      if name in self.wholly_exclusive or share > DISTINGUISHABLE_RATIO * self.null_share[name])

    def summary(self) -> dict:
        return {
            "exclusive_blocks": len(self.parts),
            "blocks_standing_out": self.standing_out(),
            "wholly_exclusive_blocks": sorted(self.wholly_exclusive),
            "entangled_exclusive_blocks": len(self.entangled),
            "blocks_moved": len(self.share),
            "exclusive_energy": self.energy(),
        }
