"""Low-rank adapters for any weight matrix, through torch parametrizations.

A parametrization replaces ``module.weight`` with ``W + (alpha / r) * B @ A`` on every
access, so it works for ``nn.Linear`` and for ``nn.MultiheadAttention.in_proj_weight``
alike, without knowing how open_clip builds its blocks. ``B`` starts at zero: a freshly
adapted model computes exactly what the base model computes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

LORA_FACTORS = ("lora_A", "lora_B")


class LoRA(nn.Module):
    """``weight -> weight + scale * B @ A`` with A (r x in) and B (out x r)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.rank = min(rank, out_features, in_features)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(self.rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, self.rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A).to(weight.dtype)


def lora_target_names(model: nn.Module) -> list[str]:
    """Names of the 2-D weights that get adapters: every matrix of both towers except embeddings."""
    targets = []
    for name, param in model.named_parameters():
        if param.ndim == 2 and "embedding" not in name and not is_parametrization_key(name):
            targets.append(name)
    return targets


def add_lora(model: nn.Module, rank: int, alpha: float, generator_seed: int = 0) -> list[str]:
    """Freeze ``model`` and put a LoRA adapter on every target weight; returns the targets."""
    targets = lora_target_names(model)
    for param in model.parameters():
        param.requires_grad_(False)
    devices = {p.device for p in model.parameters()}
    state = torch.random.get_rng_state()
    torch.manual_seed(generator_seed)
    try:
        for name in targets:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            out_f, in_f = getattr(module, attr).shape
            adapter = LoRA(out_f, in_f, rank, alpha).to(next(iter(devices)))
            parametrize.register_parametrization(module, attr, adapter)
    finally:
        torch.random.set_rng_state(state)
    return targets


def is_lora_model(model: nn.Module) -> bool:
    return any(isinstance(m, LoRA) for m in model.modules())


def is_parametrization_key(name: str) -> bool:
    return name.startswith("parametrizations.") or ".parametrizations." in name


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict plain open_clip expects: adapters folded into their weights."""
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if not is_parametrization_key(name):
            merged[name] = tensor.detach().clone()
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations:
                key = f"{module_name}.{attr}" if module_name else attr
                merged[key] = getattr(module, attr).detach().clone()
    return merged
