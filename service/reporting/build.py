"""``build_report``: the report of one erasure request (``ErasureReport``, served as report.json, rendered as
PDF and HTML) from the database: the request, its outcome and gates, timeline, lineage, signature,
certificate, audit chain and the commands that verify it offline."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lethe_format.audit_chain import HASH_RULE
from lethe_format.dsse import canonical_bytes
from service.audit import chain_head, events_for_request, format_timestamp, verify_chain
from service.models import AuditCheckpoint, ErasureRequest, ModelVersion, utcnow
from service.reporting import summary
from service.reporting.schema import ErasureReport
from service.schemas import LEGAL_BASIS_DESCRIPTIONS, LegalBasis

SIGNATURE_SUFFIXES = (".sig", ".sigstore", ".sigstore.json")


def _ts(value) -> str | None:
    return format_timestamp(value) if value is not None else None


def version_summary(version: ModelVersion | None) -> dict[str, Any] | None:
    if version is None:
        return None
    return {
        "version": version.version, "status": version.status, "path": version.path,
        "content_hash": version.content_hash,
        "parent_version": version.parent.version if version.parent else None,
        "created_at": format_timestamp(version.created_at),
        "created_by_request": str(version.created_by_request_id) if version.created_by_request_id else None,
        "withdrawn_by_request": str(version.withdrawn_by_request_id) if version.withdrawn_by_request_id else None,
        "withdrawn_at": _ts(version.withdrawn_at), "artifacts_deleted_at": _ts(version.artifacts_deleted_at),
    }


def ancestry(version: ModelVersion | None, limit: int = 1000) -> list[dict[str, Any]]:
    chain = []
    while version is not None and len(chain) < limit:
        chain.append(version_summary(version))
        version = version.parent
    return chain


def certificate_digest(envelope: dict[str, Any]) -> str:
    """sha256 of the certificate as ``GET .../certificate`` serves it (its canonical JSON bytes)."""
    return hashlib.sha256(canonical_bytes(envelope)).hexdigest()


def _signature(version: ModelVersion | None) -> dict[str, Any] | None:
    if version is None:
        return None
    files = [entry for entry in (version.files or []) if entry["path"].endswith(SIGNATURE_SUFFIXES)]
    return {
        "files": files, "digest": files[0]["sha256"] if files else None,
        "manifest_signature": version.manifest.get("signature"),
        "how_to_verify": "model_signing verify key <version dir> --signature <version dir>/model.sig "
                         "--public_key key.pem (the OpenSSF model-signing tool; the key from GET /v1/keys)",
    }


def _base(settings) -> str:
    return getattr(settings, "public_base_url", None) or "$LETHE"


def verify_steps(request: ErasureRequest, settings) -> list[dict[str, str]]:
    base, version = _base(settings), request.result_version
    auth = '-H "Authorization: Bearer $TOKEN"'
    steps = [
        {"step": "The service's public key",
         "command": f"curl -s {base}/v1/keys | python3 -c \"import json,sys; "
                    "print(json.load(sys.stdin)['keys'][0]['pem'])\" > key.pem"},
        {"step": "The certificate (its sha256 is on page 1)",
         "command": f"curl -s {auth} {base}/v1/erasure-requests/{request.id}/certificate -o certificate.json "
                    "&& sha256sum certificate.json"},
        {"step": "The audit chain with its signed checkpoints",
         "command": f"curl -s {auth} {base}/v1/audit/export -o audit.json"},
    ]
    if version is not None:
        folder = f"{request.model_name}-v{version.version}"
        steps += [
            {"step": "The certified version",
             "command": f"curl -s {auth} {base}/v1/models/{request.model_name}/versions/{version.version}/download "
                        f"-o {folder}.zip && unzip -q {folder}.zip"},
            {"step": "Verify the certificate against the key, the version and the audit chain",
             "command": f"lethe-admin verify-certificate certificate.json --public-key key.pem --version-dir {folder} "
                        "--audit-export audit.json"},
            {"step": "The same without Lethe installed (Python with the cryptography package and lethe_format)",
             "command": f"python3 -m lethe_format.certificate certificate.json --public-key key.pem "
                        f"--version-dir {folder} --audit-export audit.json"},
            {"step": "The signature of every file of the version (OpenSSF model signing)",
             "command": f"model_signing verify key {folder} --signature {folder}/model.sig --public_key key.pem"},
        ]
    return steps


def build_report(session: Session, request: ErasureRequest, request_view: dict[str, Any], settings=None
                 ) -> dict[str, Any]:
    """The report as JSON (validated against ``ErasureReport``)."""
    events = events_for_request(session, request.id)
    head_seq, head_hash = chain_head(session)
    basis = LegalBasis(request.legal_basis)
    result_version = request.result_version
    figures = request.result if isinstance(request.result, dict) else {}
    failure = request.failure if isinstance(request.failure, dict) else {}
    manifest = result_version.manifest if result_version else {}
    withdrawn = session.scalars(select(ModelVersion).where(ModelVersion.withdrawn_by_request_id == request.id)
                                .order_by(ModelVersion.version)).all()
    checkpoint = session.scalars(select(AuditCheckpoint).where(AuditCheckpoint.request_id == request.id)
                                 .order_by(AuditCheckpoint.seq.desc())).first()
    certificate = request.certificate
    erasure = as_dict(manifest.get("erasure"))
    report = {
        "generated_at": utcnow(),
        "request": request_view,
        "legal_basis": {"code": basis.value, "description": LEGAL_BASIS_DESCRIPTIONS[basis], "reason": request.reason},
        "outcome": summary.verdict(request.status, figures, failure),
        "gates": summary.gate_rows(figures, failure),
        "timeline": [
            {"seq": event.seq, "type": event.event_type, "at": format_timestamp(event.created_at),
             "summary": summary.event_sentence(event.event_type, summary.as_dict(event.payload)),
             "payload": event.payload}
            for event in events
        ],
        "lineage": {
            "model": request.model_name, "base_version": version_summary(request.base_version),
            "result_version": version_summary(result_version), "ancestry": ancestry(result_version or
                                                                                    request.base_version),
            "withdrawn": [version_summary(version) for version in withdrawn],
        },
        "method": erasure.get("method") or manifest.get("method") or figures.get("method"),
        "parameters": erasure.get("parameters") or manifest.get("parameters") or figures.get("parameters"),
        "verification": {"status": request.status, "result": request.result, "failure": request.failure},
        "signature": _signature(result_version),
        "certificate": {
            "available": certificate is not None,
            "digest": certificate_digest(certificate) if certificate else None,
            "subject": f"{request.model_name}/v{result_version.version}" if result_version else None,
            "link": f"/v1/erasure-requests/{request.id}/certificate",
        },
        "audit_chain": {
            "rule": HASH_RULE,
            "events": [{"seq": event.seq, "type": event.event_type, "prev_hash": event.prev_hash,
                        "hash": event.hash} for event in events],
            "head": {"seq": head_seq, "hash": head_hash},
            "verification": verify_chain(session).as_dict(),
            "checkpoint": None if checkpoint is None else {
                "seq": checkpoint.seq, "hash": checkpoint.hash, "created_at": format_timestamp(checkpoint.created_at)},
            "how_to_verify": "GET /v1/audit/verify re-walks the chain and checks the signed checkpoints; an export "
                             "(GET /v1/audit/export) is checked offline with lethe-admin audit verify.",
        },
        "verify_offline": verify_steps(request, settings),
    }
    return ErasureReport.model_validate(report).model_dump(mode="json")


as_dict = summary.as_dict
