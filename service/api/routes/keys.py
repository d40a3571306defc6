"""/v1/keys: the public key that model versions are signed with."""

from __future__ import annotations

from fastapi import APIRouter

from lethe_format.dsse import key_id
from service.api.deps import SettingsDep
from service.api.problems import problems
from service.errors import ApiError
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["keys"])


def public_key_pem(settings: Settings) -> str | None:
    """LETHE_SIGNING_PUBLIC_KEY if set, else derived from the private key LETHE_SIGNING_KEY."""
    if settings.signing_public_key:
        return settings.signing_public_key.read_text(encoding="ascii")
    if settings.signing_key:
        from cryptography.hazmat.primitives import serialization

        private = serialization.load_pem_private_key(settings.signing_key.read_bytes(), password=None)
        return private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
    return None


@router.get("/keys", summary="The signing public key", responses=problems(503, descriptions={
    503: "The configured signing key cannot be read"}))
def keys(settings: SettingsDep):
    """No authentication needed. ``keys`` is empty when no signing key is configured."""
    try:
        pem = public_key_pem(settings)
    except (OSError, ValueError) as exc:
        raise ApiError(503, "signing_key_unreadable",
                       f"The configured signing key could not be read: {exc}. Check LETHE_SIGNING_KEY and "
                       "LETHE_SIGNING_PUBLIC_KEY.") from exc
    if pem is None:
        return {"keys": [], "message": "No signing key is configured (LETHE_SIGNING_PUBLIC_KEY)."}
    return {"keys": [{"kid": key_id(pem), "format": "PEM", "pem": pem}]}
