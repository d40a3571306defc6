"""Federations small enough for tests: `lethe-micro` on one-object `scenes` at 32 px."""

from ease_engine.federation.config import FederationConfig


def tiny_federation_config(**training) -> FederationConfig:
    """3 clients x 3 short rounds: seconds; for tests of mechanics (not of learning)."""
    return FederationConfig.model_validate(
        {
            "name": "tiny",
            "data": {"scenes": {"n_train": 240, "n_test": 60, "seed": 3, "image_size": 32,
                                "object_count_weights": {1: 1.0}}},
            "partition": {"kind": "exclusive", "n_clients": 3, "n_shared_per_owner": 10, "seed": 1},
            "model": {"architecture": "lethe-micro"},
            "training": {"rounds": 3, "batch_size": 32, "lr": 5e-3, "threads": 1, **training},
            "ledger": {"rank_cap": 2, "store_updates_every": 1},
        }
    )


def gate_federation_config(**training) -> FederationConfig:
    """The smallest federation on which forgetting is measurable (about 35 s for it and its retrain on a busy
    machine): client 0 alone holds purple; the parent learns it (concept probe ~40% against the retrain's ~2%),
    and the ledger residual separates the parent (1.0) from the retrain reference (~0.6)."""
    return FederationConfig.model_validate(
        {
            "name": "gates",
            "data": {"scenes": {"n_train": 900, "n_test": 150, "seed": 3, "image_size": 32,
                                "object_count_weights": {1: 0.2, 2: 0.8}}},
            "partition": {"kind": "exclusive", "n_clients": 3, "n_shared_per_owner": 20, "seed": 1},
            "model": {"architecture": "lethe-micro"},
            "training": {"rounds": 24, "local_epochs": 2, "batch_size": 32, "lr": 2e-3, "lr_min": 2e-4,
                         "warmup_rounds": 0, "threads": 1, **training},
            "ledger": {"rank_cap": 8},
            "holdout": {"client_fraction": 0.2},
        }
    )
