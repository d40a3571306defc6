"""DSSE envelopes (the signing envelope of in-toto and Sigstore), signed with the service's EC key.

    envelope = {"payloadType": T, "payload": base64(P), "signatures": [{"keyid": K, "sig": base64(S)}]}
    S = ECDSA-P256-SHA256(private key, PAE(T, P))       (DER encoded)
    PAE(T, P) = "DSSEv1" SP len(T) SP T SP len(P) SP P  (lengths in ASCII decimal, of the UTF-8 bytes)

``K`` is :func:`key_id` of the public key (the ``kid`` of ``GET /v1/keys``). Only the workers sign (they
hold the private key); anyone with the public key verifies (:func:`verify_envelope`). ``cryptography`` is
imported when a function needs it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from lethe_format.errors import FormatError

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


class SignatureInvalid(FormatError):
    """The envelope is malformed, or its signature does not verify with the given public key."""

    def __init__(self, message: str):
        super().__init__("signature_invalid", message)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(public_key_pem: str | bytes) -> str:
    """The id of a public key: the first 16 hex digits of the sha256 of its PEM text (stripped)."""
    text = public_key_pem.decode("ascii") if isinstance(public_key_pem, bytes) else public_key_pem
    return hashlib.sha256(text.strip().encode("ascii")).hexdigest()[:16]


def public_pem_of(private_key_path: str | Path) -> str:
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), password=None)
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def canonical_bytes(value: Any) -> bytes:
    """The payload bytes of a JSON statement: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sign_envelope(payload: Any, private_key_path: str | Path, payload_type: str = IN_TOTO_PAYLOAD_TYPE
                  ) -> dict[str, Any]:
    """A DSSE envelope of the JSON ``payload`` signed with the EC private key (PEM) at ``private_key_path``."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise SignatureInvalid("the signing key is not an elliptic-curve key")
    body = canonical_bytes(payload)
    signature = private.sign(pae(payload_type, body), ec.ECDSA(hashes.SHA256()))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": [{"keyid": key_id(public_pem_of(private_key_path)),
                        "sig": base64.b64encode(signature).decode("ascii")}],
    }


def verify_envelope(envelope: Any, public_key_pem: str | bytes,
                    payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> dict[str, Any]:
    """The envelope's JSON payload if one of its signatures verifies with the public key; raises
    :class:`SignatureInvalid` otherwise (malformed envelope, other payload type, bad signature)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(envelope, dict) or not isinstance(envelope.get("signatures"), list):
        raise SignatureInvalid("not a DSSE envelope (payloadType, payload, signatures)")
    if envelope.get("payloadType") != payload_type:
        raise SignatureInvalid(f"payloadType is {envelope.get('payloadType')!r}, expected {payload_type!r}")
    try:
        body = base64.b64decode(envelope["payload"], validate=True)
        public = serialization.load_pem_public_key(
            public_key_pem if isinstance(public_key_pem, bytes) else public_key_pem.encode("ascii"))
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureInvalid(f"unreadable payload or public key ({exc})") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SignatureInvalid("the public key is not an elliptic-curve key")
    for entry in envelope["signatures"]:
        try:
            public.verify(base64.b64decode(entry["sig"], validate=True), pae(payload_type, body),
                          ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, KeyError, TypeError, ValueError):
            continue
        try:
            payload = json.loads(body.decode("utf-8"))
        except ValueError as exc:
            raise SignatureInvalid(f"the signed payload is not JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise SignatureInvalid("the signed payload is not a JSON object")
        return payload
    raise SignatureInvalid("no signature of the envelope verifies with this public key")
