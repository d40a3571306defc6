"""Lethe on Flower: a strategy that keeps the contribution ledger and enforces the Forget Lock.

Needs ``flwr`` (``pip install -e ".[flower]"``); the engine (``ease_engine``) never imports this package.

- :class:`LedgerStrategy` (``lethe_flower.strategy``): Flower's FedAvg that records every client's
  weighted update in Lethe's ledger, filters updates through an erased version's Forget Lock and
  writes a Lethe version directory.
- :func:`make_client_app` (``lethe_flower.client``): local CLIP training, as the built-in simulation.
- :func:`run_flower_federation` (``lethe_flower.run``): the whole federation in Flower's Simulation Engine.
"""

from lethe_flower.client import make_client_app
from lethe_flower.records import ReplyError
from lethe_flower.strategy import LedgerStrategy, RoundFailedError

__all__ = ["LedgerStrategy", "ReplyError", "RoundFailedError", "make_client_app", "run_flower_federation"]


def __getattr__(name: str):
    if name == "run_flower_federation":
        from lethe_flower.run import run_flower_federation

        return run_flower_federation
    raise AttributeError(name)
