"""One erasure end to end: load a version, unlearn, verify, write the new version.

Nothing is written unless the verdict is ``passed`` (``ease_engine.verification``: production gates, the
unchanged parent as the no-op control; ``publish_on_failure`` writes anyway, for the benchmark's
ablations); a bad target or unknown parameters fail before any work starts.
The new version is a directory written in one rename:

    open_clip_config.json, open_clip_model.safetensors, lethe_model.json, metadata.json
    clients.json        the erased pairs removed, only their hashes kept; client scope marks the client erased
    ledger/             the parent's ledger without the erased client (client scope), or with what was
                        excised on the subject's behalf taken out of its client's contribution (samples scope)
    forget_lock/        the Forget Lock, for aggregators continuing the federation: the parent's layers (every
                        earlier erasure's, carried forward) and this erasure's own (EASE), if any
    verification.json   figures, reference and every gate with its threshold
    manifest.json       parent (name and content hash), the erasure, file digests and THE content hash
                        (``lethe_format``: the same value the service records)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ease_engine.atomic import new_directory, write_json
from ease_engine.federation.data_cache import FederationDataCache
from ease_engine.federation.exclusive import ExclusiveContribution
from ease_engine.inherited_lock import hold_earlier_erasures, inherited_lock
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.blocks import read_blocks
from ease_engine.models.version_io import write_model_files
from ease_engine.unlearning import ErasureTarget, UnlearningContext, UnlearningError, UnlearningOutcome, get_method
from ease_engine.verification.gates import GateConfig
from ease_engine.verification.report import VerificationReport, concept_pairs_kept, measure, verify
from ease_engine.verification.splits import VerificationSplits, build_verification_splits
from lethe_format import build_manifest, content_hash, directory_digests, layout

StageCallback = Callable[[str, float], None]


@dataclass
class ErasureResult:
    report: VerificationReport
    outcome: UnlearningOutcome
    version_dir: Path | None


def repair_record(details: dict) -> dict:
    """How EASE's repair stopped, for the manifest and the job's figures (``details["repair_stop"]``; other methods'
    ``repair`` is their own history, left alone): when it was to stop and why (with ``repair_until = auto`` the
    ledger's choice), the steps it took and, where it measured the retained utility, each measure."""
    stop = details.get("repair_stop")
    if not isinstance(stop, dict):
        return {}
    displacement = details.get("displacement") or {}
    record = {**stop, "steps": displacement.get("steps", 0)}
    if "repair_criterion" in displacement:
        record["criterion"] = displacement["repair_criterion"]
    return {"repair_stop": record}


def probe_for(context: UnlearningContext, target: ErasureTarget) -> tuple[str, str] | None:
    """The concept probe for a client that owns an exclusive concept (``scenes`` partitions)."""
    owners = context.config.partition.owners if context.config.partition.kind == "exclusive" else {}
    concept = owners.get(target.client)
    return tuple(concept) if concept and context.setup.train.structure is not None else None


def verification_inputs(
    context: UnlearningContext, target: ErasureTarget, gates: GateConfig, cache: FederationDataCache
) -> tuple[VerificationSplits, ExclusiveContribution | None]:
    """The verification splits (from the audit split, loaded here and never handed to a method) and, in
    client scope with a ledger, the client's exclusive contribution for the ledger residual."""
    data, _ = cache.get(context.config, context.setup.bundle)
    splits = build_verification_splits(
        data, context.forget_items(target), context.retain_items(target), target.client,
        context.retained_clients(target), gates.max_split_items, gates.seed,
    )
    exclusive = None
    if target.scope == "client" and context.ledger is not None and target.client in context.ledger.records:
        exclusive = ExclusiveContribution.from_ledger(context.ledger, target.client, gates.exclusive_energy,
                                                      gates.exclusivity_ratio)
    return splits, exclusive


def parse_params(method: str, params: dict | None):
    spec = get_method(method)
    try:
        return spec, spec.params.model_validate(params or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UnlearningError(f"invalid parameters for {method}: {problems}") from None


def erase(
    version_dir: str | Path,
    target: ErasureTarget,
    method: str = "ease",
    params: dict | None = None,
    out_dir: str | Path | None = None,
    gates: GateConfig | None = None,
    reference_dir: str | Path | None = None,
    context: UnlearningContext | None = None,
    on_stage: StageCallback | None = None,
    publish_on_failure: bool = False,
    device: str = "cpu",
    data_cache: FederationDataCache | None = None,
    concept: tuple[str, str] | None = None,
) -> ErasureResult:
    """Erase ``target`` from the version at ``version_dir`` with ``method``; write ``out_dir`` only if the
    verdict is ``passed``. ``context``: an already loaded version (else it is loaded on ``device``, with
    ``data_cache``); from then on the context's device is the one used. ``concept``: an
    ``(attribute, value)`` the request names (its concept-probe gate). The method sees the context only:
    the audit split is loaded here, after it has run."""
    version_dir = Path(version_dir)
    stage = on_stage or (lambda name, progress: None)
    gates = gates or GateConfig()
    spec, typed_params = parse_params(method, params)
    if target.scope not in spec.scopes:
        raise UnlearningError(f"{method} does not support scope {target.scope!r}")
    if out_dir is not None and Path(out_dir).exists():
        raise UnlearningError(f"{out_dir} already exists; choose a new directory for the erased version")
    stage("loading", 0.0)
    parent_lock = inherited_lock(version_dir)
    cache = data_cache or FederationDataCache(capacity=1)
    context = context or UnlearningContext.load(version_dir, device, cache)
    device = context.device
    context.check_target(target)
    if parent_lock is not None and (problem := parent_lock.misfit({b.name: b.numel for b in context.setup.blocks})):
        raise UnlearningError(f"the Forget Lock of version {version_dir.name} belongs to another model: {problem}")
    context.on_stage = stage
    stage("excising", 0.1)
    outcome = spec.unlearn(context, target, typed_params)
    if parent_lock is not None:
        held = outcome.details["inherited_lock_interventions"] = hold_earlier_erasures(context, outcome, parent_lock)
        if held and outcome.lock is not None:  # the weights changed after the method built its lock
            outcome.lock = outcome.lock.anchored_at(read_blocks(outcome.bundle.model, context.setup.blocks))
    stage("verifying", 0.7)
    splits, exclusive = verification_inputs(context, target, gates, cache)
    blocks = context.setup.blocks
    parent = measure(context.setup.bundle, splits, gates, concept, exclusive, blocks, device)
    reference = None
    if reference_dir is not None:
        from ease_engine.models.version_io import load_version

        retrained = measure(load_version(reference_dir, device)[0], splits, gates, concept, exclusive, blocks, device)
        reference = {"kind": "retrain", "path": str(reference_dir), **retrained.model_dump(mode="json")}
    kept = concept_pairs_kept(context.setup.train, context.retain_items(target), concept)
    report = verify(outcome.bundle, parent, splits, gates, concept, exclusive, blocks, reference, device, kept)
    written = None
    if out_dir is not None and (report.passed or publish_on_failure):
        written = write_erased_version(
            Path(out_dir), version_dir, context, target, method, typed_params.model_dump(mode="json"), outcome, report,
            ForgetLock.chained(parent_lock, outcome.lock),
        )
    return ErasureResult(report, outcome, written)


def write_erased_version(
    out_dir: Path,
    parent_dir: Path,
    context: UnlearningContext,
    target: ErasureTarget,
    method: str,
    params: dict,
    outcome: UnlearningOutcome,
    report: VerificationReport,
    lock: ForgetLock | None,
) -> Path:
    parent_hash = content_hash(directory_digests(parent_dir))
    parent_meta = json.loads((parent_dir / layout.METADATA).read_text())
    with new_directory(out_dir) as tmp:
        metadata = {
            **{k: v for k, v in parent_meta.items() if k in ("config", "model_fingerprint", "trainable_parameters")},
            "kind": "erasure",
            "parent": parent_dir.name,
        }
        write_model_files(outcome.bundle, tmp, metadata)
        clients = context.clients.after_erasure(target.scope, str(target.client), target.pair_ids)
        write_json(tmp / layout.CLIENTS, clients.to_json())
        if context.ledger is not None:
            if target.scope == "client":
                ledger = context.ledger.without_client(target.client)
            elif outcome.ledger_debit:
                ledger = context.ledger.debited(target.client, outcome.ledger_debit)
            else:
                ledger = context.ledger
            ledger.save(tmp / layout.LEDGER_DIR)
        if lock is not None:
            lock.save(tmp / layout.FORGET_LOCK_DIR)
        write_json(tmp / layout.VERIFICATION, report.model_dump(mode="json"))
        write_json(tmp / layout.METRICS, report.metrics)
        erasure = {
            "scope": target.scope,
            "client": target.client,
            "pair_count": len(target.pair_ids) if target.pair_ids else None,
            "method": method,
            "parameters": params,
            "wall_seconds": outcome.wall_seconds,
            "cost": outcome.cost.__dict__,
            **({"inherited_lock_interventions": outcome.details["inherited_lock_interventions"]}
               if "inherited_lock_interventions" in outcome.details else {}),
            **repair_record(outcome.details),
            "gates_passed": report.passed,
        }
        manifest = build_manifest(directory_digests(tmp), {"name": parent_dir.name, "content_hash": parent_hash},
                                  erasure)
        write_json(tmp / layout.MANIFEST, manifest)
    return out_dir
