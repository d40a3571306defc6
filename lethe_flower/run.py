"""Run a Lethe federation through Flower's Simulation Engine on this machine.

The clients are virtual SuperNodes (Ray actors) running :func:`make_client_app`; the server is a
ServerApp driving :class:`LedgerStrategy`. The result is the version directory ``out_dir``, the
same files ``lethe federate`` writes, ready for ``lethe erase`` and for registration with the service.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ease_engine.federation.config import FederationConfig
from lethe_flower.client import make_client_app
from lethe_flower.strategy import LedgerStrategy


class FlowerRunError(RuntimeError):
    """The Flower run did not produce a version; the message says why."""


def make_server_app(strategy: LedgerStrategy) -> ServerApp:
    """A ServerApp that runs ``strategy`` (its rounds, then its version)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid)

    return app


def simulation_backend(threads: int, cpus: int | None = None) -> dict:
    """Ray resources: each virtual SuperNode takes ``threads`` CPUs, so at most cpus // threads train at once."""
    cpus = cpus or os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": min(threads, cpus), "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False},
    }


def run_flower_federation(
    config: FederationConfig,
    out_dir: str | Path,
    continue_from: str | Path | None = None,
    *,
    threads: int | None = None,
    cpus: int | None = None,
    write_every: int = 0,
    show_progress: bool = True,
    shutdown_ray: bool = True,
    verbose: bool = False,
) -> Path:
    """Train ``config`` with Flower (clients as virtual SuperNodes) and write the version ``out_dir``.

    ``continue_from`` continues a version (its weights, ledger and Forget Lock; see
    :mod:`lethe_flower.lineage`). ``threads`` (default: the config's ``training.threads``, else this
    process's torch thread count) is every client's torch thread count: the built-in simulation
    run with the same count trains the same model. Every client failure stops the run. Flower's own
    INFO log (several lines a round) shows only with ``verbose``.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)

    out_dir = Path(out_dir)
    threads = threads or config.training.threads or torch.get_num_threads()

    def report(entry: dict) -> None:
        if show_progress:
            closed = entry["lock_failed_closed"]
            print(
                f"flower round {entry['round']}: loss {entry['loss']:.4f}, {len(entry['participants'])} clients, "
                f"{entry['lock_interventions']} lock interventions"
                + (f", {closed} client-update blocks failed closed (the lock's bands conflict)" if closed else "")
                + f", {entry['seconds']:.1f} s",
                flush=True,
            )

    strategy = LedgerStrategy.from_config(
        config, out_dir, continue_from, write_every=write_every, require_all_replies=True, on_round=report
    )
    lineage = strategy.lineage
    client_app = make_client_app(config, lineage.participants, threads, lineage.retained_pairs)
    began = time.perf_counter()
    try:
        run_simulation(
            server_app=make_server_app(strategy),
            client_app=client_app,
            num_supernodes=len(lineage.participants),
            backend_config=simulation_backend(threads, cpus),
        )
    finally:
        if shutdown_ray:
            import ray

            ray.shutdown()
    if len(strategy.history) != config.training.rounds or strategy.written != out_dir:
        raise FlowerRunError(
            f"the Flower run ended after {len(strategy.history)} of {config.training.rounds} rounds without writing "
            f"{out_dir}; see the log above"
        )
    if show_progress:
        print(f"flower federation: {len(strategy.history)} rounds in {time.perf_counter() - began:.1f} s", flush=True)
    return out_dir
