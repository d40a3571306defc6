"""``lethe-admin`` / ``lethe`` commands of the compliance side (torch-free):

- ``verify-certificate CERT --public-key KEY [--version-dir DIR] [--audit-export FILE]``: checks an erasure
  certificate offline (``lethe_format.certificate``) and, with a version directory, its ``model.sig``;
- ``audit export`` (from the database, or ``--api URL --token T`` over HTTP) and ``audit verify EXPORT
  --public-key KEY [--checkpoint FILE ...]``: the chain re-hashed, every checkpoint's signature, and checkpoints
  kept from earlier exports: a rewrite of the database since then is detected;
- ``versions sweep`` (delete the files of versions withdrawn longer than the retention window) and
  ``versions restore MODEL VERSION --reason`` (an admin's rollback of a withdrawal);
- ``token webhook TOKEN_ID [--callback-url URL]``: a new webhook secret (printed once) and callback URL.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated

import typer

from lethe_cli.database_option import DatabaseUrl, _database
from service.settings import get_settings

audit_app = typer.Typer(help="Export the audit chain and verify an export offline.", no_args_is_help=True)
versions_app = typer.Typer(help="Withdrawn versions: the retention sweep and an admin's rollback.",
                           no_args_is_help=True)

PublicKey = Annotated[Path, typer.Option("--public-key", exists=True, dir_okay=False,
                                         help="the service's public key (PEM; GET /v1/keys)")]


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot read the {what} {path}: {exc}", err=True)
        raise typer.Exit(2) from None


def _report(checks: list[tuple[str, bool, str]]) -> None:
    for name, ok, detail in checks:
        typer.echo(f"{'ok  ' if ok else 'FAIL'}  {name}: {detail}")
    if not all(ok for _, ok, _ in checks):
        raise typer.Exit(1)


def verify_certificate(
    certificate: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the certificate (JSON)")],
    public_key: PublicKey,
    version_dir: Annotated[Path | None, typer.Option(file_okay=False, help="the downloaded, unzipped version")] = None,
    audit_export: Annotated[Path | None, typer.Option(dir_okay=False, help="an audit export (audit.json)")] = None,
) -> None:
    """Verify an erasure certificate offline: its signature, and where given that the version directory hashes to
    the certified digest (and its model.sig verifies) and that the audit export is intact and holds the certified
    head. Exit 0: every check passed; 1: one failed."""
    from lethe_format.certificate import verify_certificate as verify

    envelope = _read_json(certificate, "certificate")
    export = _read_json(audit_export, "audit export") if audit_export else None
    checks = [(c.name, c.ok, c.detail) for c in verify(envelope, public_key.read_bytes(), version_dir, export)]
    if version_dir is not None and checks[0][1]:
        checks.append(_model_signature(version_dir, public_key))
    _report(checks)


def _model_signature(version_dir: Path, public_key: Path) -> tuple[str, bool, str]:
    """The version's model.sig with the OpenSSF model-signing library (as ``workers.signing.verify_directory``,
    which the API image does not ship)."""
    from lethe_format.layout import SIGNATURE

    signature = Path(version_dir).resolve() / SIGNATURE
    if not signature.is_file():
        return "model.sig", False, "the version directory has no model.sig"
    try:
        import model_signing

        hashing = model_signing.hashing.Config().set_ignored_paths(paths=[Path(SIGNATURE)], ignore_git_paths=True)
        config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
        config.set_hashing_config(hashing)
        config.verify(Path(version_dir).resolve(), signature)
    except Exception as exc:  # the library raises many kinds; all mean "does not verify"
        return "model.sig", False, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return "model.sig", True, "every file of the version matches its signature"


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the export (JSON)")] = Path("audit.json"),
    api: Annotated[str | None, typer.Option(help="export over HTTP from this API instead of the database")] = None,
    token: Annotated[str | None, typer.Option(envvar="LETHE_TOKEN", help="a compliance token (with --api)")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Write every audit event and signed checkpoint to one JSON file (what GET /v1/audit/export serves)."""
    if api:
        import httpx

        response = httpx.get(f"{api.rstrip('/')}/v1/audit/export", headers={"Authorization": f"Bearer {token}"},
                             timeout=120)
        if response.status_code != 200:
            typer.echo(f"the API answered {response.status_code}: {response.text[:300]}", err=True)
            raise typer.Exit(1)
        export = response.json()
    else:
        from service.audit_export import full_export

        with _database(database_url).session() as session:
            export = full_export(session)
    out.write_text(json.dumps(export, ensure_ascii=False, sort_keys=True, separators=(",", ":")), encoding="utf-8")
    typer.echo(f"{len(export['events'])} events and {len(export['checkpoints'])} checkpoints written to {out} "
               f"(head: event {export['head']['seq']})")


@audit_app.command("verify")
def audit_verify(
    export: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="an audit export")],
    public_key: PublicKey,
    checkpoint: Annotated[list[Path] | None, typer.Option(
        help="a checkpoint (or an earlier export) kept elsewhere: its signed heads must still be in this chain")]
    = None,
) -> None:
    """Re-hash the exported chain and check every checkpoint (those in the export and those given): exit 1 when an
    event was changed, removed or reordered, or when the history up to a kept checkpoint was rewritten."""
    from lethe_format.audit_chain import check_exported_chain

    data = _read_json(export, "audit export")
    kept = []
    for path in checkpoint or []:
        item = _read_json(path, "checkpoint")
        kept += item.get("checkpoints", []) if isinstance(item, dict) and "checkpoints" in item else [item]
    result = check_exported_chain(data.get("events", []), [*data.get("checkpoints", []), *kept],
                                  public_key.read_bytes())
    checks = [("chain", result.ok, "; ".join(result.problems) or
               f"{result.events_checked} events re-hashed, head event {result.head_seq}; "
               f"{result.checkpoints_checked} signed checkpoints hold")]
    _report(checks)


@versions_app.command("sweep")
def versions_sweep(
    retention_days: Annotated[float | None, typer.Option(help="default: LETHE_WITHDRAWN_RETENTION_DAYS")] = None,
    artifact_dir: Annotated[Path | None, typer.Option(help="default: LETHE_ARTIFACT_DIR")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete the files of versions withdrawn longer ago than the retention window (an audit event each)."""
    from service.withdrawal import sweep_withdrawn

    settings = get_settings()
    days = settings.withdrawn_retention_days if retention_days is None else retention_days
    with _database(database_url).session() as session:
        deleted = sweep_withdrawn(session, artifact_dir or settings.artifact_dir, days)
    for item in deleted:
        typer.echo(f"deleted the files of withdrawn version {item['version']} ({item['path']})")
    typer.echo(f"{len(deleted)} withdrawn version(s) past {days:g} days")


@versions_app.command("restore")
def versions_restore(
    model: str, version: int,
    reason: Annotated[str, typer.Option(help="why the withdrawal is rolled back (recorded in the audit chain)")],
    database_url: DatabaseUrl = None,
) -> None:
    """Offer a withdrawn version again (while its files are kept): an admin's rollback."""
    from service.versions import get_model, get_version
    from service.withdrawal import RestoreRefused, restore_version

    with _database(database_url).transaction() as session:
        found = get_model(session, model)
        record = get_version(session, found, version) if found else None
        if record is None:
            typer.echo(f"no version {version} of model {model!r}", err=True)
            raise typer.Exit(1)
        try:
            restore_version(session, record, {"cli": "lethe-admin"}, reason)
        except RestoreRefused as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
    typer.echo(f"version {version} of {model} restored")


def token_webhook(
    token_id: int,
    callback_url: Annotated[str | None, typer.Option(help="default callback URL of this token's requests")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Give a token a new webhook secret (printed once: the receiver checks X-Lethe-Signature with it) and,
    optionally, a default callback URL."""
    from service.audit import append_event
    from service.models import ApiToken

    secret = secrets.token_hex(32)
    with _database(database_url).transaction() as session:
        token = session.get(ApiToken, token_id)
        if token is None:
            typer.echo(f"no API token with id {token_id}", err=True)
            raise typer.Exit(1)
        token.webhook_secret = secret
        if callback_url is not None:
            token.callback_url = callback_url
        append_event(session, "token.webhook_set", {"token_id": token_id, "callback_url": token.callback_url})
    typer.echo(secret)
    typer.echo("(the webhook secret; store it at the receiver now: it is not shown again)", err=True)


def mount(app: typer.Typer) -> None:
    """Add these commands to ``lethe-admin`` or ``lethe``."""
    app.command("verify-certificate")(verify_certificate)
    app.add_typer(audit_app, name="audit", help="export the audit chain and verify an export offline")
    app.add_typer(versions_app, name="versions", help="withdrawn versions: retention sweep, rollback")
