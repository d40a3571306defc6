"""``lethe demo``: the whole service on the embedded default, in one command.

1. Set-up in ``--workdir`` (default ``runs/demo``; reset on every run except its signing key): a SQLite
   database (``var/lethe.db``, migrated), the local broker (``var/celery-broker.sqlite``), a signing key
   pair generated once (``var/keys/``), one token per role (aggregator, requester, compliance).
2. The federation: ``--federation DIR`` (an existing version directory), else ``runs/<name>`` trained
   from ``--config`` (default: the shipped ``default.toml``) unless its ``metrics.json`` exists.
3. API (uvicorn on 127.0.0.1, a free port) and one Celery worker as child processes (``lethe serve``'s
   machinery); their output goes to ``logs/api.log`` and ``logs/worker.log``.
4. Over REST: register the federation (copied to ``artifacts/<model>/v1``) with the aggregator token,
   submit an erasure request for the federation's exclusive client (Art. 17(1)(a)), poll it to a terminal
   state, download ``report.json`` and ``report.pdf``, verify the new version's signature with the key
   served at ``/v1/keys`` and the audit chain (``/v1/audit/verify``).
5. Print where everything is and the gates; stop the children (``--keep-running``: only on Ctrl-C).

Exit code 0 only if the request was published, every gate passed, the PDF is a PDF, the signature
verifies and the chain is intact; 1 if any of these fails; 2 for a set-up problem; 130 on Ctrl-C.

The worker's own settings still apply (``LETHE_ERASE_METHOD``, ``LETHE_ERASE_PARAMS_JSON``,
``LETHE_GATES_JSON``, ``LETHE_DEVICE``, ...); database, broker, artifact directory and signing key are
always the demo's own, so the demo never touches a configured deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import typer

from lethe_cli.demo.children import HOST, Api, Children, DemoFailure, free_port
from lethe_cli.demo.output import Checks, print_gates, say, show
from lethe_cli.demo.setup import (
    DemoError,
    Layout,
    demo_environment,
    federation_identity,
    obtain_federation,
    prepare_workdir,
)
from lethe_cli.serve import api_command, worker_command
from service.settings import Settings, SettingsError

__all__ = ["DemoError", "DemoFailure", "federation_identity", "prepare_workdir", "run_demo"]

ROLES = ("aggregator", "requester", "compliance", "admin")


def _start_service_state(layout: Layout, model: str, client: str) -> tuple[dict[str, str], Settings, dict[str, str]]:
    """The children's environment and settings, the migrated database and one token per role (the requester
    granted the one client the demo erases)."""
    from service import scopes
    from service.auth import create_token
    from service.db import Database, upgrade_database
    from service.models import ApiToken

    key_existed = (layout.var / "keys").is_dir() and any((layout.var / "keys").iterdir())
    env, settings = demo_environment(layout)
    upgrade_database(settings.database_url)
    database = Database(settings.database_url)
    try:
        with database.transaction() as session:
            tokens = {role: create_token(session, f"demo-{role}", role) for role in ROLES}
            requester_id = session.query(ApiToken.id).filter(ApiToken.name == "demo-requester").order_by(
                ApiToken.id.desc()).limit(1).scalar()
            scopes.grant(session, requester_id, model, client, {"demo": True})
    finally:
        database.dispose()
    say(f"database: {show(layout.database)} (SQLite, migrated); broker: {settings.broker_url}")
    say(f"signing key: {show(settings.signing_key)} ({'kept' if key_existed else 'generated'}; public "
        f"{show(settings.signing_public_key)})")
    say(f"tokens: aggregator, requester (granted client {client} of {model}), compliance, admin (stored hashed in "
        "the database)")
    return env, settings, tokens


def _erase_over_rest(api: Api, children: Children, model: str, client: str, timeout: float) -> tuple[str, dict]:
    """Register v1, submit the erasure of ``client``, poll it: (request id, its final view)."""
    version = api.call("POST", f"/v1/models/{model}/versions", "aggregator", expect=(200, 201),
                       json={"path": f"{model}/v1"}).json()
    say(f"registered {model} v{version['version']} ({len(version['clients'])} clients, "
        f"content hash {version['content_hash'][:16]}...)")
    body = {"scope": "client", "client_id": client, "model": model, "legal_basis": "art17_1_a",
            "reason": f"lethe demo: client {client} asks that its data be erased"}
    request_id = api.call("POST", "/v1/erasure-requests", "requester", expect=(202,), json=body).json()["id"]
    say(f"erasure request {request_id}: client {client} of {model} v{version['version']} (GDPR Art. 17(1)(a)); "
        "the worker takes it up (its start imports torch: some seconds)")
    return request_id, children.poll(api, request_id, timeout)


def _check_results(api: Api, layout: Layout, model: str, request_id: str, view: dict[str, Any],
                   checks: Checks) -> dict[str, Path | None]:
    """Download the reports, verify the new version's signature (key from /v1/keys) and the audit chain."""
    status = view["status"]
    checks.add(f"request {status}", status == "published",
               "" if status == "published" else json.dumps(view.get("failure"))[:1500])
    print_gates(view, checks)
    paths: dict[str, Path | None] = {"json": layout.reports / f"erasure-{request_id}.json",
                                     "pdf": layout.reports / f"erasure-{request_id}.pdf", "new": None}
    for kind in ("json", "pdf"):
        paths[kind].write_bytes(api.call("GET", f"/v1/erasure-requests/{request_id}/report.{kind}",
                                         "compliance").content)
    checks.add("report.pdf is a PDF", paths["pdf"].read_bytes().startswith(b"%PDF"))
    if status == "published" and view.get("result_version"):
        from workers.signing import VerificationError, verify_directory

        number = view["result_version"]["version"]
        new = api.call("GET", f"/v1/models/{model}/versions/{number}", "compliance").json()
        paths["new"] = layout.artifacts / new["path"]
        served = api.call("GET", "/v1/keys").json()["keys"]
        served_key = layout.reports / "signing-key.pub.pem"
        served_key.write_text(served[0]["pem"] if served else "")
        try:
            verify_directory(paths["new"], served_key)
            checks.add(f"signature of v{number} (key from /v1/keys)", True)
        except VerificationError as exc:
            checks.add(f"signature of v{number} (key from /v1/keys)", False, str(exc)[:1000])
        _check_certificate(api, layout, model, request_id, paths["new"], served_key, checks)
        parent = view["base_version"]["version"]
        gone = api.call("GET", f"/v1/models/{model}/versions/{parent}/download", "aggregator", expect=(200, 410))
        checks.add(f"v{parent} withdrawn (its download answers 410)", gone.status_code == 410)
    chain = api.call("GET", "/v1/audit/verify", "compliance").json()
    checks.add(f"audit chain ({chain.get('events_checked')} events, head {chain.get('head', {}).get('seq')})",
               chain.get("ok") is True, "" if chain.get("ok") else json.dumps(chain.get("first_broken_link")))
    return paths


def _check_certificate(api: Api, layout: Layout, model: str, request_id: str, version_dir: Path, key: Path,
                       checks: Checks) -> None:
    """The erasure certificate, verified as an auditor would (``lethe_format.certificate``): signature, version,
    audit chain with its signed checkpoints."""
    from lethe_format.certificate import verify_certificate

    certificate = layout.reports / f"certificate-{request_id}.json"
    certificate.write_bytes(api.call("GET", f"/v1/erasure-requests/{request_id}/certificate", "compliance").content)
    export = api.call("GET", "/v1/audit/export", "compliance").json()
    (layout.reports / "audit-export.json").write_text(json.dumps(export))
    results = verify_certificate(json.loads(certificate.read_text()), key.read_bytes(), version_dir, export)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    checks.add(f"certificate ({', '.join(r.name for r in results)})", not failed, "; ".join(failed)[:1000])


def _print_where(layout: Layout, settings: Settings, base_url: str, source: Path, model: str,
                 paths: dict[str, Path | None]) -> None:
    say("")
    say("where everything is:")
    say(f"  work folder    {show(layout.workdir)}")
    say(f"  database       {show(layout.database)} (broker {show(layout.var / 'celery-broker.sqlite')})")
    say(f"  signing key    {show(settings.signing_key)} (public {show(settings.signing_public_key)}; served at "
        f"{base_url}/v1/keys)")
    say(f"  federation     {show(source)} -> registered as {model} v1: {show(layout.artifacts / model / 'v1')}")
    if paths["new"] is not None:
        say(f"  new version    {show(paths['new'])} (signature {show(paths['new'] / 'model.sig')})")
    say(f"  reports        {show(paths['json'])}")
    say(f"                 {show(paths['pdf'])}")
    say(f"  logs           {show(layout.logs / 'api.log')}, {show(layout.logs / 'worker.log')}")


def run_demo(federation: Path | None, config: Path, workdir: Path, keep_running: bool = False, port: int = 0,
             timeout: float = 1800.0, grace: float = 30.0) -> int:
    """The whole demo; returns the exit code (see the module docstring)."""
    began = time.monotonic()
    try:
        layout = prepare_workdir(workdir)
        source = obtain_federation(federation, config)
        model, client = federation_identity(source)
        env, settings, tokens = _start_service_state(layout, model, client)
    except (DemoError, SettingsError) as exc:
        say(f"error: {exc}", fg=typer.colors.RED, err=True)
        return 2

    port = port or free_port()
    base_url = f"http://{HOST}:{port}"
    children = Children(layout.logs, grace)
    api = Api(base_url, tokens)
    checks = Checks()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    code = 1
    try:
        children.start("api", api_command(HOST, port, "warning"), env)
        children.start("worker", worker_command(settings.task_queue, "solo", 1, "info",
                                                f"lethe-demo-{os.getpid()}"), env)
        v1 = layout.artifacts / model / "v1"
        say(f"copying the federation to {show(v1)}")
        shutil.copytree(source, v1, ignore=shutil.ignore_patterns(".checkpoint*", "*.tmp"))
        children.wait_ready(api, timeout=180)
        say(f"API ready on {base_url} (docs: {base_url}/docs)")

        request_id, view = _erase_over_rest(api, children, model, client, timeout)
        paths = _check_results(api, layout, model, request_id, view, checks)
        _print_where(layout, settings, base_url, source, model, paths)
        checks.print()
        elapsed = time.monotonic() - began
        if checks.failed:
            say(f"demo FAILED ({', '.join(checks.failed)}) after {elapsed:.0f} s", fg=typer.colors.RED, bold=True,
                err=True)
            code = 1
        else:
            say(f"demo passed: client {client} erased, v{view['result_version']['version']} published, signed and "
                f"verified, audit chain intact ({elapsed:.0f} s)", fg=typer.colors.GREEN, bold=True)
            code = 0
        if keep_running:
            say(f"\nAPI on {base_url} (docs: {base_url}/docs) with one worker; Ctrl-C stops them. Tokens:")
            for role, token in tokens.items():
                say(f"  {role:<11} {token}")
            say(f"  e.g. curl -H 'Authorization: Bearer {tokens['compliance']}' {base_url}/v1/audit/verify")
            signal.signal(signal.SIGTERM, previous)
            exited = children.supervisor.run()
            code = code or exited
    except DemoFailure as exc:
        say(f"demo FAILED: {exc}", fg=typer.colors.RED, bold=True, err=True)
        code = 1
    except KeyboardInterrupt:
        say("interrupted", err=True)
        code = 130
    finally:
        api.close()
        try:
            children.supervisor.stop()
        except KeyboardInterrupt:
            children.supervisor.stop(kill=True)
        signal.signal(signal.SIGTERM, previous)
        if children.supervisor.children:
            say("stopped the API and the worker")
    return code


def _raise_interrupt(_signum, _frame):
    raise KeyboardInterrupt
