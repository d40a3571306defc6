"""What Lethe's ServerApp and ClientApp say to each other, in Flower's Message records.

Server -> client (a ``train`` message):
    "arrays"  ArrayRecord   the global model's trainable blocks (``ParameterBlock.name`` ->
                            flat float32 values), the same blocks the ledger is kept over
    "config"  ConfigRecord  "lr", "round-index" (Lethe's 0-based round: it seeds the local
                            training), "model-fingerprint", and Flower's "server-round"

Client -> server (the reply):
    "arrays"  ArrayRecord   the client's trained blocks (not the difference: the server forms
                            Delta_k = local - global, as the built-in simulation does)
    "metrics" MetricRecord  "client-id" (the client's STABLE id, the key of its ledger record;
                            never Flower's node id, which changes when a SuperNode reconnects),
                            "num-examples" (n_k, the FedAvg weight), "loss", "steps", "samples", "train_seconds"

Replies are checked here, once, with messages that say which reply was wrong and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

from ease_engine.models.blocks import ParameterBlock

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
CLIENT_ID_KEY = "client-id"
NUM_EXAMPLES_KEY = "num-examples"
LR_KEY = "lr"
ROUND_INDEX_KEY = "round-index"
FINGERPRINT_KEY = "model-fingerprint"
LOCK_INTERVENTIONS_KEY = "lock-interventions"
LOCK_FAILED_CLOSED_KEY = "lock-failed-closed"
NODE_CLIENT_ID_KEY = "lethe-client-id"  # node config of a SuperNode in a deployment: its stable client id


class ReplyError(ValueError):
    """A client's reply cannot be aggregated: it breaks the protocol above (the message says how)."""


def blocks_to_arrays(values: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Block values (name -> tensor) as an ArrayRecord, bit for bit."""
    return ArrayRecord({name: Array(value.detach().cpu().contiguous().numpy()) for name, value in values.items()})


def arrays_to_blocks(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ArrayRecord as block values (name -> tensor), bit for bit."""
    return {name: torch.from_numpy(np.array(array.numpy(), copy=True)) for name, array in arrays.items()}


def check_block_arrays(values: Mapping[str, torch.Tensor], blocks: Sequence[ParameterBlock], origin: str) -> None:
    """``values`` holds exactly the model's trainable blocks, each with its number of elements."""
    expected = {b.name: b.numel for b in blocks}
    missing = sorted(set(expected) - set(values))
    unknown = sorted(set(values) - set(expected))
    if missing or unknown:
        raise ReplyError(
            f"{origin}: the arrays are not this model's trainable blocks "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unknown {unknown[:3]}{'...' if len(unknown) > 3 else ''}); "
            "client and server must build the same model from the same Lethe config"
        )
    for name, numel in expected.items():
        value = values[name]
        if value.numel() != numel or value.dtype != torch.float32:
            raise ReplyError(
                f"{origin}: block {name!r} has {value.numel()} {value.dtype} values, expected {numel} float32"
            )


@dataclass
class ClientReply:
    """One client's parsed training reply."""

    node_id: int
    client: int
    num_examples: int
    values: dict[str, torch.Tensor]
    metrics: dict[str, float]


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_reply(message: Message, blocks: Sequence[ParameterBlock], allowed_clients: Sequence[int]) -> ClientReply:
    """Check one reply (without error) against the protocol and return its contents."""
    node = message.metadata.src_node_id
    origin = f"reply from node {node}"
    content = message.content
    if ARRAYS_KEY not in content.array_records:
        raise ReplyError(f"{origin}: no ArrayRecord {ARRAYS_KEY!r} (found {sorted(content.array_records)})")
    if METRICS_KEY not in content.metric_records:
        raise ReplyError(f"{origin}: no MetricRecord {METRICS_KEY!r} (found {sorted(content.metric_records)})")
    metrics = dict(content.metric_records[METRICS_KEY])
    if CLIENT_ID_KEY not in metrics:
        raise ReplyError(
            f"{origin}: its metrics carry no {CLIENT_ID_KEY!r}; without the client's stable id its update "
            "cannot be recorded in the ledger (the ClientApp must report it)"
        )
    client = _integer(metrics[CLIENT_ID_KEY])
    if client is None or client not in allowed_clients:
        raise ReplyError(
            f"{origin}: {CLIENT_ID_KEY} {metrics[CLIENT_ID_KEY]!r} is not a client of this federation "
            f"(clients that may train: {list(allowed_clients)})"
        )
    num_examples = _integer(metrics.get(NUM_EXAMPLES_KEY))
    if num_examples is None or num_examples <= 0:
        raise ReplyError(f"{origin} (client {client}): {NUM_EXAMPLES_KEY} must be a positive integer, "
                         f"got {metrics.get(NUM_EXAMPLES_KEY)!r}")
    values = arrays_to_blocks(content.array_records[ARRAYS_KEY])
    check_block_arrays(values, blocks, f"{origin} (client {client})")
    other = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
    return ClientReply(node, client, num_examples, values, other)


def parse_replies(
    messages: Sequence[Message],
    blocks: Sequence[ParameterBlock],
    allowed_clients: Sequence[int],
    refused_clients: Sequence[int] = (),
) -> tuple[list[ClientReply], list[int]]:
    """Parse every reply; a client may answer once per round. Returns the replies to aggregate (sorted
    by client id) and the clients whose replies were set aside: ``refused_clients`` (erased or excluded
    clients whose SuperNode is still connected) never enter the model or the ledger."""
    replies, refused = [], []
    seen: dict[int, int] = {}
    for message in messages:
        reply = parse_reply(message, blocks, [*allowed_clients, *refused_clients])
        if reply.client in seen:
            raise ReplyError(
                f"client {reply.client} replied twice in one round (nodes {seen[reply.client]} and {reply.node_id}); "
                "two SuperNodes are configured with the same client id"
            )
        seen[reply.client] = reply.node_id
        if reply.client in refused_clients:
            refused.append(reply.client)
        else:
            replies.append(reply)
    return sorted(replies, key=lambda r: r.client), sorted(refused)
