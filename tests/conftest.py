import logging

import pytest

logging.getLogger().addFilter(lambda record: "No pretrained weights loaded" not in record.getMessage())


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Federation runs compared for bit-identical weights must use the same thread count."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory):
    """A trained tiny federation (3 clients, 3 rounds), shared by the tests that only read it."""
    from ease_engine.federation.fedavg import run_federation
    from tests.federation_helpers import tiny_federation_config

    config = tiny_federation_config()
    out = tmp_path_factory.mktemp("fed") / "v"
    run_federation(config, out, show_progress=False)
    return config, out


@pytest.fixture(scope="session")
def gate_versions(tmp_path_factory):
    """The gate-case federation (``gate_federation_config``) and its retrain reference without client 0."""
    from ease_engine.federation.fedavg import run_federation
    from tests.federation_helpers import gate_federation_config

    root = tmp_path_factory.mktemp("gates")
    original = run_federation(gate_federation_config(), root / "original", show_progress=False)
    retrain = run_federation(gate_federation_config(exclude_clients=[0]), root / "retrain", show_progress=False)
    return original, retrain
