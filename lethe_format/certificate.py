"""The erasure certificate: an in-toto Statement about the version an erasure published, in a DSSE envelope
signed by the worker that published it (``lethe_format.dsse``).

    subject   = [{"name": "<model>/v<N>", "digest": {"sha256": <the version's content hash, hex>}}]
    predicate = request id, dates, scope, legal basis, the parent's and the withdrawn versions' digests, the
                method, the verdict, every gate with its value and threshold, the audit chain's head at
                publication

Verify one offline (only this package and ``cryptography`` are needed)::

    python -m lethe_format.certificate certificate.json --public-key key.pem \\
        [--version-dir <the downloaded version>] [--audit-export audit.json]

(``lethe-admin verify-certificate`` runs the same checks and, with a version directory, its ``model.sig``.)
Exit status 0: every check passed; 1: one failed (each is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lethe_format.audit_chain import check_exported_chain
from lethe_format.dsse import IN_TOTO_PAYLOAD_TYPE, SignatureInvalid, verify_envelope
from lethe_format.errors import FormatError
from lethe_format.hashing import content_hash, directory_digests

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:lethe:erasure-certificate:v1"


def digest_of(content_hash_value: str) -> dict[str, str]:
    """``"sha256:<hex>"`` (THE content hash) as an in-toto digest set."""
    algorithm, _, value = content_hash_value.partition(":")
    return {algorithm: value}


def build_statement(model: str, version: int, version_hash: str, predicate: Mapping[str, Any]) -> dict[str, Any]:
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": f"{model}/v{version}", "digest": digest_of(version_hash)}],
            "predicateType": PREDICATE_TYPE, "predicate": dict(predicate)}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def verify_certificate(envelope: Any, public_key_pem: str | bytes, version_dir: Path | None = None,
                       audit_export: Mapping[str, Any] | None = None) -> list[Check]:
    """Every check of a certificate: the signature (with the statement's type), and where given, that the
    version directory hashes to the subject's digest and that the exported audit chain is intact and holds the
    certified head. A failed signature ends the list (nothing else can be trusted)."""
    try:
        statement = verify_envelope(envelope, public_key_pem, IN_TOTO_PAYLOAD_TYPE)
    except SignatureInvalid as exc:
        return [Check("signature", False, exc.message)]
    checks = [Check("signature", True, "the certificate is signed by this key")]
    kind_ok = statement.get("_type") == STATEMENT_TYPE and statement.get("predicateType") == PREDICATE_TYPE
    checks.append(Check("statement", kind_ok, f"{statement.get('_type')} / {statement.get('predicateType')}"))
    subjects = statement.get("subject") or [{}]
    certified = subjects[0].get("digest", {}) if isinstance(subjects[0], dict) else {}
    predicate = statement.get("predicate") if isinstance(statement.get("predicate"), dict) else {}
    if version_dir is not None:
        try:
            found = digest_of(content_hash(directory_digests(Path(version_dir))))
        except (FormatError, OSError) as exc:
            checks.append(Check("version", False, f"the version directory cannot be read: {exc}"))
        else:
            checks.append(Check("version", found == certified,
                                f"content hash {found.get('sha256', '?')[:16]}... "
                                + ("matches" if found == certified else "differs from")
                                + f" the certified {certified.get('sha256', '?')[:16]}..."))
    if audit_export is not None:
        head = predicate.get("audit_chain_head") or {}
        chain = check_exported_chain(audit_export.get("events", []), audit_export.get("checkpoints", []),
                                     public_key_pem)
        checks.append(Check("audit chain", chain.ok, "; ".join(chain.problems) or
                            f"{chain.events_checked} events and {chain.checkpoints_checked} checkpoints intact"))
        event = next((e for e in audit_export.get("events", []) if e.get("seq") == head.get("seq")), None)
        held = event is not None and event.get("hash") == head.get("hash")
        checks.append(Check("audit head", held and chain.ok,
                            f"event {head.get('seq')} " + ("has the certified hash" if held else
                                                          "is missing or differs from the certified head")))
    return checks


def statement_of(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The statement inside an envelope, unverified (for display only)."""
    import base64

    return json.loads(base64.b64decode(envelope["payload"]))


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read the {what} {path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lethe_format.certificate",
                                     description="Verify a Lethe erasure certificate offline.")
    parser.add_argument("certificate", type=Path, help="the certificate (GET .../certificate), a DSSE envelope")
    parser.add_argument("--public-key", type=Path, required=True, help="the service's public key (PEM; /v1/keys)")
    parser.add_argument("--version-dir", type=Path, help="the certified version, downloaded and unzipped")
    parser.add_argument("--audit-export", type=Path, help="an audit export (GET /v1/audit/export)")
    args = parser.parse_args(argv)
    envelope = _load_json(args.certificate, "certificate")
    export = _load_json(args.audit_export, "audit export") if args.audit_export else None
    checks = verify_certificate(envelope, args.public_key.read_bytes(), args.version_dir, export)
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    return 0 if all(check.ok for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
