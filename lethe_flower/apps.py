"""The ServerApp and ClientApp for Flower's Deployment Engine (``flwr run`` to a SuperLink).

A Flower App (``deploy/flower/app/pyproject.toml``) names them as its components; both read the run
config (``[tool.flwr.app.config]``):

    lethe-config    path of the Lethe federation config (TOML/JSON), the same file on every machine
    out             the version directory the ServerApp writes (under the service's artifact dir)
    continue-from   a version to continue (its ledger and Forget Lock), or "" for a fresh model
    write-every     also write a version every N rounds (0: only at the end)

Every SuperNode says which client it is with ``--node-config 'lethe-client-id=K'``.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ease_engine.federation.config import load_config
from lethe_flower.client import RUN_CONFIG_PATH_KEY, make_client_app
from lethe_flower.strategy import LedgerStrategy

OUT_KEY = "out"
CONTINUE_FROM_KEY = "continue-from"
WRITE_EVERY_KEY = "write-every"
RUN_CONFIG_KEYS = (RUN_CONFIG_PATH_KEY, OUT_KEY, CONTINUE_FROM_KEY, WRITE_EVERY_KEY)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    missing = [key for key in (RUN_CONFIG_PATH_KEY, OUT_KEY) if not run_config.get(key)]
    if missing:
        raise ValueError(f"the run config lacks {missing} (see lethe_flower.apps)")
    config = load_config(str(run_config[RUN_CONFIG_PATH_KEY]))
    strategy = LedgerStrategy.from_config(
        config,
        str(run_config[OUT_KEY]),
        str(run_config.get(CONTINUE_FROM_KEY) or "") or None,
        write_every=int(run_config.get(WRITE_EVERY_KEY, 0)),
    )
    strategy.start(grid=grid)


client_app = make_client_app()
