"""FedAvg simulation with the contribution ledger, checkpoints and exact resume.

Round t: every sampled client k starts from theta^(t-1), trains ``local_epochs`` on its
pairs and returns Delta_k^t; the server sets theta^t = theta^(t-1) + sum_k p_k Delta_k^t
with p_k = n_k / sum of n over the round's participants. The ledger records p_k Delta_k^t.

After every round the global blocks, the ledger and the history are written to
``<out>.work/checkpoint`` in one atomic directory swap. A run that is killed resumes from
its last completed round; since all randomness is derived from (seed, round, client), it
ends with exactly the weights an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ease_engine.atomic import new_directory, write_json
from ease_engine.data.dataset import NO_CLIENT, CaptionDataset
from ease_engine.federation.config import FederationConfig
from ease_engine.federation.data_cache import FederationDataCache
from ease_engine.federation.ledger import Ledger
from ease_engine.federation.training import EncodedCaptions, derive_seed, train_local
from ease_engine.federation.update_store import StoredRound, save_round
from ease_engine.federation.version import (
    clients_index,
    federation_metadata,
    history_entry,
    write_federation_version,
)
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.blocks import (
    ParameterBlock,
    read_blocks,
    trainable_blocks,
    write_blocks,
)
from ease_engine.models.factory import ClipBundle, build_model

CHECKPOINT = "checkpoint"


class FederationError(RuntimeError):
    """The federation cannot run as configured; the message says what to change."""


@dataclass
class FederationSetup:
    """Everything a federation (or a method that continues one) needs, built once."""

    config: FederationConfig
    bundle: ClipBundle
    train: CaptionDataset  # the pairs clients train on
    calibration: CaptionDataset  # held-out pairs methods may use (owner in client_ids); never the audit split
    captions: EncodedCaptions
    blocks: list[ParameterBlock]
    fingerprint: str
    device: str = "cpu"  # where the model and every batch live (the config's training.device unless overridden)

    @property
    def clients(self) -> list[int]:
        return self.train.clients

    @property
    def test(self) -> CaptionDataset:
        """The global held-out pairs of the calibration split (the audit split is not here)."""
        return self.calibration.subset(self.calibration.client_indices(NO_CLIENT), name="test")

    def client_items(self, client: int) -> np.ndarray:
        items = self.train.client_indices(client)
        if len(items) == 0:
            raise FederationError(f"client {client} has no pairs (clients: {self.clients})")
        return items


def model_fingerprint(bundle: ClipBundle, blocks: list[ParameterBlock]) -> str:
    """Identifies the parameter space a ledger lives in: architecture, mode, init and blocks."""
    payload = {
        "model_cfg": bundle.model_cfg,
        "model": bundle.config.model_dump(mode="json"),
        "blocks": [b.to_json() for b in blocks],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def prepare_federation(
    config: FederationConfig,
    *,
    bundle: ClipBundle | None = None,
    device: str | None = None,
    data_cache: FederationDataCache | None = None,
) -> FederationSetup:
    """Data, model, tokenised captions and trainable blocks of a federation.

    ``bundle``: a model already loaded (a saved version), else one is built from ``config.model``
    (the federation's initialisation). ``device``: overrides ``config.training.device`` without
    changing the config. ``data_cache``: reuse data and tokenised captions across calls (a worker).
    """
    if config.training.threads:
        torch.set_num_threads(config.training.threads)
    device = device or config.training.device
    if bundle is None:
        bundle = build_model(config.model)
    bundle.model.to(device)
    cache = data_cache or FederationDataCache(capacity=0)
    data, captions = cache.get(config, bundle)
    rows = captions.token_ids().tolist() if config.model.mode == "full" else None
    blocks = trainable_blocks(bundle.model, rows)
    unknown = set(config.training.exclude_clients) - set(data.train.clients)
    if unknown:
        raise FederationError(
            f"exclude_clients names unknown clients {sorted(unknown)} (clients: {data.train.clients})"
        )
    return FederationSetup(config, bundle, data.train, data.calibration, captions, blocks,
                           model_fingerprint(bundle, blocks), device)


def learning_rate(config: FederationConfig, round_index: int) -> float:
    """Linear warm-up, then cosine from ``lr`` to ``lr_min`` over the remaining rounds."""
    tc = config.training
    if round_index < tc.warmup_rounds:
        return tc.lr * (round_index + 1) / (tc.warmup_rounds + 1)
    span = max(tc.rounds - tc.warmup_rounds - 1, 1)
    progress = (round_index - tc.warmup_rounds) / span
    return tc.lr_min + 0.5 * (tc.lr - tc.lr_min) * (1 + math.cos(math.pi * min(progress, 1.0)))


def round_participants(config: FederationConfig, clients: list[int], round_index: int) -> list[int]:
    pool = [k for k in clients if k not in set(config.training.exclude_clients)]
    if not pool:
        raise FederationError("every client is excluded; nothing to train")
    m = max(1, round(config.training.client_fraction * len(pool)))
    if m >= len(pool):
        return pool
    rng = np.random.default_rng(derive_seed(config.training.seed, round_index, 0xC11E))
    return sorted(int(k) for k in rng.choice(pool, size=m, replace=False))


class RoundAggregate:
    """The server side of one FedAvg round: theta^t = theta^(t-1) + sum_k p_k Delta_k^t.

    ``add`` takes one client's trained block values, forms its raw update against the round's
    start, filters it through the Forget Lock (if any), weights it by p_k = n_k / sum n and
    records the weighted update in the ledger (if any). ``result`` is the new global model.
    Clients must be added in a fixed order (the built-in simulation and the Flower strategy
    both add them in increasing client id) for runs to agree bit for bit.
    """

    def __init__(
        self,
        start: dict[str, torch.Tensor],
        sizes: dict[int, int],
        round_index: int,
        ledger: Ledger | None = None,
        lock: ForgetLock | None = None,
        keep_raw: bool = False,
    ) -> None:
        self.start = start
        self.sizes = sizes
        self.total = sum(sizes.values())
        self.round_index = round_index
        self.ledger = ledger
        self.lock = lock
        self.aggregate = {name: torch.zeros_like(v) for name, v in start.items()}
        self.raw_updates: dict[int, dict[str, torch.Tensor]] | None = {} if keep_raw else None
        self.weights: dict[int, float] = {}

    def add(self, client: int, local: dict[str, torch.Tensor]) -> dict:
        """Aggregate client ``client``'s trained values; returns its weight, the lock's interventions and how
        many of its blocks the lock failed closed (layers' bands that no update can satisfy together: the
        block lost its whole locked component; ``ForgetLock.failed_closed``)."""
        weight = self.sizes[client] / self.total
        start = self.start
        raw = {name: local[name] - start[name] for name in start}
        interventions = failed_closed = 0
        if self.lock is not None:
            closed_before = sum(self.lock.failed_closed.values())
            raw, counts = self.lock.apply_to_updates(raw, theta_current=start)
            raw = {name: v.to(start[name].dtype) for name, v in raw.items()}
            interventions = sum(counts.values())
            failed_closed = sum(self.lock.failed_closed.values()) - closed_before
        if self.raw_updates is not None:
            self.raw_updates[client] = raw
        weighted = {name: weight * delta for name, delta in raw.items()}
        for name, delta in weighted.items():
            self.aggregate[name] += delta
        if self.ledger is not None:
            self.ledger.record(client, self.round_index, weighted)
        self.weights[client] = weight
        return {"weight": weight, "lock_interventions": interventions, "lock_failed_closed": failed_closed}

    def result(self) -> dict[str, torch.Tensor]:
        return {name: self.start[name] + self.aggregate[name] for name in self.start}

    def save_updates(self, directory: Path) -> None:
        """Keep the round's raw (lock-filtered) updates and its start (see :mod:`update_store`)."""
        if self.raw_updates is None:
            raise ValueError("this round was aggregated without keep_raw=True; its raw updates are gone")
        save_round(directory, StoredRound(self.round_index, self.start, self.raw_updates, dict(self.weights)))


def fedavg_round(
    setup: FederationSetup,
    round_index: int,
    participants: list[int],
    lr: float,
    ledger: Ledger | None = None,
    items_of: Callable[[int], np.ndarray] | None = None,
    store_to: Path | None = None,
    lock: ForgetLock | None = None,
) -> dict:
    """One FedAvg round in place on ``setup.bundle.model``; returns per-client statistics.

    ``items_of`` gives each client's pairs (default: its partition); ``store_to`` keeps
    the round's raw updates there (see :mod:`update_store`); ``lock`` (an erased version's
    Forget Lock) filters every client update before aggregation and counts interventions.
    """
    model = setup.bundle.model
    items_of = items_of or setup.client_items
    start = read_blocks(model, setup.blocks)
    sizes = {k: len(items_of(k)) for k in participants}
    round_aggregate = RoundAggregate(start, sizes, round_index, ledger, lock, keep_raw=store_to is not None)
    stats = {}
    for k in participants:
        write_blocks(model, setup.blocks, start)
        result = train_client(setup, items_of(k), round_index, k, lr)
        stats[k] = {**result, **round_aggregate.add(k, read_blocks(model, setup.blocks))}
    write_blocks(model, setup.blocks, round_aggregate.result())
    if store_to is not None:
        round_aggregate.save_updates(store_to)
    return stats


def train_client(setup: FederationSetup, items: np.ndarray, round_index: int, client: int, lr: float) -> dict:
    """Client ``client``'s local training of round ``round_index`` on ``items``, in place on the model.

    The seed comes from (run seed, round, client): the built-in simulation and a Flower
    ClientApp train identically.
    """
    tc = setup.config.training
    return train_local(
        setup.bundle,
        setup.train,
        setup.captions,
        items,
        epochs=tc.local_epochs,
        batch_size=tc.batch_size,
        lr=lr,
        weight_decay=tc.weight_decay,
        seed=derive_seed(tc.seed, round_index, client),
        device=setup.device,
        amp=tc.amp,
    )


def _config_hash(config: FederationConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def _save_checkpoint(work: Path, setup: FederationSetup, ledger: Ledger | None, progress: dict) -> None:
    with new_directory(work / CHECKPOINT, overwrite=True) as tmp:
        values = read_blocks(setup.bundle.model, setup.blocks)
        save_file({k: v.contiguous() for k, v in values.items()}, str(tmp / "global.safetensors"))
        if ledger is not None:
            ledger.save(tmp / "ledger")
        write_json(tmp / "progress.json", progress)


def _load_checkpoint(work: Path, setup: FederationSetup) -> tuple[dict, Ledger | None] | None:
    path = work / CHECKPOINT
    if not (path / "progress.json").is_file():
        return None
    progress = json.loads((path / "progress.json").read_text())
    if progress["config_hash"] != _config_hash(setup.config):
        raise FederationError(
            f"{path} holds a run with a different config; delete {work} to start over, or use the same config"
        )
    write_blocks(setup.bundle.model, setup.blocks, load_file(str(path / "global.safetensors")))
    ledger = Ledger.load(path / "ledger", setup.fingerprint) if (path / "ledger").exists() else None
    return progress, ledger


def run_federation(
    config: FederationConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    show_progress: bool = True,
    stop_after_round: int | None = None,
    setup: FederationSetup | None = None,
) -> Path | None:
    """Train the federation and write the version directory ``out_dir``.

    ``stop_after_round`` ends the run after that round's checkpoint without writing the
    version (how tests simulate a killed run). Returns the version path, or None if stopped.
    """
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".work")
    tc = config.training
    setup = setup or prepare_federation(config)
    participants_all = [k for k in setup.clients if k not in tc.exclude_clients]
    ledger = None
    if config.ledger.enabled:
        sizes = {k: len(setup.train.client_indices(k)) for k in participants_all}
        ledger = Ledger(setup.blocks, participants_all, config.ledger, setup.fingerprint, sizes,
                        initial=read_blocks(setup.bundle.model, setup.blocks))
    history: list[dict] = []
    start_round = 0
    if resume:
        loaded = _load_checkpoint(work, setup)
        if loaded is not None:
            progress, ledger_loaded = loaded
            ledger = ledger_loaded if ledger is not None else None
            history = progress["history"]
            start_round = progress["rounds_completed"]
            if show_progress:
                print(f"resuming {out_dir.name} after round {start_round} of {tc.rounds}")
    elif work.exists():
        shutil.rmtree(work)

    began = time.perf_counter()
    bar = tqdm(
        range(start_round, tc.rounds),
        desc=f"federate {config.name}",
        disable=not show_progress,
        initial=start_round,
        total=tc.rounds,
    )
    for t in bar:
        t0 = time.perf_counter()
        lr = learning_rate(config, t)
        participants = round_participants(config, setup.clients, t)
        store = config.ledger.store_updates_every
        store_to = work / "updates" if store and t % store == 0 else None
        stats = fedavg_round(setup, t, participants, lr, ledger, store_to=store_to)
        entry = history_entry(setup, t, lr, participants, stats, time.perf_counter() - t0, ledger)
        loss = entry["loss"]
        history.append(entry)
        bar.set_postfix(loss=f"{loss:.3f}")
        _save_checkpoint(
            work,
            setup,
            ledger,
            {
                "rounds_completed": t + 1,
                "history": history,
                "config_hash": _config_hash(config),
            },
        )
        if stop_after_round is not None and t + 1 >= stop_after_round and t + 1 < tc.rounds:
            return None

    metadata = federation_metadata(setup, history, wall_seconds_this_process=time.perf_counter() - began)
    clients = clients_index(setup.train, list(tc.exclude_clients))
    write_federation_version(out_dir, setup, ledger, history, metadata, clients, work / "updates")
    shutil.rmtree(work, ignore_errors=True)
    return out_dir
