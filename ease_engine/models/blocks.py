"""Trainable parameters as named blocks: the unit EASE, the ledger and FedAvg work on.

A block is one trainable tensor (a weight matrix, a LoRA factor, a bias), seen as a flat
vector. The token embedding is the exception: a small model's 49,408-row vocabulary is
most of its parameters, but a federation's captions touch a few hundred rows. Each used
row is a block of its own (``token_embedding.weight[ROW]``); the other rows are frozen by
construction (no weight decay on embeddings and zero gradient, so AdamW never moves them),
which keeps them out of updates and out of the ledger. One block per token also lets EASE
see that a word only the departing client used (say "purple") is exclusive to it: no
other client's update ever touches that row.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

TOKEN_EMBEDDING = "token_embedding.weight"


@dataclass(frozen=True)
class ParameterBlock:
    param: str  # the parameter's name in model.named_parameters()
    shape: tuple[int, ...]  # shape of the block (rows selected) before flattening
    rows: tuple[int, ...] | None = None  # selected rows of an embedding; None = whole tensor

    @property
    def name(self) -> str:
        """Unique key of the block: the parameter name, with the row for embedding rows."""
        if self.rows is None:
            return self.param
        return f"{self.param}[{','.join(map(str, self.rows))}]"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_json(self) -> dict:
        return {"param": self.param, "shape": list(self.shape), "rows": None if self.rows is None else list(self.rows)}

    @classmethod
    def from_json(cls, data: dict) -> ParameterBlock:
        rows = data.get("rows")
        return cls(data["param"], tuple(data["shape"]), None if rows is None else tuple(rows))


def trainable_blocks(model: nn.Module, embedding_rows: Sequence[int] | None = None) -> list[ParameterBlock]:
    """One block per trainable parameter; the token embedding as one block per used row."""
    blocks = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name == TOKEN_EMBEDDING and embedding_rows is not None:
            for row in sorted({int(r) for r in embedding_rows}):
                blocks.append(ParameterBlock(name, (1, param.shape[1]), (row,)))
        else:
            blocks.append(ParameterBlock(name, tuple(param.shape)))
    return blocks


def _params(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def read_blocks(model: nn.Module, blocks: Sequence[ParameterBlock]) -> dict[str, torch.Tensor]:
    """Flat copies of each block's current values."""
    params = _params(model)
    out = {}
    for block in blocks:
        value = params[block.param].detach()
        if block.rows is not None:
            value = value[list(block.rows)]
        out[block.name] = value.reshape(-1).clone()
    return out


@contextmanager
def only_trainable(model: nn.Module, names: Collection[str]) -> Iterator[None]:
    """Inside the block, exactly the parameters named in ``names`` take gradients; each parameter's
    requires_grad is restored afterwards, also when the block raises (a frozen backbone stays frozen)."""
    named = dict(model.named_parameters())
    previous = {name: p.requires_grad for name, p in named.items()}
    try:
        for name, p in named.items():
            p.requires_grad_(name in names)
        yield
    finally:
        for name, p in named.items():
            p.requires_grad_(previous[name])


def block_gradients(grads: dict[str, torch.Tensor | None], blocks: Sequence[ParameterBlock]) -> dict[str, torch.Tensor]:
    """Each block's part of the parameters' gradients (``grads``: parameter name -> gradient or None), flat,
    float32 on the CPU; blocks whose parameter has no gradient are left out."""
    out = {}
    for block in blocks:
        grad = grads.get(block.param)
        if grad is not None:
            g = grad[list(block.rows)] if block.rows is not None else grad
            out[block.name] = g.reshape(-1).detach().to("cpu", dtype=torch.float32, copy=True)
    return out


@torch.no_grad()
def write_blocks(model: nn.Module, blocks: Sequence[ParameterBlock], values: dict[str, torch.Tensor]) -> None:
    """Set each block to the flat vector in ``values`` (other parameters untouched)."""
    params = _params(model)
    for block in blocks:
        param = params[block.param]
        value = values[block.name].to(param.device, param.dtype).reshape(block.shape)
        if block.rows is None:
            param.copy_(value)
        else:
            param[list(block.rows)] = value


@torch.no_grad()
def add_to_blocks(
    model: nn.Module, blocks: Sequence[ParameterBlock], deltas: dict[str, torch.Tensor], scale: float = 1.0
) -> None:
    """``theta_l += scale * delta_l`` for each block present in ``deltas``."""
    params = _params(model)
    for block in blocks:
        if block.name not in deltas:
            continue
        param = params[block.param]
        delta = (scale * deltas[block.name]).to(param.device, param.dtype).reshape(block.shape)
        if block.rows is None:
            param.add_(delta)
        else:
            param[list(block.rows)] += delta


def blocks_numel(blocks: Sequence[ParameterBlock]) -> int:
    return sum(b.numel for b in blocks)
