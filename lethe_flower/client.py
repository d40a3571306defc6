"""The ClientApp: local CLIP training on one client's pairs, exactly as the built-in simulation does it.

Each message carries the global trainable blocks, the learning rate and Lethe's round index;
the client writes the blocks into its model, runs :func:`ease_engine.federation.fedavg.train_client`
(seeded by (seed, round, client), so a Flower client and the built-in simulation produce the
same update bit for bit on the same thread count) and returns its trained blocks.

The federation's data and model are built once per process from the Lethe config (a Ray
actor in the Simulation Engine, a ClientApp process in a deployment) and reused every round.

Which client a SuperNode is: in a deployment its node config names it (``lethe-client-id``);
in the Simulation Engine the virtual SuperNode's ``partition-id`` p is the p-th client of
the list the simulation was started with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ease_engine.federation.config import FederationConfig, load_config
from ease_engine.federation.fedavg import FederationSetup, prepare_federation, train_client
from ease_engine.models.blocks import read_blocks, write_blocks
from lethe_flower.records import (
    ARRAYS_KEY,
    CLIENT_ID_KEY,
    CONFIG_KEY,
    FINGERPRINT_KEY,
    LR_KEY,
    METRICS_KEY,
    NODE_CLIENT_ID_KEY,
    NUM_EXAMPLES_KEY,
    ROUND_INDEX_KEY,
    ReplyError,
    arrays_to_blocks,
    blocks_to_arrays,
    check_block_arrays,
)

RUN_CONFIG_PATH_KEY = "lethe-config"  # run config of a deployment: path of the Lethe config on every machine

_SETUPS: dict[str, FederationSetup] = {}


class ClientConfigError(ValueError):
    """The ClientApp cannot tell which client it is or what to train; the message says what to set."""


def client_setup(config: FederationConfig) -> FederationSetup:
    """The federation's data and model for this process, built once per config."""
    key = config.model_dump_json()
    if key not in _SETUPS:
        _SETUPS.clear()
        _SETUPS[key] = prepare_federation(config)
    return _SETUPS[key]


def resolve_client(node_config: dict, clients: Sequence[int] | None) -> int:
    """This SuperNode's stable client id (see the module docstring)."""
    if NODE_CLIENT_ID_KEY in node_config:
        return int(node_config[NODE_CLIENT_ID_KEY])
    if "partition-id" in node_config and clients is not None:
        partition = int(node_config["partition-id"])
        if not 0 <= partition < len(clients):
            raise ClientConfigError(f"partition-id {partition} is outside the {len(clients)} clients {list(clients)}")
        return int(clients[partition])
    raise ClientConfigError(
        f"this SuperNode does not say which client it is: start it with --node-config '{NODE_CLIENT_ID_KEY}=K'"
    )


def client_items(setup: FederationSetup, client: int, retained_pairs: dict[int, list[str]]) -> np.ndarray:
    if client in retained_pairs:
        return np.sort(np.asarray([setup.train.index_of(p) for p in retained_pairs[client]], dtype=np.int64))
    return setup.client_items(client)


def train_message(
    message: Message,
    context: Context,
    config: FederationConfig,
    clients: Sequence[int] | None = None,
    threads: int | None = None,
    retained_pairs: dict[int, list[str]] | None = None,
) -> Message:
    """Handle one ``train`` message: train the global blocks on this client's pairs, reply with the result."""
    if threads:
        torch.set_num_threads(threads)
    setup = client_setup(config)
    client = resolve_client(dict(context.node_config), clients)
    if client not in setup.clients:
        raise ClientConfigError(f"client {client} is not a client of this federation ({setup.clients})")
    train_config: ConfigRecord = message.content.config_records[CONFIG_KEY]
    if train_config.get(FINGERPRINT_KEY) != setup.fingerprint:
        raise ClientConfigError(
            f"the server trains model {train_config.get(FINGERPRINT_KEY)}, this client's config builds "
            f"{setup.fingerprint}: give both the same Lethe config"
        )
    global_values = arrays_to_blocks(message.content.array_records[ARRAYS_KEY])
    try:
        check_block_arrays(global_values, setup.blocks, "the server's message")
    except ReplyError as exc:
        raise ClientConfigError(str(exc)) from None
    items = client_items(setup, client, retained_pairs or {})
    write_blocks(setup.bundle.model, setup.blocks, global_values)
    result = train_client(setup, items, int(train_config[ROUND_INDEX_KEY]), client, float(train_config[LR_KEY]))
    metrics = MetricRecord(
        {
            CLIENT_ID_KEY: int(client),
            NUM_EXAMPLES_KEY: len(items),
            "loss": float(result["loss"]),
            "steps": int(result["steps"]),
            "samples": int(result["samples"]),
            "train_seconds": float(result["train_seconds"]),
        }
    )
    trained = blocks_to_arrays(read_blocks(setup.bundle.model, setup.blocks))
    reply = RecordDict({ARRAYS_KEY: trained, METRICS_KEY: metrics})
    return Message(reply, reply_to=message)


def make_client_app(
    config: FederationConfig | None = None,
    clients: Sequence[int] | None = None,
    threads: int | None = None,
    retained_pairs: dict[int, list[str]] | None = None,
) -> ClientApp:
    """A ClientApp for this federation. Without ``config`` it reads the config file named by the
    run config key ``lethe-config`` (a deployment); ``clients`` maps simulation partitions to clients;
    ``threads`` fixes torch's CPU threads (use the built-in run's count to reproduce it bit for bit)."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        cfg = config
        if cfg is None:
            if RUN_CONFIG_PATH_KEY not in context.run_config:
                raise ClientConfigError(f"the run config has no {RUN_CONFIG_PATH_KEY!r} (path of the Lethe config)")
            cfg = load_config(Path(str(context.run_config[RUN_CONFIG_PATH_KEY])))
        return train_message(message, context, cfg, clients, threads or cfg.training.threads, retained_pairs)

    return app
