"""Helpers of the Flower tests: a run through the loopback Grid, and differences between two versions."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from ease_engine.federation.ledger import Ledger
from lethe_flower.client import make_client_app
from lethe_flower.strategy import LedgerStrategy
from tests.flower.loopback import LoopbackGrid

WEIGHT_TOLERANCE = 1e-6  # absolute, float32 weights of order 0.1: a few units in the last place


def run_loopback(config, out, client_app=None, num_nodes=None, **strategy_kwargs) -> LedgerStrategy:
    """Flower's round loop with one in-process SuperNode per participant (or ``num_nodes``)."""
    strategy = LedgerStrategy.from_config(config, out, **strategy_kwargs)
    participants = strategy.lineage.participants
    app = client_app or make_client_app(config, participants, config.training.threads, strategy.lineage.retained_pairs)
    strategy.start(grid=LoopbackGrid(app, num_nodes or len(participants)))
    return strategy


def max_weight_difference(a, b) -> float:
    wa, wb = load_file(str(a / "open_clip_model.safetensors")), load_file(str(b / "open_clip_model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def max_ledger_difference(a, b, fingerprint) -> float:
    la, lb = Ledger.load(a / "ledger", fingerprint), Ledger.load(b / "ledger", fingerprint)
    assert la.clients == lb.clients
    worst = 0.0
    for k in la.clients:
        ra, rb = la.client(k), lb.client(k)
        assert ra.rounds == rb.rounds and ra.n_samples == rb.n_samples
        for name in ra.contribution:
            worst = max(worst, float((ra.contribution[name] - rb.contribution[name]).abs().max()))
            ua, ub = ra.basis[name], rb.basis[name]
            assert ua.shape == ub.shape, name
            if ua.numel():  # a basis is defined up to the signs of its columns
                signs = torch.sign((ua * ub).sum(dim=0))
                worst = max(worst, float((ua - ub * signs).abs().max()))
                worst = max(worst, float((ra.singular_values[name] - rb.singular_values[name]).abs().max()))
    return worst
