"""At publication, in the publishing transaction, the worker signs (only workers hold the private key):

- the erasure certificate: an in-toto Statement about the new version (``lethe_format.certificate``), stored
  on the request (``GET /v1/erasure-requests/{id}/certificate``);
- an audit checkpoint: the chain's head after the publication's events (``lethe_format.audit_chain``),
  stored in ``audit_checkpoints`` (``GET /v1/audit/checkpoints``, in every audit export).

The head is read after every event of the publication was appended; the chain head row stays locked by this
transaction until it commits, so no other event can come between the head and its signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lethe_format.audit_chain import CHECKPOINT_PAYLOAD_TYPE, checkpoint_statement
from lethe_format.certificate import build_statement, digest_of
from lethe_format.dsse import sign_envelope
from service.audit import format_timestamp
from service.models import AuditChainHead, AuditCheckpoint, ErasureRequest, ModelVersion, utcnow

CERTIFICATE_FORMAT = "lethe.erasure-certificate/1"
GATE_KEYS = ("name", "kind", "description", "value", "low", "high", "comparison", "threshold", "passed",
             "control_value", "control_passed")


def _head(session: Session) -> tuple[int, str]:
    row = session.execute(select(AuditChainHead.seq, AuditChainHead.hash).where(AuditChainHead.id == 1)).one()
    return row.seq, row.hash


def _version(version: ModelVersion | None) -> dict[str, Any] | None:
    return None if version is None else {"number": version.version, "digest": digest_of(version.content_hash)}


def certificate_predicate(request: ErasureRequest, version: ModelVersion, parent: ModelVersion | None,
                          withdrawn: list[ModelVersion], figures: dict[str, Any], head: tuple[int, str],
                          published_at: str) -> dict[str, Any]:
    gates = figures.get("gates") if isinstance(figures.get("gates"), list) else []
    return {
        "format": CERTIFICATE_FORMAT,
        "request": {
            "id": str(request.id), "received_at": format_timestamp(request.created_at),
            "due_at": format_timestamp(request.due_at) if request.due_at else None,
            "scope": request.scope, "client_id": request.client_id,
            "pair_count": len(request.pair_ids) if request.pair_ids else None,
            "subject_ref_sha256": request.subject_ref_sha256, "legal_basis": request.legal_basis,
        },
        "model": request.model_name,
        "version": _version(version),
        "parent": _version(parent),
        "withdrawn": [_version(item) for item in withdrawn],
        "method": {"name": figures.get("method"), "parameters": figures.get("parameters")},
        "verdict": figures.get("verdict") or ("passed" if figures.get("passed", True) else "failed"),
        "gates": [{key: gate.get(key) for key in GATE_KEYS if key in gate} for gate in gates if isinstance(gate, dict)],
        "audit_chain_head": {"seq": head[0], "hash": head[1]},
        "published_at": published_at,
    }


def certify_publication(session: Session, request: ErasureRequest, version: ModelVersion,
                        withdrawn: list[ModelVersion], figures: dict[str, Any], private_key: Path) -> None:
    """Sign the certificate and the checkpoint of this publication and store both (the caller commits)."""
    session.flush()
    head = _head(session)
    now = format_timestamp(utcnow())
    parent = session.get(ModelVersion, version.parent_id) if version.parent_id is not None else None
    statement = build_statement(request.model_name, version.version, version.content_hash,
                                certificate_predicate(request, version, parent, withdrawn, figures, head, now))
    request.certificate = sign_envelope(statement, private_key)
    checkpoint = sign_envelope(checkpoint_statement(head[0], head[1], now, str(request.id)), private_key,
                               CHECKPOINT_PAYLOAD_TYPE)
    session.add(AuditCheckpoint(seq=head[0], hash=head[1], request_id=request.id, envelope=checkpoint))
