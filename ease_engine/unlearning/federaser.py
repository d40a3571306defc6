"""FedEraser: replay the stored rounds with calibrated updates (Liu et al. 2021).

The federation stored, every ``ledger.store_updates_every`` (dt) rounds, the global model
at the start of the round and each client's raw update U_old_k (see
:mod:`ease_engine.federation.update_store`). FedEraser rebuilds the model without the
forget client f:

1. new_global starts at the first stored round's starting global model (round 0, the
   initialisation, whenever updates were stored at all).
2. For each stored round t in order, each retained client k that took part trains from
   new_global for ``calibration_ratio`` (r) x local_epochs epochs, giving U_new_k.
3. Calibration per block: U_cal_k = |U_old_k| * U_new_k / |U_new_k|: the direction the
   client would take now, with the step length it took then. A block whose old or new
   norm is zero (a token row only f's captions use, a frozen parameter) or that is not a
   floating tensor is skipped (no update), not divided by zero (FIELD-NOTES).
4. new_global += sum_k q_k U_cal_k, with q_k the stored round's weights p_k renormalised
   over the retained participants.

Rounds between stored rounds. FedEraser keeps updates only every dt rounds and replays
only those; each stored round stands for its span of dt rounds (the rounds up to the next
stored round, or to the end of training). ``span = "scaled"`` (default) applies the
calibrated aggregate of round t once per round of its span (i.e. multiplied by the span
length), so the rebuilt trajectory covers the whole schedule with one calibration per
stored round; ``span = "once"`` applies it once (the rebuilt model then takes T / dt steps
and lands short of a full schedule). With dt = 1 both are the same.

Fractional epochs. r x E is usually fractional (0.5 by default); ``train_local`` runs whole
epochs. We run ceil(r E) epochs over a seeded random subset of round(r E / ceil(r E) * n_k)
of the client's pairs (at least two), so every client processes r E n_k pairs in one local
optimisation (one optimiser, the round's learning rate, batch size and weight decay).

Samples scope: the forget client stays and calibrates with its remaining pairs; its old
update still sets the step length, and its weight p_f is scaled by the share of pairs it
keeps before renormalising (what FedAvg would have given it without the erased pairs).

Costs: every replayed round is a communication round with its retained participants
(model down, update up); client samples count the pairs of the calibration training.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ease_engine.federation.fedavg import learning_rate
from ease_engine.federation.training import derive_seed, train_local
from ease_engine.federation.update_store import StoredRound, load_rounds
from ease_engine.models.blocks import read_blocks, write_blocks
from ease_engine.unlearning.base import (
    Cost,
    ErasureTarget,
    Timer,
    UnlearningContext,
    UnlearningError,
    UnlearningOutcome,
)


class FedEraserParams(BaseModel):
    """FedEraser settings; the paper calibrates with r = 0.5, the equal tuning chose r = 1.0."""

    model_config = ConfigDict(extra="forbid")

    calibration_ratio: float = Field(
        1.0, gt=0, le=1, description="r: calibration training runs r x local_epochs epochs (the paper's 0.5; 1.0 won "
        "the equal tuning, docs/benchmarks.md)"
    )
    span: Literal["scaled", "once"] = Field(
        "once",
        description="apply each stored round's calibrated aggregate once per round up to the next stored round "
        "(scaled) or only once",
    )
    seed: int = Field(0, description="seed of the calibration subsets and local batches")


# ---------------------------------------------------------------------- calibration
def calibrate(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """|old| * new / |new| per block; returns (calibrated blocks, names of skipped blocks).

    A block is skipped (absent from the result: no update) when it is missing from ``new``,
    is not a floating tensor in either, or has a zero or non-finite norm in either.
    """
    out, skipped = {}, []
    for name, u_old in old.items():
        u_new = new.get(name)
        if u_new is None or not (u_old.is_floating_point() and u_new.is_floating_point()):
            skipped.append(name)
            continue
        n_old = float(torch.linalg.vector_norm(u_old.double()))
        n_new = float(torch.linalg.vector_norm(u_new.double()))
        if not (n_old > 0 and n_new > 0 and math.isfinite(n_old) and math.isfinite(n_new)):
            skipped.append(name)
            continue
        out[name] = (u_new.double() * (n_old / n_new)).to(u_new.dtype)
    return out, skipped


def round_spans(round_indices: list[int], total_rounds: int) -> list[int]:
    """How many training rounds each stored round stands for (up to the next one, or the end)."""
    ends = [*round_indices[1:], max(total_rounds, round_indices[-1] + 1)]
    return [end - start for start, end in zip(round_indices, ends, strict=True)]


def calibration_plan(n_items: int, epochs: float) -> tuple[int, int]:
    """(whole epochs, pairs per epoch) that process about ``epochs * n_items`` pairs in one local run."""
    whole = max(1, math.ceil(epochs - 1e-9))
    per_epoch = min(n_items, max(2, round(epochs / whole * n_items)))
    return whole, per_epoch


# ---------------------------------------------------------------------- the method
def _stored_rounds(context: UnlearningContext) -> list[StoredRound]:
    directory = context.version_dir / "updates"
    rounds = load_rounds(directory) if directory.is_dir() else []
    if not rounds:
        raise UnlearningError(
            f"federaser replays the clients' stored per-round updates, but {context.version_dir} has none "
            f"({directory} is missing or empty); train the federation with ledger.store_updates_every = N "
            "(N = 1 stores every round)"
        )
    names = {b.name for b in context.setup.blocks}
    missing = names - set(rounds[0].global_start)
    if missing:
        raise UnlearningError(
            f"the stored updates in {directory} do not match this model's blocks (e.g. {sorted(missing)[:3]} missing)"
        )
    return rounds


def unlearn(context: UnlearningContext, target: ErasureTarget, params: FedEraserParams) -> UnlearningOutcome:
    context.check_target(target)
    stored = _stored_rounds(context)
    setup = context.setup
    tc = context.config.training
    blocks = setup.blocks
    items_of = context.retained_items_of(target)
    retained = set(context.retained_clients(target))
    cost = Cost()
    history = []
    skipped_total = 0
    with Timer() as timer:
        bundle = context.fresh_bundle()
        model = bundle.model
        new_global = {name: v.to(torch.float32).clone() for name, v in stored[0].global_start.items()}
        new_global = {b.name: new_global[b.name] for b in blocks}
        spans = round_spans([s.round_index for s in stored], tc.rounds)
        epochs = params.calibration_ratio * tc.local_epochs
        for record, span in zip(stored, spans, strict=True):
            t = record.round_index
            weights = {}
            for k, w in record.weights.items():
                if k not in retained or len(items_of(k)) < 2:
                    continue
                keep = len(items_of(k)) / len(setup.client_items(k))  # < 1 only for the samples scope's client
                weights[k] = w * keep
            if not weights:
                history.append({"round": t, "participants": [], "note": "no retained participant"})
                continue
            total = sum(weights.values())
            aggregate = {name: torch.zeros_like(v) for name, v in new_global.items()}
            lr = learning_rate(context.config, t)
            for k in sorted(weights):
                items = items_of(k)
                whole, per_epoch = calibration_plan(len(items), epochs)
                rng = np.random.default_rng(derive_seed(params.seed, t, k, 0xFE5))
                subset = np.sort(rng.choice(items, size=per_epoch, replace=False))
                write_blocks(model, blocks, new_global)
                result = train_local(
                    bundle,
                    setup.train,
                    setup.captions,
                    subset,
                    epochs=whole,
                    batch_size=tc.batch_size,
                    lr=lr,
                    weight_decay=tc.weight_decay,
                    seed=derive_seed(params.seed, t, k, 0xFE6),
                    device=setup.device,
                )
                cost.client_samples += int(result["samples"])
                local = read_blocks(model, blocks)
                u_new = {name: local[name] - new_global[name] for name in new_global}
                calibrated, skipped = calibrate(record.updates[k], u_new)
                skipped_total += len(skipped)
                for name, u in calibrated.items():
                    aggregate[name] += (weights[k] / total) * u.to(aggregate[name])
            scale = span if params.span == "scaled" else 1
            new_global = {name: v + scale * aggregate[name] for name, v in new_global.items()}
            cost.add_round(len(weights), context.numbers_per_model())
            history.append({"round": t, "span": span, "participants": sorted(weights), "lr": lr})
        write_blocks(model, blocks, new_global)
    details = {
        "stored_rounds": [s.round_index for s in stored],
        "start_round": stored[0].round_index,  # > 0: the start already holds f's earlier rounds
        "span": params.span,
        "calibration_epochs": epochs,
        "skipped_block_updates": skipped_total,
        "history": history,
    }
    return UnlearningOutcome(bundle, cost, timer.seconds, details=details)
