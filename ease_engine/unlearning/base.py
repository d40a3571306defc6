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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from ease_engine.federation.config import ConfigError, FederationConfig, version_config
from ease_engine.federation.data_cache import FederationDataCache
from ease_engine.federation.fedavg import FederationSetup, prepare_federation
from ease_engine.federation.ledger import Ledger
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.blocks import blocks_numel, read_blocks, write_blocks
from ease_engine.models.factory import ClipBundle
from ease_engine.models.version_io import load_version
from lethe_format import ClientsIndex, FormatError, TargetError, layout, read_clients

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
    # samples scope: what was excised from the weights on the target client's behalf, per block; the new
    # version's ledger no longer counts it in that client's contribution (``Ledger.debited``)
    ledger_debit: dict[str, torch.Tensor] | None = None


@dataclass
class UnlearningContext:
    setup: FederationSetup  # setup.bundle holds the ORIGINAL weights; do not modify
    version_dir: Path
    ledger: Ledger | None
    original_values: dict[str, torch.Tensor]
    clients: ClientsIndex  # the version's clients.json: who is still in it, which pairs remain
    on_stage: Callable[[str, float], None] = field(default=lambda stage, progress: None)
    _live: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def report_stage(self, stage: str, progress: float) -> None:
        """Methods call this as they move on (``excising``, ``displacing``): the worker shows it."""
        self.on_stage(stage, progress)

    @classmethod
    def load(
        cls, version_dir: str | Path, device: str = "cpu", data_cache: FederationDataCache | None = None
    ) -> UnlearningContext:
        """Load a version once: its model (built once, on ``device``), the federation's data (from
        ``data_cache`` when given), the ledger and clients.json."""
        version_dir = Path(version_dir)
        try:
            config = version_config(version_dir)
            clients = read_clients(version_dir)
        except (ConfigError, FormatError) as exc:
            raise UnlearningError(f"{version_dir}: {getattr(exc, 'message', exc)}") from None
        bundle, _ = load_version(version_dir, device)
        setup = prepare_federation(config, bundle=bundle, device=device, data_cache=data_cache)
        ledger = None
        if (version_dir / layout.LEDGER_DIR / "ledger.json").is_file():
            ledger = Ledger.load(version_dir / layout.LEDGER_DIR, setup.fingerprint)
        return cls(setup, version_dir, ledger, read_blocks(bundle.model, setup.blocks), clients)

    # ----------------------------------------------------------------- targets
    @property
    def config(self) -> FederationConfig:
        return self.setup.config

    @property
    def device(self) -> str:
        return self.setup.device

    @property
    def erased_clients(self) -> frozenset[int]:
        return frozenset(int(k) for k in self.clients.erased_clients())

    def check_target(self, target: ErasureTarget) -> None:
        """The format's one target rule (``lethe_format``), plus: the client's data is in the federation."""
        try:
            self.clients.check_target(target.scope, str(target.client), target.pair_ids, where=self.version_dir.name)
        except TargetError as exc:
            raise UnlearningError(exc.message) from None
        if target.client not in self.setup.clients:
            raise UnlearningError(f"client {target.client} has no data in this federation ({self.setup.clients})")

    def live_items(self, client: int) -> np.ndarray:
        """The client's pairs still in the version (none once erased; without those a samples erasure took)."""
        if client not in self._live:
            entry = self.clients.entry(str(client))
            items = self.setup.train.client_indices(client)
            if entry is None or not entry.live:
                items = np.zeros(0, dtype=np.int64)
            elif entry.pair_ids or entry.erased_pair_hashes:
                keep = self.clients.pair_set(str(client))
                items = np.asarray([i for i in items if self.setup.train.pair_ids[i] in keep], dtype=np.int64)
            self._live[client] = items
        return self._live[client]

    def forget_items(self, target: ErasureTarget) -> np.ndarray:
        if target.pair_ids is None:
            return self.live_items(target.client)
        return np.sort(np.asarray([self.setup.train.index_of(p) for p in target.pair_ids], dtype=np.int64))

    def retained_items_of(self, target: ErasureTarget) -> Callable[[int], np.ndarray]:
        """Each client's pairs once the target is gone (the forget client keeps the rest in samples scope)."""
        forget = set(self.forget_items(target).tolist())

        def items_of(client: int) -> np.ndarray:
            items = self.live_items(client)
            return items if client != target.client else np.asarray([i for i in items if i not in forget], np.int64)

        return items_of

    def retained_clients(self, target: ErasureTarget) -> list[int]:
        """The clients that keep training after the erasure (erased and excluded clients are gone)."""
        live = [k for k in self.setup.clients if len(self.live_items(k))]
        return live if target.scope == "samples" else [k for k in live if k != target.client]

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
