"""The original federation and its retrain reference per scenario and seed, trained once and cached.

    runs/bench/<scenario>/seed<S>-<key>/original                  the federation
    runs/bench/<scenario>/seed<S>-<key>/retrain-without-client<K>  the same schedule without client K
    runs/bench/<scenario>/seed<S>-<key>/retrain                   samples scope: without the subject's pairs

``key`` hashes the seeded config (its non-default values: adding a new config field with a default
keeps old caches valid), the erased pairs and, for a config that starts from a local weights file, that
file's sha256, so a changed config, target or backbone trains anew and a rerun costs nothing. The
retrain of a samples scenario trains on the client's data minus the subject's pairs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ease_engine.federation.config import FederationConfig
from ease_engine.federation.fedavg import prepare_federation, run_federation
from ease_engine.federation.training import EncodedCaptions
from ease_engine.models.factory import local_weights_path
from ease_engine.unlearning import ErasureTarget
from lethe_bench.pretrain import sha256
from lethe_bench.scenarios import Scenario
from lethe_format import layout

SUBJECT_SEED = 0  # the data subject's pairs are the same for every training seed


def config_key(config: FederationConfig, extra: object = None) -> str:
    payload = json.dumps([config.model_dump(mode="json", exclude_defaults=True), extra], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def subject_pairs(config: FederationConfig, client: int, n: int) -> list[str]:
    """A data subject: ``n`` seeded pairs of ``client``'s training pairs."""
    setup = prepare_federation(config)
    items = setup.client_items(client)
    chosen = np.sort(np.random.default_rng(SUBJECT_SEED).choice(items, size=min(n, len(items) - 1), replace=False))
    return [setup.train.pair_ids[i] for i in chosen]


@dataclass(frozen=True)
class References:
    original: Path
    retrain: Path
    target: ErasureTarget

    def retrain_seconds(self) -> float:
        return float(json.loads((self.retrain / layout.METADATA).read_text())["train_seconds"])

    def retrain_pairs_processed(self) -> int:
        """Pairs the retrain's clients trained on (forward and backward), over every round: its history."""
        return int(sum(entry["samples"] for entry in json.loads((self.retrain / layout.HISTORY).read_text())))


def _trained(path: Path) -> bool:
    return (path / layout.METRICS).is_file()


def backbone_digest(config: FederationConfig) -> str | None:
    """The pretrained backbone's sha256 where the config starts from a local weights file: the same path can hold
    other bytes (rebuilt on another CPU, or from another seed), and references trained on one are not the other's.
    A named file that is missing is an error (``ModelError``: build it first), never a key without its bytes."""
    path = local_weights_path(config.model)
    return None if path is None else sha256(path)


def reference_paths(root: Path, scenario: Scenario, seed: int, quick: bool = False) -> References:
    """Where a scenario-seed's references are cached (trained or not): keyed by the config, the data subject and
    the backbone's bytes."""
    config = scenario.config(seed, quick)
    pairs = subject_pairs(config, scenario.client, scenario.sample_pairs) if scenario.sample_pairs else None
    backbone = backbone_digest(config)
    if backbone is None:  # no local backbone: the keys stay what they always were
        key = config_key(config, pairs)
    else:  # the backbone's bytes, not the path it was read from (relative, absolute, another file name)
        by_bytes = config.model_copy(deep=True)
        by_bytes.model.pretrained = None
        key = config_key(by_bytes, [pairs, backbone])
    base = Path(root) / scenario.name / f"seed{seed}-{key}"
    # the original does not depend on whom the bench erases; a client's retrain does (a subject's is in the key)
    original, retrain = base / "original", base / ("retrain" if pairs else f"retrain-without-client{scenario.client}")
    return References(original, retrain, ErasureTarget(scenario.client, tuple(pairs) if pairs else None))


def references_cached(refs: References) -> bool:
    return _trained(refs.original) and _trained(refs.retrain)


def ensure_references(root: Path, scenario: Scenario, seed: int, quick: bool = False, log=print) -> References:
    refs = reference_paths(root, scenario, seed, quick)
    config, original, retrain = scenario.config(seed, quick), refs.original, refs.retrain
    pairs = list(refs.target.pair_ids) if refs.target.pair_ids else None
    if not _trained(original):
        began = time.perf_counter()
        run_federation(config, original, show_progress=False)
        log(f"{scenario.name} seed {seed}: original trained in {time.perf_counter() - began:.0f} s")
    if not _trained(retrain):
        began = time.perf_counter()
        if pairs is None:
            retrained = config.model_copy(deep=True)
            retrained.training.exclude_clients = [scenario.client]
            run_federation(retrained, retrain, show_progress=False)
        else:
            setup = prepare_federation(config)
            gone = set(pairs)
            keep = np.asarray([i for i, p in enumerate(setup.train.pair_ids) if p not in gone])
            setup.train = setup.train.subset(keep)
            setup.captions = EncodedCaptions.build(setup.bundle, setup.train)
            run_federation(config, retrain, show_progress=False, setup=setup)
        log(f"{scenario.name} seed {seed}: retrain trained in {time.perf_counter() - began:.0f} s")
    return refs
