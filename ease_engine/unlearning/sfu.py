"""SFU: gradient ascent orthogonal to the retained clients' representation subspace (Li et al. 2023).

"Subspace based federated unlearning": every retained client runs some of its data through the model and
sends, per layer, the matrix of that layer's INPUT representations (the activations the layer multiplies);
the server stacks them and keeps, by SVD, the subspace M_l they span (energy ``representation_energy``, the
Gradient Projection Memory recipe the paper builds on). The forget client then ascends its contrastive loss
with each weight's gradient projected off that subspace, g <- g - g M M^T, so the step leaves every retained
input's output unchanged to first order: ``(W + dW) x = W x`` for x in span(M). A few FedAvg rounds on the
retained clients (``repair_rounds``) repair what the ascent disturbed anyway.

What carries a representation here: every linear layer (MLP ``c_fc``/``c_proj``) and each attention's input
projection (``in_proj``: its input is the attention's query), in both towers, and the token embedding (its
"input" is a one-hot token: the rows the retained clients' captions use are held fixed; only rows of words
no retained client uses may move). Parameters without a layer input this project can observe (attention
``out_proj``, the towers' final projections, the patch convolution, biases, norms, positional embeddings)
are held fixed: moving them would change retained outputs in ways the subspace cannot bound. In LoRA mode
the input-side factor A is ascended with g_A <- g_A - g_A M M^T and B is held fixed, so dW = B dA stays off
the retained inputs.

Samples scope: the forget client's remaining pairs are retained data too (their representations join M);
the forget loss contrasts the erased pairs against them.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ease_engine.federation.training import derive_seed
from ease_engine.linalg.subspace import orthonormal_basis
from ease_engine.models.lora import is_parametrization_key
from ease_engine.unlearning.base import Cost, ErasureTarget, Timer, UnlearningContext, UnlearningOutcome
from ease_engine.unlearning.federated import retained_rounds
from ease_engine.unlearning.pga import AscentParams, gradient_ascent

MAX_ROWS_PER_CLIENT = 2048  # representation rows (tokens x pairs) a client contributes per layer


class SfuParams(AscentParams):
    """SFU settings: the representation subspace and the ascent's budget."""

    lr: float = Field(0.03, gt=0, description="SGD step size of the ascent (the equal-tuning winner)")
    representation_energy: float = Field(0.99, gt=0, le=1, description="energy of the retained representations "
                                         "kept in each layer's subspace M (GPM's threshold)")
    pairs_per_client: int = Field(64, ge=2, description="retained pairs per client whose layer inputs describe M")
    repair_rounds: int = Field(1, ge=0, description="FedAvg rounds on the retained data after the ascent")


def _layer_of(param_name: str) -> tuple[str, str] | None:
    """(module name, 'weight' | 'lora_A' | 'lora_B') of a parameter a representation covers, else None."""
    parts = param_name.split(".")
    if is_parametrization_key(param_name):
        i = parts.index("parametrizations")
        module, attr, factor = ".".join(parts[:i]), parts[i + 1], parts[-1]
        if factor not in ("lora_A", "lora_B"):
            return None
        return (module, factor) if attr in ("weight", "in_proj_weight") and not module.endswith("out_proj") else None
    module, attr = ".".join(parts[:-1]), parts[-1]
    if attr == "in_proj_weight" or (attr == "weight" and (module.endswith("c_fc") or module.endswith("c_proj"))):
        return module, "weight"
    return None


@torch.no_grad()
def representation_bases(context: UnlearningContext, target: ErasureTarget, params: SfuParams,
                         cost: Cost) -> tuple[dict[str, torch.Tensor], list[int]]:
    """M per layer (in_dim x k) from the retained clients' layer inputs, and the token rows they use."""
    setup = context.setup
    model = setup.bundle.model
    model.eval()
    modules = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.MultiheadAttention)
               and not name.endswith("out_proj")}
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    current: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def hook(name):
        def capture(_module, args, kwargs=None):
            x = args[0] if args else kwargs["query"]
            current[name].append(x.detach().reshape(-1, x.shape[-1]).float().cpu())
        return capture

    handles = [m.register_forward_pre_hook(hook(name), with_kwargs=True) for name, m in modules.items()]
    rng = np.random.default_rng(derive_seed(params.seed, 0x5F0))
    generator = torch.Generator().manual_seed(derive_seed(params.seed, 0x5F1))
    items_of = context.retained_items_of(target)
    used_tokens: set[int] = set()
    try:
        for client in context.retained_clients(target):
            pool = items_of(client)
            if len(pool) == 0:
                continue
            items = rng.choice(pool, size=min(params.pairs_per_client, len(pool)), replace=False)
            tokens = setup.captions.pick(items, generator)
            used_tokens.update(int(t) for t in torch.unique(setup.captions.tokens[_caption_rows(setup, items)]))
            model.encode_image(setup.bundle.image_batch(setup.train, items, setup.device))
            model.encode_text(tokens.to(setup.device))
            cost.client_samples += len(items)
            for name in modules:
                stacked = torch.cat(current[name]) if current[name] else torch.zeros(0, 1)
                if len(stacked) > MAX_ROWS_PER_CLIENT:
                    stacked = stacked[torch.from_numpy(rng.choice(len(stacked), MAX_ROWS_PER_CLIENT, replace=False))]
                rows[name].append(stacked)
                current[name] = []
    finally:
        for handle in handles:
            handle.remove()
    bases = {name: orthonormal_basis(torch.cat(parts).T, energy=params.representation_energy)
             for name, parts in rows.items() if parts and len(torch.cat(parts))}
    return bases, sorted(used_tokens)


def _caption_rows(setup, items: np.ndarray) -> torch.Tensor:
    """Every caption row of ``items`` in the tokenised caption table (a pair's words, all its captions)."""
    offsets = setup.captions.offsets
    return torch.from_numpy(np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in items]))


@torch.no_grad()
def project_off_representations(model: nn.Module, bases: dict[str, torch.Tensor], held_rows: list[int]) -> None:
    """Each covered gradient projected off its layer's subspace; every other gradient zeroed (held fixed)."""
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        if name == "token_embedding.weight":
            param.grad[held_rows] = 0
            continue
        layer = _layer_of(name)
        basis = bases.get(layer[0]) if layer else None
        if basis is None or layer[1] == "lora_B":
            param.grad.zero_()
            continue
        m = basis.to(device=param.grad.device, dtype=param.grad.dtype)
        param.grad.sub_((param.grad @ m) @ m.T)


def unlearn(context: UnlearningContext, target: ErasureTarget, params: SfuParams) -> UnlearningOutcome:
    context.check_target(target)
    cost = Cost()
    details: dict = {"scope": target.scope}
    with Timer() as timer:
        bundle = context.fresh_bundle()
        bases, held_rows = representation_bases(context, target, params, cost)
        bases = {name: u.to(context.device) for name, u in bases.items()}
        details["subspace"] = {"layers": len(bases), "rank": {name: int(u.shape[1]) for name, u in bases.items()},
                               "token_rows_held": len(held_rows)}
        cost.add_round(len(context.retained_clients(target)), 0)  # representations up (small, not counted)
        details["ascent"] = gradient_ascent(
            context, bundle, target, params, cost,
            after_backward=lambda model: project_off_representations(model, bases, held_rows),
        )
        cost.add_round(1, context.numbers_per_model())  # the model to the forget client and back
        if params.repair_rounds:
            start = context.config.training.rounds
            details["repair"] = retained_rounds(
                context, bundle, target, range(start, start + params.repair_rounds), lambda t: params.repair_lr, cost
            )
    return UnlearningOutcome(bundle, cost, timer.seconds, details=details)
