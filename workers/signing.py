"""Signing model version directories with the OpenSSF model-signing format (offline, local EC key).

The signature is a Sigstore bundle (a DSSE envelope holding an in-toto statement of every file's
sha256) written INSIDE the version directory as ``model.sig``; that path is excluded from what is
signed. Check it with the library (``verify_directory``) or the CLI::

    model_signing verify key <version dir> --signature <version dir>/model.sig --public_key key.pem

The private key is ``LETHE_SIGNING_KEY`` (PEM, elliptic curve). ``ensure_key_pair`` makes a P-256
pair (``<key>`` and ``<key>.pub``) for the embedded default when the file does not exist.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from lethe_format import layout
from service.signatures import VerificationError, hashing_config, verify_directory, write_public_key

SIGNATURE_NAME = layout.SIGNATURE
__all__ = ["SIGNATURE_NAME", "SigningError", "VerificationError", "ensure_key_pair", "public_key_path",
           "sign_directory", "verify_directory", "write_public_key"]


class SigningError(RuntimeError):
    """The version could not be signed (missing or unreadable key, or the library failed)."""


def public_key_path(private_key: Path) -> Path:
    return private_key.with_name(private_key.name + ".pub")


def ensure_key_pair(private_key: Path) -> tuple[Path, Path]:
    """Create an EC P-256 key pair at ``private_key`` (mode 0600) and ``<private_key>.pub`` if the
    private key is missing; write the public half if only it is missing. Returns both paths.

    Safe when several processes call it at once (workers scaled out on one key volume): the private key is
    written to a temporary file and linked into place, which fails if another process got there first; the
    loser then uses the winner's key. No process ever reads a half-written key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_key = Path(private_key)
    public = public_key_path(private_key)
    if not private_key.exists():
        private_key.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        temporary = private_key.with_name(f".{private_key.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process created it meanwhile: use that one
                os.link(temporary, private_key)
        finally:
            temporary.unlink(missing_ok=True)
    if not public.exists():
        write_public_key(private_key, public)
    return private_key, public


def sign_directory(directory: str | Path, private_key: str | Path, signature: str | Path | None = None) -> Path:
    """Sign every file of ``directory``; the signature goes to ``signature`` (default
    ``<directory>/model.sig``). Raises ``SigningError``."""
    directory = Path(directory).resolve()
    private_key = Path(private_key)
    signature = Path(signature).resolve() if signature else directory / SIGNATURE_NAME
    if not directory.is_dir():
        raise SigningError(f"{directory} is not a directory")
    if not private_key.is_file():
        raise SigningError(f"signing key {private_key} does not exist (LETHE_SIGNING_KEY)")
    try:
        import model_signing

        config = model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key)
        config.set_hashing_config(hashing_config(signature, directory))
        config.sign(directory, signature)
    except Exception as exc:  # the library raises many kinds; all mean "not signed"
        signature.unlink(missing_ok=True)
        raise SigningError(f"signing {directory} failed: {type(exc).__name__}: {exc}") from exc
    return signature
