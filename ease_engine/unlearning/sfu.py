"""SFU: gradient ascent orthogonal to the retained clients' subspace (Li et al. 2023).

"Subspace based federated unlearning": the forget client ascends its loss; the other
clients describe the input subspace their data occupies, the server merges those
descriptions by SVD, and the forget client's gradient is projected onto the orthogonal
complement of that subspace before each step, so the ascent moves the model only along
directions the retained clients do not use.

Adaptation. The paper builds the subspace from each layer's representation (activation)
matrices on the clients' data. This project already holds, per client and block, an
orthonormal basis U_k of the span of that client's updates with singular values S_k (the
ledger), so the retained subspace of block l is U_R = orth[U_k S_k : k retained]
(``ease_engine.linalg.subspace.orthonormal_basis``, truncated at ``retained_energy``),
and each block's ascent gradient becomes g <- g - U_R U_R^T g. No client has to send
anything for it. A block no retained client ever moved (a token only f's captions use) has
an empty U_R and is ascended freely.

Samples scope: the retained subspace includes the forget client's own basis, since its
remaining pairs stay (that basis also spans the erased pairs' directions, which makes the
samples-scope ascent conservative); the forget loss contrasts the erased pairs against the
client's remaining pairs. The ascent stops early once the forget loss reaches chance level
(see :mod:`ease_engine.unlearning.pga`), and ``repair_rounds`` FedAvg rounds on the
retained data may follow (off by default, as in the paper).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ease_engine.federation.exclusive import retained_support
from ease_engine.models.blocks import ParameterBlock
from ease_engine.unlearning.base import (
    Cost,
    ErasureTarget,
    Timer,
    UnlearningContext,
    UnlearningError,
    UnlearningOutcome,
)
from ease_engine.unlearning.federated import retained_rounds
from ease_engine.unlearning.pga import AscentParams, gradient_ascent


class SfuParams(AscentParams):
    """SFU settings: the retained subspace's energy and the ascent's budget."""

    retained_energy: float = Field(
        0.999, gt=0, le=1, description="energy of [U_k S_k] kept in the retained subspace U_R per block"
    )
    repair_rounds: int = Field(0, ge=0, description="FedAvg rounds on the retained data after the ascent")


def retained_subspaces(context: UnlearningContext, clients: list[int], energy: float) -> dict[str, torch.Tensor]:
    """U_R per block: orth[U_k S_k : k in clients]; blocks without any retained direction are left out."""
    out = {}
    for block in context.setup.blocks:
        u = retained_support(context.ledger, block.name, clients, energy)
        if u.shape[1]:
            out[block.name] = u
    return out


def project_out(gradient: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """g - U U^T g: the part of ``gradient`` (any shape, d elements) orthogonal to span(U) (d x r, orthonormal)."""
    g = gradient.reshape(-1)
    u = basis.to(device=g.device, dtype=g.dtype)
    return (g - u @ (u.T @ g)).reshape(gradient.shape)


@torch.no_grad()
def project_gradients_out(model: nn.Module, blocks: list[ParameterBlock], bases: dict[str, torch.Tensor]) -> None:
    """Replace each block's gradient by its projection onto the complement of its retained subspace."""
    params = dict(model.named_parameters())
    for block in blocks:
        basis = bases.get(block.name)
        grad = params[block.param].grad
        if basis is None or grad is None:
            continue
        if block.rows is None:
            grad.copy_(project_out(grad, basis))
        else:
            rows = list(block.rows)
            grad[rows] = project_out(grad[rows], basis)


def unlearn(context: UnlearningContext, target: ErasureTarget, params: SfuParams) -> UnlearningOutcome:
    ledger = context.require_ledger("sfu")
    context.check_target(target)
    if target.client not in ledger.clients:
        raise UnlearningError(f"client {target.client} never took part in training (ledger clients {ledger.clients})")
    cost = Cost()
    details: dict = {"scope": target.scope}
    with Timer() as timer:
        bundle = context.fresh_bundle()
        blocks = context.setup.blocks
        bases = retained_subspaces(context, context.retained_clients(target), params.retained_energy)
        device = context.device
        bases = {name: u.to(device) for name, u in bases.items()}
        details["subspace"] = {
            "blocks_with_retained_directions": len(bases),
            "free_blocks": len(blocks) - len(bases),
            "retained_rank": int(sum(u.shape[1] for u in bases.values())),
        }
        details["ascent"] = gradient_ascent(
            context,
            bundle,
            target,
            params,
            cost,
            after_backward=lambda model: project_gradients_out(model, blocks, bases),
        )
        cost.add_round(1, context.numbers_per_model())  # the model to the forget client and back
        if params.repair_rounds:
            start = context.config.training.rounds
            details["repair"] = retained_rounds(
                context, bundle, target, range(start, start + params.repair_rounds), lambda t: params.repair_lr, cost
            )
    return UnlearningOutcome(bundle, cost, timer.seconds, details=details)
