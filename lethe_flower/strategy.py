"""LedgerStrategy: Flower's FedAvg, aggregating as Lethe does, with the ledger and the Forget Lock.

Per round, ``aggregate_train``
1. checks every reply (:mod:`lethe_flower.records`): a stable client id, n_k, the model's blocks;
   sets aside the updates of erased or excluded clients whose SuperNodes still answer;
2. in increasing client id, forms Delta_k = local_k - global, filters it through the Forget Lock
   of the version the run continues from, weights it by p_k = n_k / sum n, records p_k Delta_k in
   the contribution ledger and adds it to the global model: the built-in simulation's
   :class:`~ease_engine.federation.fedavg.RoundAggregate`, the same code;
3. appends the round to the history (with the lock's interventions and the blocks it failed closed)
   and reports both as the Flower metrics ``lock-interventions`` and ``lock-failed-closed``.

At the end of :meth:`LedgerStrategy.start` (and every ``write_every`` rounds, as
``<out>-round-NNNN``) it writes a Lethe version directory with the engine's own writer, so the
service can register it and ``lethe erase`` can erase from it.

Sampling is Flower's (``fraction_train`` = the config's ``client_fraction``); with full
participation a Flower run and the built-in simulation train the same model.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from ease_engine.federation.config import FederationConfig
from ease_engine.federation.fedavg import FederationSetup, RoundAggregate, learning_rate, prepare_federation
from ease_engine.federation.version import federation_metadata, history_entry, write_federation_version
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.blocks import write_blocks
from lethe_flower.lineage import Lineage, check_lock_fits, continued_lineage, fresh_lineage
from lethe_flower.records import (
    FINGERPRINT_KEY,
    LOCK_FAILED_CLOSED_KEY,
    LOCK_INTERVENTIONS_KEY,
    LR_KEY,
    NUM_EXAMPLES_KEY,
    ROUND_INDEX_KEY,
    arrays_to_blocks,
    blocks_to_arrays,
    parse_replies,
)

log = logging.getLogger(__name__)


class RoundFailedError(RuntimeError):
    """A round cannot be aggregated (no usable reply, or a failed client where all must answer)."""


class LedgerStrategy(FedAvg):
    """FedAvg that keeps Lethe's contribution ledger, applies a Forget Lock and writes a Lethe version.

    ``setup`` is the federation built from the Lethe config (:func:`prepare_federation`); ``lineage``
    says where the run starts (default: the fresh model, with the config's ledger and no lock).
    ``require_all_replies`` turns a client's failure into an error instead of a round without it.
    Other keyword arguments go to Flower's FedAvg.
    """

    def __init__(
        self,
        setup: FederationSetup,
        out_dir: str | Path,
        lineage: Lineage | None = None,
        *,
        write_every: int = 0,
        require_all_replies: bool = False,
        on_round: Callable[[dict], None] | None = None,
        **fedavg_kwargs,
    ) -> None:
        tc = setup.config.training
        lineage = lineage or fresh_lineage(setup)
        fedavg_kwargs.setdefault("fraction_train", tc.client_fraction)
        fedavg_kwargs.setdefault("fraction_evaluate", 0.0)  # Lethe evaluates on the server's test split
        # Flower's FedAvg sizes its sample from the nodes connected *before* it waits for min_available_nodes:
        # SuperNodes still registering when round 1 starts would shrink it. A floor of the built-in
        # simulation's m = max(1, round(fraction * clients)) keeps every round at full size.
        n = len(lineage.participants)
        fedavg_kwargs.setdefault("min_available_nodes", n)
        fedavg_kwargs.setdefault("min_train_nodes", max(1, round(fedavg_kwargs["fraction_train"] * n)))
        super().__init__(**fedavg_kwargs)
        self.setup = setup
        self.out_dir = Path(out_dir)
        self.lineage = lineage
        self.write_every = write_every
        self.require_all_replies = require_all_replies
        self.on_round = on_round
        self.history: list[dict] = []
        self.work = self.out_dir.with_name(self.out_dir.name + ".work")
        self._round_started: dict[int, float] = {}
        self._round_start_arrays: ArrayRecord | None = None
        self._round_sent = 0
        self.written: Path | None = None
        self._began = time.perf_counter()
        write_blocks(setup.bundle.model, setup.blocks, lineage.values)

    @classmethod
    def from_config(
        cls,
        config: FederationConfig,
        out_dir: str | Path,
        continue_from: str | Path | None = None,
        *,
        lock: ForgetLock | None = None,
        **kwargs,
    ) -> LedgerStrategy:
        """Build the federation from ``config``; continue from a version (its ledger and Forget Lock), or start
        fresh. ``lock`` adds its layers to the continued version's lock (or to a fresh run); an empty lock runs
        unfiltered (a control). The version written keeps the continued version's lock either way
        (``Lineage.lock_to_keep``)."""
        setup = prepare_federation(config)
        if continue_from is None:
            lineage = fresh_lineage(setup, lock)
        else:
            lineage = continued_lineage(setup, continue_from)
            if lock is not None:
                check_lock_fits(lock, setup)
                # a lock with layers joins the inherited one (the inherited directions stay guarded); an empty
                # lock runs the federation unfiltered (a control), while the version still keeps the inherited
                lineage.lock = ForgetLock.chained(lineage.inherited_lock, lock) if len(lock) else lock
        return cls(setup, out_dir, lineage, **kwargs)

    # ------------------------------------------------------------------ Flower's hooks
    @property
    def rounds(self) -> int:
        return self.setup.config.training.rounds

    def round_index(self, server_round: int) -> int:
        """Lethe's round index (seeds, ledger) of Flower's ``server_round`` (1-based)."""
        return self.lineage.first_round + server_round - 1

    def initial_arrays(self) -> ArrayRecord:
        return blocks_to_arrays(self.lineage.values)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_started[server_round] = time.perf_counter()
        config = ConfigRecord(
            {
                **config,
                LR_KEY: learning_rate(self.setup.config, server_round - 1),
                ROUND_INDEX_KEY: self.round_index(server_round),
                FINGERPRINT_KEY: self.setup.fingerprint,
            }
        )
        self._round_start_arrays = arrays
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._round_sent = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        for m in failed:
            log.warning("round %d: node %d failed: %s", server_round, m.metadata.src_node_id, m.error.reason)
        if failed and self.require_all_replies:
            reasons = "; ".join(f"node {m.metadata.src_node_id}: {m.error.reason}" for m in failed)
            raise RoundFailedError(f"round {server_round}: {len(failed)} client(s) failed ({reasons})")
        if self.require_all_replies and len(replies) < self._round_sent:
            raise RoundFailedError(
                f"round {server_round}: {self._round_sent - len(replies)} of {self._round_sent} clients did not "
                "answer before the timeout"
            )
        answered = [m for m in replies if not m.has_error()]
        lineage = self.lineage
        parsed, refused = parse_replies(answered, self.setup.blocks, lineage.participants, lineage.refused)
        if refused:
            log.warning("round %d: updates of clients %s set aside (erased or excluded; stop their SuperNodes)",
                        server_round, refused)
        if not parsed:
            raise RoundFailedError(f"round {server_round}: no client returned an update")
        t = self.round_index(server_round)
        lr = learning_rate(self.setup.config, server_round - 1)
        store = self.setup.config.ledger.store_updates_every
        keep_raw = bool(store) and t % store == 0
        if self._round_start_arrays is None:
            raise RoundFailedError(f"round {server_round}: aggregate_train without configure_train")
        start = arrays_to_blocks(self._round_start_arrays)
        sizes = {r.client: r.num_examples for r in parsed}
        aggregate = RoundAggregate(start, sizes, t, self.lineage.ledger, self.lineage.lock, keep_raw=keep_raw)
        stats = {}
        for reply in parsed:
            stats[reply.client] = {
                "loss": reply.metrics.get("loss", float("nan")),
                "samples": int(reply.metrics.get("samples", reply.num_examples)),
                "steps": int(reply.metrics.get("steps", 0)),
                "train_seconds": float(reply.metrics.get("train_seconds", 0.0)),
                **aggregate.add(reply.client, reply.values),
            }
        new_values = aggregate.result()
        write_blocks(self.setup.bundle.model, self.setup.blocks, new_values)
        if keep_raw:
            aggregate.save_updates(self.work / "updates")
        interventions = sum(s["lock_interventions"] for s in stats.values())
        failed_closed = sum(s["lock_failed_closed"] for s in stats.values())
        seconds = time.perf_counter() - self._round_started.pop(server_round, time.perf_counter())
        entry = history_entry(self.setup, t, lr, sorted(stats), stats, seconds, self.lineage.ledger)
        entry["lock_interventions"] = interventions
        entry["lock_failed_closed"] = failed_closed
        entry["failed_clients"] = len(failed)
        entry["refused_clients"] = refused
        self.history.append(entry)
        if self.on_round is not None:
            self.on_round(entry)
        if self.write_every and server_round % self.write_every == 0 and server_round < self.rounds:
            self.write_version(self.out_dir.with_name(f"{self.out_dir.name}-round-{server_round:04d}"))
        metrics = MetricRecord(
            {
                "loss": float(entry["loss"]),
                NUM_EXAMPLES_KEY: int(sum(sizes.values())),
                LOCK_INTERVENTIONS_KEY: int(interventions),
                LOCK_FAILED_CLOSED_KEY: int(failed_closed),
                "clients": len(parsed),
            }
        )
        return blocks_to_arrays(new_values), metrics

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run the config's rounds (``training.rounds``), then write the version to ``out_dir``."""
        if num_rounds is not None and num_rounds != self.rounds:
            raise ValueError(
                f"the Lethe config fixes the rounds (training.rounds = {self.rounds}); got num_rounds={num_rounds}"
            )
        self._began = time.perf_counter()
        result = super().start(
            grid,
            initial_arrays if initial_arrays is not None else self.initial_arrays(),
            num_rounds=self.rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )
        self.write_version(self.out_dir)
        shutil.rmtree(self.work, ignore_errors=True)
        return result

    # ------------------------------------------------------------------ the version
    def write_version(self, out_dir: Path) -> Path:
        """Write the model as it is now, with the ledger and the rounds so far, as a Lethe version."""
        lineage = self.lineage
        metadata = federation_metadata(
            self.setup,
            self.history,
            engine="flower",
            rounds=len(self.history),
            first_round=lineage.first_round,
            rounds_total=lineage.first_round + len(self.history),
            continued_from=lineage.parent.name if lineage.parent else None,
            lock_interventions=sum(h["lock_interventions"] for h in self.history),
            lock_failed_closed=sum(h["lock_failed_closed"] for h in self.history),
            wall_seconds_this_process=time.perf_counter() - self._began,
        )
        written = write_federation_version(
            out_dir, self.setup, lineage.ledger, self.history, metadata, lineage.clients, self.work / "updates",
            lock=lineage.lock_to_keep(),
        )
        self.written = written
        return written
