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


def learned_federation_config(**training) -> FederationConfig:
    """Enough steps (10 rounds x 8 local epochs) that retrieval and client 0's concept are learned."""
    config = tiny_federation_config(rounds=10, local_epochs=8, lr=2e-3, lr_min=2e-4, warmup_rounds=0, **training)
    config.data.scenes.n_train = 300
    config.ledger.rank_cap = 4
    return config
