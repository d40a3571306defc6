"""Checking a version directory's OpenSSF model-signing signature (``model.sig``) with the public key.

Signing needs the private key and lives with the workers (``workers.signing``); checking needs only the public
key, so the API (which never holds the private key) and the workers both use this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from lethe_format import layout

SIGNATURE_NAME = layout.SIGNATURE


class VerificationError(ValueError):
    """The signature does not match the directory (or the key), or it is missing."""


def hashing_config(signature: Path, directory: Path):
    """What the signature covers: every file of the directory but the signature itself (and git files)."""
    from model_signing import hashing

    ignored = [signature.relative_to(directory)] if signature.is_relative_to(directory) else []
    return hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True)


def verify_directory(directory: str | Path, public_key: str | Path, signature: str | Path | None = None) -> None:
    """Check ``directory`` against its signature with the public key; raises ``VerificationError``
    naming what differs (a changed, extra or missing file)."""
    directory = Path(directory).resolve()
    signature = Path(signature).resolve() if signature else directory / SIGNATURE_NAME
    if not signature.is_file():
        raise VerificationError(f"no signature at {signature}")
    try:
        import model_signing

        config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
        config.set_hashing_config(hashing_config(signature, directory))
        config.verify(directory, signature)
    except Exception as exc:
        raise VerificationError(f"{directory}: {exc}") from exc


def public_key_pem_from_private(private_key: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_public_key(private_key: Path, out: Path) -> Path:
    """Write the public half of ``private_key`` to ``out`` (atomically: a temporary file, then a rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    temporary.write_bytes(public_key_pem_from_private(private_key))
    os.replace(temporary, out)
    return out


_derived: dict[str, Path] = {}


def configured_public_key(signing_public_key: Path | None, signing_key: Path | None) -> Path | None:
    """The public key to check signatures with: ``LETHE_SIGNING_PUBLIC_KEY``; else ``<LETHE_SIGNING_KEY>.pub``
    if it exists, else the public half derived from the private key (written once to a private temporary
    file); None when neither is configured."""
    if signing_public_key is not None:
        return Path(signing_public_key)
    if signing_key is None:
        return None
    beside = Path(signing_key).with_name(Path(signing_key).name + ".pub")
    if beside.is_file():
        return beside
    cached = _derived.get(str(signing_key))
    if cached is None or not cached.is_file():
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="lethe-public-key-"))
        cached = write_public_key(Path(signing_key), folder / "public.pem")
        _derived[str(signing_key)] = cached
    return cached
