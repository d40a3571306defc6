"""EASE: entanglement-aware anchor closure, as this project builds it (docs/ease.md has the full account).

Closure 1, excision (principal-angle entanglement). From the ledger, per block, the part of the forget
client's exact contribution that no retained client's updates span, x_f = (I - U_R U_R^T) C_f (the sine
part of its updates; ``ease_engine.federation.exclusive``). Excision subtracts ``excise_fraction`` x x_f:
what only f taught goes, what the others also taught (the cosine part, inside U_R) stays. In a wholly
exclusive block (the embedding row of a word only f used) this is exact: the block returns to where a model
never trained on f has it. By default every block f moved is excised (``exclusivity_ratio = 0``); a ratio
keeps only blocks whose exclusive share stands out of the retained clients' own (their noise floor).

Measured reasons for this shape (default federation, docs/benchmarks.md and docs/ease.md):
- the previous build excised only wholly exclusive blocks and left entangled ones to a hinge fine-tune inside
  the high-sine span: afterwards 113% of the client's exclusive contribution was still in the weights (the
  ledger residual; the retrain reference: 16%): the knowledge was suppressed, not removed;
- in entangled blocks f's exclusive share is not distinguishable from the retained clients' (at most 1.13x
  their largest); only the "purple" row stands out. A noise-calibrated block choice therefore excises almost
  nothing there, while the retrain reference lacks all of x_f: so all of it is excised;
- removing x_f from entangled blocks costs utility, because later rounds of every client were built on it
  (retained held-out Recall@1 falls from 24 to 6; the retrain reference: 14): closure 2 closes that gap.

Closure 2, bilateral displacement (bilinear cross-modal coupling; ``ease_displacement``): a short
optimisation of BOTH towers that keeps their embeddings of retained pairs close to the parent's (the
utility the excision opened) while a hinge keeps the forget pairs' similarities at or below those of
non-members from the same client (its calibration pairs). (``retain_loss`` "contrastive" or "both" learn
the retained pairs with the CLIP loss instead of, or beside, the anchor: a study, docs/ease.md "The repair
objective"; the default stays the anchor.) Gradients are projected off the excised
directions, so the displacement cannot put back what closure 1 removed; wholly exclusive blocks stay
frozen. (``guard_rank`` also keeps it off the forget pairs' leading gradient directions at the excised
model, ``ease_guard``: a randomized sketch of their per-pair gradients over the blocks the displacement moves.
Measured, 3 seeds each, docs/ease.md "The guard, sketched": it lowers the utility gap on exclusive and samples
(largest retain/test gap 4.1 against 6.9 and 3.5 against 4.9), not on real-images (19.7 against 20.6); beside
the anchor + contrastive repair it helps on exclusive and hurts on samples and real-images; it takes about 3.6
times EASE's wall time on exclusive (1.6 times from 128 pairs, ``guard_pairs``): off by default.)
The repair runs the tuned ``steps`` (tuned on one seed), or, with ``repair_until = "parent_utility"``, those and
on, at most ``max_steps``, until the retained clients' held-out calibration pairs are retrieved as well as by the
parent, within the parent's measure's standard error (``ease_repair``; docs/ease.md "The repair stops on a
measure": on exclusive it closes the utility gap the fixed count leaves on strong seeds, at 3.4-4.1 times the
wall time, and re-teaches the forget pairs where they are ordinary data (dirichlet, samples)). By default
(``repair_until = "auto"``) the ledger chooses: on to the parent's utility where a block is wholly exclusive to
the erased client (it held knowledge no retained client's data has), the tuned steps elsewhere (docs/ease.md
"The ledger chooses when the repair stops").

Closure 3, the Forget Lock (federated update drift): per excised block the unit direction of x_f, the
displacement along it and the erased value, saved with the version; aggregators apply it to every later
client update (``ease_engine.linalg.forget_lock``), so an update that would move the model back toward the
excised knowledge loses that component.

Samples scope (a data subject's pairs inside one client). No per-pair contribution is recorded; the finest
contribution the ledger holds is the subject's client's, and on data like its neighbours' what that client
alone taught (x_c, its sine part) is its memorisation of its own pairs, the subject's among them; what it
shares with the others (the cosine part) is general knowledge and stays. So closure 1 excises x_c, closure 2
runs as in client scope (the hinge on the subject's pairs; the retain proxy holds the rest of the client's
pairs, so their utility is restored through directions off x_c), and the lock holds x_c's directions.
Where a client alone holds a concept, x_c holds it too: excising it for one subject removes it from the
model, and only the displacement's anchor on the client's remaining pairs brings their utility back.
Measured reasons (the ``samples`` scenario, docs/ease.md):
- the earlier design (``sample_excision = "none"``: no excision; the displacement moves only inside the
  subject's own exclusive gradient directions, ``ease_samples``) does not forget a memorised subject
  (membership AUC 0.610 against the parent's 0.611, retrain 0.532): the exclusive directions are few (rank
  <= 8 in 31 blocks) and the hinge has almost nothing to push. The server cannot see what to push either: on
  the client's 70 calibration pairs the parent's similarity AUC is 0.563 and the retrain reference's 0.550
  (the auditor's, on its own pairs: 0.628 and 0.537), so a stopping rule on the server's non-members stops at
  once; a decoupling on each pair's in-batch contrastive loss, the gradient directions against the other
  clients' support only, excising the client's contribution inside the subject's directions, and a
  contrastive retain loss in place of the anchor did not forget on seed 0 (fail, or pass only at a step size
  that is unstable: lr 1e-2 passes with 30 steps and fails with 60);
- excising x_c and displacing (3 seeds): forget Recall@1 45.3/43.3 against retrain 44.0/41.4, membership AUC
  0.525 against 0.532, retain Recall@1 22.6/21.3 against 24.9/23.7; without the displacement retain falls to
  6.3/8.8, without the excision forget stays at 51.8/50.1 (docs/benchmarks.md, samples).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ease_engine.data.dataset import CaptionDataset
from ease_engine.federation.exclusive import ExclusiveContribution
from ease_engine.federation.training import EncodedCaptions, derive_seed
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.linalg.subspace import orthonormal_basis
from ease_engine.models.blocks import ParameterBlock, read_blocks, write_blocks
from ease_engine.models.factory import ClipBundle
from ease_engine.unlearning.base import Cost, ErasureTarget, Timer, UnlearningContext, UnlearningOutcome
from ease_engine.unlearning.ease_displacement import DisplacementPlan, displace, tower_of
from ease_engine.unlearning.ease_guard import forget_gradient_guard
from ease_engine.unlearning.ease_repair import (
    UtilityCriterion,
    auto_stop,
    require_measurable,
    retained_calibration,
)
from ease_engine.unlearning.ease_samples import per_sample_gradient_bases, sample_exclusive_bases

MIN_NONMEMBERS = 16


class EaseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # closure 1
    excise: bool = True
    excise_fraction: float = Field(1.0, ge=0, le=1, description="share of x_f removed from each exclusive block")
    exclusivity_ratio: float = Field(0.0, ge=0, description="a block is exclusive when the client's exclusive share "
                                     "exceeds this times the largest share a retained client shows (0: every block)")
    retained_energy: float = Field(0.999, gt=0, le=1, description="energy kept in the retained support U_R")
    # closure 2
    displace: bool = True
    towers: Literal["both", "image", "text"] = "both"
    steps: int = Field(30, ge=0, description="displacement steps (the equal-tuning winner); with repair_until = "
                       "parent_utility (or auto choosing it) the least it takes")
    repair_until: Literal["auto", "steps", "parent_utility"] = Field(
        "auto", description="stop the displacement after `steps` steps, or after `steps` once the retained clients' "
        "calibration pairs are retrieved as well as by the parent (ease_repair; at most max_steps), or (auto) let the "
        "ledger choose: the parent's utility where a block is wholly exclusive to the erased client, else the steps")
    max_steps: int = Field(120, ge=1, description="repair_until = parent_utility (or auto choosing it): the most "
                           "steps it may take")
    utility_check_every: int = Field(10, ge=1, description="repair_until = parent_utility (or auto choosing it): "
                                     "measure every this many steps")
    utility_tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] | Literal["standard_error"] = Field(
        "standard_error", description="repair_until = parent_utility (or auto choosing it): stop within the parent's "
        "measure's sampling error over the pairs measured (standard_error; docs/ease.md, 'The repair stops within "
        "the measure's sampling error'), or this many points of mean recall below the parent's")
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(64, ge=2)
    retain_weight: float = Field(5.0, ge=0)
    retain_loss: Literal["anchor", "contrastive", "both"] = Field(
        "anchor", description="the retain term: keep the retain proxy's embeddings at the parent's (anchor), learn "
        "the retain proxy's pairs with the CLIP loss (contrastive: the retrain's objective, can exceed the parent), "
        "or the sum of both")
    decouple_weight: float = Field(1.0, ge=0)
    decouple: Literal["hinge", "match", "none"] = "hinge"
    retain_proxy_size: int = Field(512, ge=2, description="retained pairs the server uses as proxy D_r")
    check_every: int = Field(20, ge=1, description="re-measure the non-member similarities every this many steps")
    freeze_wholly_exclusive: bool = Field(True, description="blocks no retained client moved stay where excision "
                                          "put them")
    guard_rank: int = Field(0, ge=0, description="client scope (and samples scope with sample_excision = client): per "
                            "block, also keep the displacement off at most this many leading directions (99.9% of "
                            "the energy) of the forget pairs' contrastive gradients at the model before the "
                            "displacement (the excised one), the directions that would teach them again (0: only the "
                            "excised directions; a study: docs/ease.md, 'The backbone decides the pretrained-lora "
                            "probe')")
    guard_pairs: int | None = Field(None, ge=1, description="the guard's gradients from at most this many forget "
                                    "pairs, drawn uniformly (None: every forget pair)")
    # closure 3
    lock: bool = True
    lock_epsilon: float | None = Field(None, gt=0)
    # samples scope
    sample_excision: Literal["client", "none"] = Field(
        "client", description="samples scope: excise the subject's client's exclusive contribution (client), or "
        "excise nothing and move only inside the subject's exclusive gradient directions (none)")
    sample_rank: int = Field(8, ge=1, description="samples scope without excision: gradient basis rank")
    sin_min: float = Field(0.95, gt=0, le=1, description="samples scope without excision: a gradient direction is "
                           "exclusive if sin(angle to the ledger's support) >= this")
    seed: int = 0

    @model_validator(mode="after")
    def _guard_pairs_need_a_guard(self) -> EaseParams:
        if self.guard_pairs is not None and not self.guard_rank:
            raise ValueError("guard_pairs sets how many forget pairs the guard uses; set guard_rank > 0 too")
        return self

    @model_validator(mode="after")
    def _criterion_extends_the_tuned_steps(self) -> EaseParams:
        if self.repair_until == "parent_utility" and not 1 <= self.steps <= self.max_steps:
            raise ValueError(f"repair_until = 'parent_utility' takes the tuned steps first and then at most max_steps "
                             f"in all: set 1 <= steps <= max_steps (steps {self.steps}, max_steps {self.max_steps})")
        return self


# ---------------------------------------------------------------------- helpers
def _unit_columns(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: (x / x.norm()).reshape(-1, 1).float() for name, x in parts.items() if float(x.norm()) > 0}


def _joined(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per block, an orthonormal basis of the span of both bases' columns."""
    out = {}
    for name in first.keys() | second.keys():
        columns = torch.cat([b[name].float() for b in (first, second) if name in b], dim=1)
        out[name] = orthonormal_basis(columns).float()
    return out


def nonmember_reference(context: UnlearningContext, target: ErasureTarget):
    """Non-members of the forget data's distribution: the client's own calibration pairs (held out, never
    trained on), or, with fewer than MIN_NONMEMBERS of them, every calibration pair."""
    calibration = context.setup.calibration
    own = calibration.client_indices(target.client)
    data = calibration.subset(own if len(own) >= MIN_NONMEMBERS else np.arange(len(calibration)), name="nonmembers")
    return data, EncodedCaptions.build(context.setup.bundle, data)


def _moving_blocks(context: UnlearningContext, params: EaseParams, directions: dict, mode: str,
                   frozen: frozenset[str]) -> list[ParameterBlock]:
    """The blocks the displacement moves: inside the exclusive bases (``onto``) or every block (``off``), less
    the frozen ones and the other tower's."""
    movable = directions if mode == "onto" else {b.name for b in context.setup.blocks}
    return [b for b in context.setup.blocks if b.name in movable and b.name not in frozen
            and params.towers in ("both", tower_of(b))]


def _plan(context: UnlearningContext, target: ErasureTarget, blocks: list[ParameterBlock], directions: dict,
          mode: str, params: EaseParams, rng: np.random.Generator, parent: ClipBundle,
          yardstick: CaptionDataset | None) -> DisplacementPlan:
    pool = context.retain_items(target)
    proxy = rng.choice(pool, size=min(params.retain_proxy_size, len(pool)), replace=False)
    data, captions = nonmember_reference(context, target)
    criterion = None if yardstick is None else UtilityCriterion.at_parent(
        parent, yardstick, params.utility_tolerance, params.utility_check_every, first=params.steps,
        device=context.setup.device)
    return DisplacementPlan(blocks, directions, mode, context.forget_items(target), proxy, data, captions,
                            criterion=criterion)


def _held_out(context: UnlearningContext, target: ErasureTarget) -> CaptionDataset:
    return retained_calibration(context.setup.calibration, context.retained_clients(target))


def _yardstick(context: UnlearningContext, target: ErasureTarget, params: EaseParams) -> CaptionDataset | None:
    """What ``repair_until = "parent_utility"`` measures: the retained clients' calibration pairs (refused before
    anything is computed when there are too few). ``auto`` is decided once the ledger is read (``_repair_stop``)."""
    if params.repair_until != "parent_utility" or not params.displace:
        return None
    held_out = _held_out(context, target)
    require_measurable(held_out)
    return held_out


def _repair_stop(context: UnlearningContext, target: ErasureTarget, params: EaseParams,
                 wholly_exclusive: frozenset[str],
                 yardstick: CaptionDataset | None) -> tuple[CaptionDataset | None, dict]:
    """How the repair will stop, for the record, and what it measures: the setting as given (``yardstick`` is
    ``_yardstick``'s), or with ``auto`` the choice of ``ease_repair.auto_stop`` from the blocks wholly exclusive to
    the erased client, with the retained calibration pairs as the yardstick where it goes on."""
    if params.repair_until != "auto":
        return yardstick, {"requested": params.repair_until, "until": params.repair_until,
                           "why": f"the setting repair_until = {params.repair_until!r}"}
    held_out: list[CaptionDataset] = []

    def count_pairs() -> int:
        held_out.append(_held_out(context, target))
        return len(held_out[0])

    on, why = auto_stop(target.scope, len(wholly_exclusive), params.steps, params.max_steps, count_pairs)
    return (held_out[0] if on else None), {"requested": "auto", "until": "parent_utility" if on else "steps",
                                           "why": why}


def _lock(directions: dict[str, torch.Tensor], before: dict, after: dict, target: ErasureTarget,
          params: EaseParams) -> ForgetLock | None:
    if not directions:
        return None
    lock = ForgetLock(metadata={"method": "ease", "client": str(target.client), "scope": target.scope})
    for name, e in directions.items():
        lock.add_block(name, e, before[name], after[name], epsilon=params.lock_epsilon)
    return lock


# ---------------------------------------------------------------------- the method
def unlearn(context: UnlearningContext, target: ErasureTarget, params: EaseParams) -> UnlearningOutcome:
    context.require_ledger("ease")
    cost = Cost()
    details: dict = {}
    ledger_debit = None
    guard: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(derive_seed(params.seed, 0xEA5E))
    rng = np.random.default_rng(derive_seed(params.seed, 0xD15))
    yardstick = _yardstick(context, target, params)
    with Timer() as timer:
        bundle = context.fresh_bundle()
        blocks = context.setup.blocks
        before = context.original_values
        if target.scope == "client" or params.sample_excision == "client":
            exclusive = ExclusiveContribution.from_ledger(context.ledger, target.client, params.retained_energy,
                                                          params.exclusivity_ratio)
            details["angles"] = {"principal_angles_deg": exclusive.angles_deg, **exclusive.summary()}
            directions = _unit_columns(exclusive.parts)
            wholly_exclusive = exclusive.wholly_exclusive
            frozen = wholly_exclusive if params.freeze_wholly_exclusive else frozenset()
            if params.excise and exclusive.parts:
                values = {name: value - params.excise_fraction * exclusive.parts[name].to(value)
                          if name in exclusive.parts else value for name, value in before.items()}
                write_blocks(bundle.model, blocks, values)
                if target.scope == "samples":  # the client stays: its ledger entry must not hold x_c any more
                    ledger_debit = {name: params.excise_fraction * x.to(torch.float32)
                                    for name, x in exclusive.parts.items()}
                details["excised_share_of_contribution"] = exclusive.energy() / max(
                    sum(float(c.double().pow(2).sum()) for c in context.ledger.client(target.client)
                        .contribution.values()), 1e-30)
            mode = "off"
        else:
            bases = per_sample_gradient_bases(context, bundle, target, params.sample_rank, params.seed, cost)
            directions, angles = sample_exclusive_bases(context, bases, params.sin_min, params.retained_energy)
            details["angles"] = {"principal_angles_deg": [round(a, 3) for a in angles],
                                 "exclusive_blocks": len(directions), "wholly_exclusive_blocks": []}
            wholly_exclusive, frozen, mode = frozenset(), frozenset(), "onto"
        if params.displace:
            yardstick, details["repair_stop"] = _repair_stop(context, target, params, wholly_exclusive, yardstick)
        if params.displace and params.steps and directions:
            moving = _moving_blocks(context, params, directions, mode, frozen)
            if params.guard_rank and mode == "off":  # the guard is computed at the excised model
                guard = forget_gradient_guard(context, bundle, target, moving, params.guard_rank, params.seed, cost,
                                              max_pairs=params.guard_pairs)
                details["guard"] = {"blocks": len(guard), "directions": sum(g.shape[1] for g in guard.values())}
            context.report_stage("displacing", 0.4)
            held_off = _joined(directions, guard) if guard else directions
            parent = context.fresh_bundle()
            plan = _plan(context, target, moving, held_off, mode, params, rng, parent, yardstick)
            details["displacement"] = displace(bundle, parent, context.setup, plan, params, generator, rng)
            cost.client_samples += details["displacement"]["steps"] * min(params.batch_size, len(plan.forget_items))
            cost.server_samples += details["displacement"]["steps"] * min(params.batch_size, len(plan.retain_proxy))
            if plan.criterion:  # the parent's measure and each of the repair's, the last one included: the images
                # encoded, each counted as a pair processed (their captions and the KS checks are not counted)
                cost.server_samples += (1 + len(plan.criterion.measures)) * len(plan.criterion.data)
        lock = _lock(directions, before, read_blocks(bundle.model, blocks), target, params) if params.lock else None
    return UnlearningOutcome(bundle, cost, timer.seconds, lock=lock, details=details, ledger_debit=ledger_debit)
