"""Stored per-round updates: what calibration methods such as FedEraser replay.

The ledger keeps bounded summaries; this store keeps, for every N-th round, the global
model at the start of the round and each participating client's raw update Delta_k^t. Its
size grows linearly with rounds, so it is off unless ``ledger.store_updates_every`` is set,
and the version's metadata states its bytes.

    updates/round-NNNN.safetensors   ``global/<block>``, ``client-<k>/<block>``; metadata: weights
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from ease_engine.atomic import write_bytes


@dataclass
class StoredRound:
    round_index: int
    global_start: dict[str, torch.Tensor]
    updates: dict[int, dict[str, torch.Tensor]]  # raw Delta_k^t per client
    weights: dict[int, float]  # p_k used in that round


def round_path(directory: Path, round_index: int) -> Path:
    return Path(directory) / f"round-{round_index:04d}.safetensors"


def save_round(directory: Path, stored: StoredRound) -> None:
    tensors = {f"global/{name}": v.contiguous() for name, v in stored.global_start.items()}
    for k, update in stored.updates.items():
        tensors.update({f"client-{k}/{name}": v.contiguous() for name, v in update.items()})
    metadata = {"round": str(stored.round_index), "weights": json.dumps({str(k): w for k, w in stored.weights.items()})}
    write_bytes(round_path(directory, stored.round_index), save(tensors, metadata=metadata))


def load_rounds(directory: Path) -> list[StoredRound]:
    """Every stored round, in round order (empty if none were stored)."""
    out = []
    for path in sorted(Path(directory).glob("round-*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            weights = {int(k): float(w) for k, w in json.loads(meta["weights"]).items()}
            global_start, updates = {}, {k: {} for k in weights}
            for key in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                head, _, name = key.partition("/")
                if head == "global":
                    global_start[name] = fh.get_tensor(key)
                else:
                    updates[int(head.removeprefix("client-"))][name] = fh.get_tensor(key)
        out.append(StoredRound(int(meta["round"]), global_start, updates, weights))
    return out


def store_nbytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("round-*.safetensors"))
