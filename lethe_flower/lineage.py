"""Where a Flower federation starts: a fresh model, or a version it continues (often an erased one).

Continuing from a version ``V`` means: the global model starts at V's weights; V's ledger
goes on recording (so a later erasure sees every round, before and after); V's Forget Lock
(``V/forget_lock/``: every earlier erasure's layers) filters every client update, and the version the run
writes keeps it; clients V marks
as erased do not train again, and a client that lost some pairs trains on the rest; the
round numbers (which seed local training) go on after V's last recorded round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ease_engine.federation.fedavg import FederationSetup
from ease_engine.federation.ledger import Ledger
from ease_engine.federation.version import clients_index, read_version_lock
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.blocks import TOKEN_EMBEDDING, read_blocks
from ease_engine.models.version_io import load_version
from lethe_format import ClientsIndex, FormatError, read_clients


class LineageError(ValueError):
    """The version to continue from (or its lock) does not fit this federation; nothing was trained."""


@dataclass
class Lineage:
    """What a run starts from (see the module docstring)."""

    values: dict[str, torch.Tensor]  # the global trainable blocks at the start
    clients: ClientsIndex  # clients.json of the new version (erased marks carried over)
    participants: list[int]  # clients that train
    first_round: int = 0
    ledger: Ledger | None = None
    lock: ForgetLock | None = None
    parent: Path | None = None
    retained_pairs: dict[int, list[str]] = field(default_factory=dict)  # clients that lost some pairs
    refused: list[int] = field(default_factory=list)  # erased or excluded: their updates are set aside
    # the continued version's own lock: the version this run writes keeps it, whatever lock filters the run
    inherited_lock: ForgetLock | None = None

    def lock_to_keep(self) -> ForgetLock | None:
        """The lock the new version holds: the one that filtered the run (it includes the inherited layers), or
        the inherited one when the run was unfiltered (an empty lock: a control)."""
        return self.lock if self.lock is not None and len(self.lock) else self.inherited_lock


def check_lock_fits(lock: ForgetLock, setup: FederationSetup, origin: str = "the Forget Lock") -> None:
    """Every locked block is a trainable block of this model, with the same number of elements."""
    problem = lock.misfit({b.name: b.numel for b in setup.blocks})
    if problem is not None:
        raise LineageError(f"{origin} belongs to another model: {problem} (config {setup.config.name!r}, model "
                           f"fingerprint {setup.fingerprint})")


def fresh_lineage(setup: FederationSetup, lock: ForgetLock | None = None) -> Lineage:
    excluded = list(setup.config.training.exclude_clients)
    participants = [k for k in setup.clients if k not in excluded]
    ledger = None
    if setup.config.ledger.enabled:
        sizes = {k: len(setup.train.client_indices(k)) for k in participants}
        ledger = Ledger(setup.blocks, participants, setup.config.ledger, setup.fingerprint, sizes,
                        initial=read_blocks(setup.bundle.model, setup.blocks))
    if lock is not None:
        check_lock_fits(lock, setup)
    values = read_blocks(setup.bundle.model, setup.blocks)
    refused = [k for k in setup.clients if k not in participants]
    clients = clients_index(setup.train, excluded)
    return Lineage(values, clients, participants, ledger=ledger, lock=lock, refused=refused)


def _frozen_state(setup: FederationSetup, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters outside the trainable blocks (what clients rebuild from the config, not receive)."""
    rows = {r for b in setup.blocks if b.param == TOKEN_EMBEDDING and b.rows for r in b.rows}
    whole = {b.param for b in setup.blocks if b.rows is None}
    out = {}
    for name, value in state.items():
        if name in whole:
            continue
        if name == TOKEN_EMBEDDING and rows:
            keep = torch.ones(value.shape[0], dtype=torch.bool)
            keep[sorted(rows)] = False
            value = value[keep]
        out[name] = value
    return out


def continued_lineage(setup: FederationSetup, version_dir: str | Path) -> Lineage:
    """Start from ``version_dir``; ``setup.bundle`` is set to its weights."""
    version_dir = Path(version_dir)
    metadata_path = version_dir / "metadata.json"
    if not metadata_path.is_file():
        raise LineageError(f"{version_dir} is not a Lethe model version (metadata.json missing)")
    metadata = json.loads(metadata_path.read_text())
    if metadata.get("model_fingerprint") != setup.fingerprint:
        raise LineageError(
            f"{version_dir} belongs to another model (fingerprint {metadata.get('model_fingerprint')}, "
            f"this config's {setup.fingerprint}): continue with the config the version was trained with"
        )
    bundle, _ = load_version(version_dir, setup.device)
    fresh_frozen = _frozen_state(setup, setup.bundle.model.state_dict())
    loaded_frozen = _frozen_state(setup, bundle.model.state_dict())
    changed = [k for k in fresh_frozen if not torch.equal(fresh_frozen[k], loaded_frozen[k])]
    if changed:
        raise LineageError(
            f"{version_dir} changed parameters outside the trainable blocks ({changed[:3]}); Flower clients "
            "rebuild those from the config and would train a different model"
        )
    setup.bundle = bundle
    try:
        clients = read_clients(version_dir)
    except FormatError as exc:
        raise LineageError(f"the clients.json of {version_dir} cannot be read: {exc}") from None
    erased = {int(k) for k in clients.erased_clients()}
    excluded = set(setup.config.training.exclude_clients)
    participants = [k for k in setup.clients if k not in erased and k not in excluded]
    ledger = None
    if (version_dir / "ledger" / "ledger.json").is_file():
        ledger = Ledger.load(version_dir / "ledger", setup.fingerprint)
        unknown = [k for k in participants if k not in ledger.records]
        if unknown:
            raise LineageError(f"clients {unknown} train but have no record in the ledger of {version_dir}")
    last_rounds = [r for k in (ledger.clients if ledger else []) for r in ledger.client(k).rounds]
    first_round = max(last_rounds) + 1 if last_rounds else int(metadata.get("rounds_total", metadata.get("rounds", 0)))
    try:
        lock = read_version_lock(version_dir)
    except ValueError as exc:
        raise LineageError(f"the Forget Lock of {version_dir} cannot be read: {exc}") from None
    if lock is not None:
        check_lock_fits(lock, setup, f"the Forget Lock of {version_dir}")
    retained = {
        int(k): list(entry.pair_ids)
        for k, entry in clients.clients.items()
        if entry.erased_pair_hashes and int(k) in participants
    }
    refused = [k for k in setup.clients if k not in participants]
    return Lineage(
        read_blocks(bundle.model, setup.blocks),
        clients,
        participants,
        first_round,
        ledger,
        lock,
        version_dir,
        retained,
        refused,
        inherited_lock=lock,
    )
