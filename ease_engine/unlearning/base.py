"""What every unlearning method receives and returns.

A method is one module with a typed ``Params`` model (unknown keys rejected, tuned
defaults) and a function ``unlearn(context, target, params) -> UnlearningOutcome``. The
registry in ``ease_engine.unlearning`` maps its name to a :class:`MethodSpec`.

The context is loaded once from a version directory: the federation's data, the model
with the ORIGINAL weights, its trainable blocks and, where recorded, the ledger and the
stored per-round updates. A method must not modify ``context.original`` (it works on
``context.fresh_bundle()``), so several methods can run on one context.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from ease_engine.federation.config import FederationConfig
from ease_engine.federation.fedavg import FederationSetup, prepare_federation
from ease_engine.federation.ledger import Ledger
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.blocks import blocks_numel, read_blocks, write_blocks
from ease_engine.models.factory import ClipBundle
from ease_engine.models.version_io import load_version

BYTES_PER_NUMBER = 4  # float32 parameters on the wire


class UnlearningError(ValueError):
    """The erasure cannot be carried out as asked; nothing was written."""


@dataclass(frozen=True)
class ErasureTarget:
    """What to forget: a whole client, or some of its pairs (a data subject's)."""

    client: int
    pair_ids: tuple[str, ...] | None = None

    @property
    def scope(self) -> str:
        return "client" if self.pair_ids is None else "samples"


@dataclass
class Cost:
    """What an erasure costs the federation, for the benchmark's comparison."""

    client_samples: int = 0  # pairs processed (forward + backward) on clients
    server_samples: int = 0  # pairs processed on the server (retain proxy, verification excluded)
    bytes_exchanged: int = 0  # model numbers sent between server and clients, x 4 bytes
    rounds: int = 0  # federated rounds of communication

    def add_round(self, n_clients: int, n_numbers: int) -> None:
        """One round: the model goes down to and an update comes back from each client."""
        self.rounds += 1
        self.bytes_exchanged += 2 * n_clients * n_numbers * BYTES_PER_NUMBER


@dataclass
class UnlearningOutcome:
    bundle: ClipBundle
    cost: Cost
    wall_seconds: float = 0.0
    lock: ForgetLock | None = None
    details: dict = field(default_factory=dict)


@dataclass
class UnlearningContext:
    setup: FederationSetup  # setup.bundle holds the ORIGINAL weights; do not modify
    version_dir: Path
    ledger: Ledger | None
    original_values: dict[str, torch.Tensor]
    erased_clients: frozenset[int] = frozenset()
    on_stage: Callable[[str, float], None] = field(default=lambda stage, progress: None)

    def report_stage(self, stage: str, progress: float) -> None:
        """Methods call this as they move on (``excising``, ``displacing``): the worker shows it."""
        self.on_stage(stage, progress)

    @classmethod
    def load(cls, version_dir: str | Path, device: str = "cpu") -> UnlearningContext:
        version_dir = Path(version_dir)
        metadata = json.loads((version_dir / "metadata.json").read_text())
        if "config" not in metadata:
            raise UnlearningError(f"{version_dir} records no federation config; it was not made by `lethe federate`")
        config = FederationConfig.model_validate(metadata["config"])
        config.training.device = device
        setup = prepare_federation(config)
        bundle, _ = load_version(version_dir, device)
        setup.bundle = bundle
        ledger = None
        if (version_dir / "ledger" / "ledger.json").is_file():
            ledger = Ledger.load(version_dir / "ledger", setup.fingerprint)
        erased = frozenset()
        if (version_dir / "clients.json").is_file():
            clients = json.loads((version_dir / "clients.json").read_text())["clients"]
            erased = frozenset(int(k) for k, v in clients.items() if v.get("erased"))
        return cls(setup, version_dir, ledger, read_blocks(bundle.model, setup.blocks), erased)

    # ----------------------------------------------------------------- targets
    @property
    def config(self) -> FederationConfig:
        return self.setup.config

    def check_target(self, target: ErasureTarget) -> None:
        clients = self.setup.clients
        if target.client not in clients:
            raise UnlearningError(f"unknown client {target.client}; this federation's clients are {clients}")
        if target.client in self.erased_clients:
            raise UnlearningError(f"client {target.client} was already erased from {self.version_dir}")
        if target.pair_ids is not None:
            if not target.pair_ids:
                raise UnlearningError("a samples erasure needs at least one pair id")
            own = set(self.setup.train.pair_ids[i] for i in self.setup.train.client_indices(target.client))
            foreign = [p for p in target.pair_ids if p not in own]
            if foreign:
                raise UnlearningError(
                    f"{len(foreign)} pair id(s) do not belong to client {target.client}, e.g. {foreign[:3]}"
                )
            if len(set(target.pair_ids)) == len(own):
                raise UnlearningError("the pair ids cover the whole client; erase the client instead (scope client)")

    def forget_items(self, target: ErasureTarget) -> np.ndarray:
        if target.pair_ids is None:
            return self.setup.client_items(target.client)
        return np.sort(np.asarray([self.setup.train.index_of(p) for p in target.pair_ids], dtype=np.int64))

    def retained_items_of(self, target: ErasureTarget) -> Callable[[int], np.ndarray]:
        """Each client's pairs once the target is gone (the forget client keeps the rest in samples scope)."""
        forget = set(self.forget_items(target).tolist())

        def items_of(client: int) -> np.ndarray:
            items = self.setup.client_items(client)
            return items if client != target.client else np.asarray([i for i in items if i not in forget], np.int64)

        return items_of

    def retained_clients(self, target: ErasureTarget) -> list[int]:
        if target.scope == "samples":
            return list(self.setup.clients)
        return [k for k in self.setup.clients if k != target.client]

    def retain_items(self, target: ErasureTarget) -> np.ndarray:
        items_of = self.retained_items_of(target)
        return np.concatenate([items_of(k) for k in self.retained_clients(target)])

    # ----------------------------------------------------------------- models
    def fresh_bundle(self) -> ClipBundle:
        """A copy of the original model to modify."""
        return self.setup.bundle.copy()

    def numbers_per_model(self) -> int:
        return blocks_numel(self.setup.blocks)

    def with_model(self, bundle: ClipBundle) -> FederationSetup:
        """The federation setup driving ``bundle`` (for methods that run FedAvg rounds)."""
        setup = copy.copy(self.setup)
        setup.bundle = bundle
        return setup

    def require_ledger(self, method: str) -> Ledger:
        if self.ledger is None:
            raise UnlearningError(
                f"{method} needs the contribution ledger, but {self.version_dir} has none; "
                "train the federation with ledger.enabled = true"
            )
        return self.ledger

    def reset_to_original(self, bundle: ClipBundle) -> None:
        write_blocks(bundle.model, self.setup.blocks, self.original_values)


class Timer:
    def __enter__(self) -> Timer:
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.began


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: type[BaseModel]
    unlearn: Callable[[UnlearningContext, ErasureTarget, BaseModel], UnlearningOutcome]
    summary: str
    scopes: tuple[str, ...] = ("client", "samples")
