"""training.amp: bfloat16 autocast in the local training steps (off by default, and then nothing changes)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ease_engine.federation.config import FederationConfig
from ease_engine.federation.fedavg import prepare_federation
from ease_engine.federation.training import train_local
from tests.federation_helpers import tiny_federation_config


def mlp_output_dtypes(model) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    layer = next(module for name, module in model.named_modules() if name.endswith("mlp.c_fc"))
    layer.register_forward_hook(lambda _m, _i, output: seen.add(output.dtype))
    return seen


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_amp_runs_the_forward_pass_in_bfloat16_and_keeps_float32_weights(mode):
    results = {}
    for amp in (False, True):
        config = tiny_federation_config()
        config.model.mode = mode
        setup = prepare_federation(config)
        seen = mlp_output_dtypes(setup.bundle.model)
        before = {name: p.detach().clone() for name, p in setup.bundle.model.named_parameters() if p.requires_grad}
        result = train_local(setup.bundle, setup.train, setup.captions, setup.client_items(0), epochs=1,
                             batch_size=32, lr=1e-3, weight_decay=0.1, seed=0, device="cpu", amp=amp)
        after = dict(setup.bundle.model.named_parameters())
        assert result["steps"] > 0 and math.isfinite(result["loss"]) and result["train_seconds"] > 0
        assert all(after[name].dtype == torch.float32 for name in before)
        assert any(not torch.equal(before[name], after[name].detach()) for name in before)  # it trained
        results[amp] = (seen, result["loss"])
    assert results[False][0] == {torch.float32}  # negative control: without amp, no bfloat16
    assert results[True][0] == {torch.bfloat16}
    assert results[True][1] == pytest.approx(results[False][1], rel=0.05)  # same objective, bfloat16 rounding


def test_amp_is_off_by_default_and_absent_from_existing_configs():
    config = FederationConfig()
    assert config.training.amp is False
    dumped = config.model_dump_json()
    assert '"amp"' not in dumped  # configs (and checkpoint hashes) written before the option are unchanged
    assert FederationConfig.model_validate_json(dumped).model_dump_json() == dumped
    on = FederationConfig.model_validate({"training": {"amp": True}})
    assert json.loads(on.model_dump_json())["training"]["amp"] is True
    assert FederationConfig.model_validate(on.model_dump()).training.amp is True
    with pytest.raises(ValueError):
        FederationConfig.model_validate({"training": {"amp": "sometimes"}})
