"""Publishing an erasure without the engine, exactly as the worker does (``workers.pipeline.publish_staged``),
with figures in the shape ``workers/figures.py`` records: for the report, certificate, withdrawal and UI tests."""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
from pathlib import Path

from ease_engine.verification.gates import Gate
from lethe_format import read_clients
from service import lifecycle
from service.models import ModelVersion
from workers.pipeline import publish_staged
from workers.signing import sign_directory

FORGET_R1 = ("Recall@1 ({d}) on the erased pairs minus that on pairs of the same client the model never saw "
             "(galleries of 23); an erased model treats both alike")
MIA = ("membership-inference AUC ({attack} attack) of the erased pairs against the same client's unseen pairs; 0.5 "
       "means an attacker cannot tell them apart")
RESIDUAL = ("share of the client's exclusive contribution (what no other client's updates span, from the ledger) "
            "still in the weights; 1 for the parent, near 0 for a model never trained on the client")
UTILITY = ("Recall@1 ({d}) on the retained clients' {which} pairs (gallery of {n}) keeps 50% of the parent's skill "
           "above chance")


def _gate(name: str, kind: str, description: str, value: float, low: float | None, high: float | None,
          control: float) -> dict:
    """A gate as the worker records it: ``ease_engine.verification.gates.Gate`` (with the no-op control)."""
    return Gate.check(name, kind, description, value, low, high, control_value=control).model_dump(mode="json")


# the gates of a client erasure, with main's names and descriptions (the longest names included)
GATES = [
    _gate("forget_vs_nonmember_i2t_r1", "forgetting", FORGET_R1.format(d="i2t"), 2.1, -4.0, 4.0, 38.5),
    _gate("forget_vs_nonmember_t2i_r1", "forgetting", FORGET_R1.format(d="t2i"), 3.0, -4.5, 4.5, 36.0),
    _gate("mia_similarity_auc", "forgetting", MIA.format(attack="similarity"), 0.53, 0.38, 0.62, 0.81),
    _gate("mia_loss_auc", "forgetting", MIA.format(attack="loss"), 0.52, 0.37, 0.63, 0.77),
    _gate("ledger_residual", "forgetting", RESIDUAL, 0.02, -0.5, 0.5, 1.0),
    _gate("retain_i2t_r1", "utility", UTILITY.format(d="i2t", which="training", n=500), 41.2, 38.0, None, 42.0),
    _gate("retained_heldout_i2t_r1", "utility", UTILITY.format(d="i2t", which="unseen", n=86), 19.5, 17.0, None,
          20.1),
    _gate("retained_heldout_t2i_r1", "utility", UTILITY.format(d="t2i", which="unseen", n=86), 18.9, 16.5, None,
          19.3),
]


def recall(base: float) -> dict[str, float]:
    return {"i2t_r1": base, "i2t_r5": base + 20, "i2t_r10": base + 30, "t2i_r1": base - 1, "t2i_r5": base + 18,
            "t2i_r10": base + 28, "n_images": 60.0}


FIGURES = {
    "verdict": "passed", "reasons": [], "passed": True, "method": "ease",
    "parameters": {"rank": 8, "displacement": {"steps": 40, "lr": 0.001}},
    "gates": GATES,
    "metrics": {"forget": recall(2.1), "retain": recall(41.2), "retained_heldout": recall(19.5)},
    "before": {"forget": recall(38.5), "retain": recall(42.0), "retained_heldout": recall(20.1)},
    "matched": {"gallery_size": 200, "candidate": {"members": 3.0, "nonmembers": 2.6},
                "parent": {"members": 21.0, "nonmembers": 3.8}},
    "membership": {"similarity_auc": 0.53, "loss_auc": 0.52}, "membership_before": {"similarity_auc": 0.81,
                                                                                   "loss_auc": 0.77},
    "residual": {"candidate": {"all": 0.02}, "parent": {"all": 1.0}},
    "probe": {"concept": None, "candidate": None, "parent": None}, "reference": {},  # no concept named, no retrain
    "distributions": {"similarity": {"edges": [0.1, 0.2, 0.3, 0.4, 0.5], "members": [0, 2, 6, 4],
                                     "nonmembers": [5, 10, 5, 0], "members_mean": 0.36, "nonmembers_mean": 0.25}},
    "angles": {"principal_angles_deg": [12.5, 45.0, 88.0, 90.0, 90.0, 89.0]},
    "cost": {"gpu_seconds": 0.0, "cpu_seconds": 12.5, "peak_memory_mb": 812.0},
    "stage_seconds": {"loading": 1.2, "excising": 3.4, "displacing": 5.0, "verifying": 2.2, "signing": 0.4},
    # how EASE's repair stopped, as ease_engine.erasure.repair_record writes it
    "repair_stop": {"requested": "auto", "until": "parent_utility", "steps": 50,
               "why": "1 block(s) wholly exclusive to the erased client: on to the parent's utility on 250 retained "
                      "calibration pairs",
               "criterion": {"parent_mean_recall": 44.1, "target_mean_recall": 44.1, "pairs": 250, "reached": True,
                             "measures": [{"step": 30, "mean_recall": 40.25, "reached": False},
                                          {"step": 40, "mean_recall": 43.5, "reached": False},
                                          {"step": 50, "mean_recall": 44.4, "reached": True}]}},
}


def figures(verdict: str = "passed") -> dict:
    result = copy.deepcopy(FIGURES)
    result["verdict"] = verdict
    return result


def federation_version_dir(directory: Path) -> None:
    """A minimal federation version (3 clients of 3 pairs each) for the API to register."""
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text(json.dumps({"kind": "federation"}))
    (directory / "clients.json").write_text(json.dumps({"clients": {
        str(k): {"n_samples": 3, "pair_ids": [f"p{k}-{i}" for i in range(3)]} for k in range(3)}}))
    (directory / "open_clip_model.safetensors").write_bytes(b"weights")


def publish(db, artifact_dir: Path, request_id: str, signing_key: Path, result: dict | None = None) -> ModelVersion:
    """Run the request through its stages and publish a signed erased copy of its base version."""
    result = figures() if result is None else result
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        for stage in ("loading", "excising", "displacing", "verifying", "signing"):
            lifecycle.mark_running(session, request, stage, 0.5)
        base = session.get(ModelVersion, request.base_version_id)
        base_path, base_number = base.path, base.version
        scope, client_id, pair_ids, model = request.scope, request.client_id, request.pair_ids, request.model_name
    staging = Path(artifact_dir) / model / ".staging" / request_id
    staged = staging / "version"
    shutil.copytree(Path(artifact_dir) / base_path, staged)
    clients = read_clients(staged).after_erasure(scope, client_id, pair_ids)
    (staged / "clients.json").write_text(json.dumps(clients.to_json()))
    (staged / "open_clip_model.safetensors").write_bytes(os.urandom(256))
    (staged / "manifest.json").write_text(json.dumps({"erasure": {"method": "ease", "parameters": {"rank": 8}}}))
    for old in ("metadata.json", "model.sig"):
        (staged / old).unlink(missing_ok=True)
    sign_directory(staged, signing_key)
    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        version = publish_staged(session, request, Path(artifact_dir), staged, staging.with_suffix(".json"),
                                 base_number, result, signing_key)
        version_id = version.id
    shutil.rmtree(staging, ignore_errors=True)
    with db.session() as session:
        return session.get(ModelVersion, version_id)


def request_uuid(request_id: str) -> uuid.UUID:
    return uuid.UUID(request_id)
