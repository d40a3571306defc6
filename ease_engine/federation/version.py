"""The version directory a federation writes, and its parts (one place for both engines).

The built-in FedAvg simulation (:func:`ease_engine.federation.fedavg.run_federation`) and the
Flower strategy (``lethe_flower``) both end by calling :func:`write_federation_version`, with
history lines from :func:`history_entry` and metadata from :func:`federation_metadata`, so a
version made by either is the same set of files and can be erased the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from ease_engine.atomic import new_directory, write_json
from ease_engine.data.dataset import CaptionDataset
from ease_engine.evaluation.evaluate import retrieval_metrics
from ease_engine.federation.config import FederationConfig
from ease_engine.federation.ledger import Ledger
from ease_engine.federation.update_store import store_nbytes
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.blocks import TOKEN_EMBEDDING, ParameterBlock, blocks_numel
from ease_engine.models.factory import ClipBundle
from ease_engine.models.version_io import write_model_files
from lethe_format import ClientsIndex, layout


class FederationSetup(Protocol):
    """What these functions read of a federation (``ease_engine.federation.fedavg.FederationSetup``; a protocol
    here, so that this module does not import fedavg, which imports it)."""

    config: FederationConfig
    bundle: ClipBundle
    blocks: list[ParameterBlock]
    fingerprint: str
    device: str

    @property
    def test(self) -> CaptionDataset: ...


def clients_index(train: CaptionDataset, excluded: list[int]) -> ClientsIndex:
    """``clients.json`` of a trained federation: each client's pair ids; excluded clients marked."""
    return ClientsIndex.from_pairs(
        {str(k): [train.pair_ids[i] for i in train.client_indices(k)] for k in train.clients},
        excluded=[str(k) for k in excluded],
    )


def history_entry(
    setup: FederationSetup,
    round_index: int,
    lr: float,
    participants: list[int],
    stats: dict[int, dict],
    seconds: float,
    ledger: Ledger | None,
) -> dict:
    """One line of history.json (the round's test metrics too, every ``eval_every`` rounds)."""
    tc = setup.config.training
    entry = {
        "round": round_index,
        "lr": lr,
        "loss": sum(s["loss"] * s["weight"] for s in stats.values()),
        "participants": participants,
        "samples": sum(s["samples"] for s in stats.values()),
        "steps": sum(s["steps"] for s in stats.values()),
        "train_seconds": sum(s["train_seconds"] for s in stats.values()),
        "seconds": seconds,
        "ledger_bytes": ledger.nbytes() if ledger else 0,
    }
    if tc.eval_every and (round_index + 1) % tc.eval_every == 0:
        entry["test"] = retrieval_metrics(setup.bundle, setup.test, setup.device)
    return entry


def federation_metadata(setup: FederationSetup, history: list[dict], **extra) -> dict:
    """metadata.json of a trained version: the config, the parameter space and what the training took."""
    config = setup.config
    return {
        "kind": "federation",
        "name": config.name,
        "config": config.model_dump(mode="json"),
        "model_fingerprint": setup.fingerprint,
        "trainable_parameters": blocks_numel(setup.blocks),
        "token_embedding_rows": sum(1 for b in setup.blocks if b.param == TOKEN_EMBEDDING and b.rows),
        "rounds": config.training.rounds,
        "train_seconds": sum(h["seconds"] for h in history),
        "samples_processed": sum(h["samples"] for h in history),
        **extra,
    }


def write_federation_version(
    out_dir: Path,
    setup: FederationSetup,
    ledger: Ledger | None,
    history: list[dict],
    metadata: dict,
    clients: ClientsIndex,
    updates_dir: Path | None = None,
    lock: ForgetLock | None = None,
) -> Path:
    """Write the version directory of a trained federation in one rename (replacing an older one).

    The model as it is in ``setup.bundle`` (open_clip ``local-dir:`` files), its test metrics
    (the calibration split's global held-out pairs, ``setup.test``), the ledger, ``clients.json``
    (``clients``, written by ``lethe_format``), the round history and, if ``updates_dir`` holds
    stored rounds, those too. ``lock``: the Forget Lock the federation ran under (a continued erased
    version's), kept so that the next continuation or erasure still holds it.
    """
    metrics = {"test": retrieval_metrics(setup.bundle, setup.test, setup.device)} if len(setup.test) else {}
    with new_directory(out_dir, overwrite=True) as tmp:
        if updates_dir is not None and updates_dir.is_dir():
            shutil.copytree(updates_dir, tmp / "updates")
            metadata = {**metadata, "stored_update_bytes": store_nbytes(tmp / "updates")}
        write_model_files(setup.bundle, tmp, metadata)
        if ledger is not None:
            ledger.save(tmp / "ledger")
        write_json(tmp / layout.CLIENTS, clients.to_json())
        write_json(tmp / layout.HISTORY, history)
        write_json(tmp / "metrics.json", metrics)
        if lock is not None:
            lock.save(tmp / layout.FORGET_LOCK_DIR)
    return Path(out_dir)


def read_version_lock(version_dir: Path) -> ForgetLock | None:
    """The Forget Lock a version holds, or None if it has no ``forget_lock/``; ValueError if that directory is
    there but the lock cannot be read (a missing manifest too: a lost lock must not pass as no lock)."""
    directory = version_dir / layout.FORGET_LOCK_DIR
    if not directory.exists():
        return None
    try:
        return ForgetLock.load(directory)
    except OSError as exc:
        raise ValueError(f"{Path(exc.filename or '').name or 'a file'} cannot be read ({exc.strerror})") from None
