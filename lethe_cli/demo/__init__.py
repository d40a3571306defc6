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

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import typer

from lethe_cli.serve import Child, Supervisor, api_command, child_environment, worker_command

HOST = "127.0.0.1"
MARKER = ".lethe-demo"
TERMINAL = {"published", "verification_failed", "failed", "rejected", "cancelled"}
UNSENT_SECONDS = 60.0  # a request still `received` this long: the API cannot reach the broker
# settings the demo always sets itself (a deployment's database, broker or key are never used)
OWN_SETTINGS = ("LETHE_DATABASE_URL", "LETHE_BROKER_URL", "LETHE_RESULT_BACKEND", "LETHE_TASK_QUEUE",
                "LETHE_ARTIFACT_DIR", "LETHE_SIGNING_KEY", "LETHE_SIGNING_PUBLIC_KEY", "LETHE_PUBLIC_BASE_URL",
                "LETHE_AUTO_MIGRATE")


class DemoError(Exception):
    """A set-up problem (bad arguments, unusable work directory): exit code 2."""


class DemoFailure(Exception):
    """The service did not do its job (a process died, a time-out, an unexpected answer): exit code 1."""


@dataclass
class Layout:
    workdir: Path

    @property
    def var(self) -> Path:
        return self.workdir / "var"

    @property
    def database(self) -> Path:
        return self.var / "lethe.db"

    @property
    def artifacts(self) -> Path:
        return self.workdir / "artifacts"

    @property
    def reports(self) -> Path:
        return self.workdir / "reports"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"


@dataclass
class Checks:
    items: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.items.append((name, bool(ok), detail))
        return ok

    @property
    def failed(self) -> list[str]:
        return [name for name, ok, _ in self.items if not ok]


def _say(message: str = "", **style) -> None:
    typer.secho(message, **style) if style else typer.echo(message)


def _mark(ok: bool) -> str:
    return typer.style(" ok ", fg=typer.colors.GREEN) if ok else typer.style("FAIL", fg=typer.colors.RED, bold=True)


def _show(path: Path) -> str:
    """A path relative to the current directory when it is below it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def prepare_workdir(workdir: Path) -> Layout:
    """Create or reset the demo folder. Only a folder the demo made itself (``.lethe-demo`` inside) or an
    empty one is used; its signing key is kept, everything else the demo wrote is removed."""
    layout = Layout(workdir.resolve())
    root = layout.workdir
    if root.exists() and not root.is_dir():
        raise DemoError(f"--workdir {workdir} is not a directory")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise DemoError(f"--workdir {workdir} exists and was not made by `lethe demo` (no {MARKER} in it); "
                        "choose another (the demo resets its folder on every run)")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `lethe demo`; reset (except var/keys) on every run\n")
    for directory in (layout.artifacts, layout.reports, layout.logs):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    layout.var.mkdir(exist_ok=True)
    for pattern in ("lethe.db*", "celery-broker.sqlite*"):
        for stale in layout.var.glob(pattern):
            stale.unlink()
    return layout


def federation_identity(version_dir: Path) -> tuple[str, str]:
    """(model name, client to erase) of a version directory: the config's name and its first exclusive
    owner (the client that alone holds a concept), else client 0."""
    for name in ("metadata.json", "manifest.json"):
        path = version_dir / name
        if path.is_file():
            meta = json.loads(path.read_text())
            break
    else:
        raise DemoError(f"{version_dir} is not a model version directory (no metadata.json or manifest.json)")
    if not (version_dir / "clients.json").is_file():
        raise DemoError(f"{version_dir} has no clients.json")
    config = meta.get("config") or {}
    model = re.sub(r"[^A-Za-z0-9._-]", "-", str(config.get("name") or meta.get("name") or version_dir.name))
    model = model.lstrip("._-")[:200] or "demo"
    owners = (config.get("partition") or {}).get("owners") or {}
    client = str(next(iter(owners), 0))
    clients = json.loads((version_dir / "clients.json").read_text()).get("clients", {})
    if clients and client not in clients:
        client = sorted(clients, key=lambda c: (len(c), c))[0]
    return model, client


def obtain_federation(federation: Path | None, config: Path) -> Path:
    """The version directory to register: ``federation`` as given, or the config's run, trained if needed."""
    if federation is not None:
        if not federation.is_dir():
            raise DemoError(f"--federation {federation}: no such directory")
        _say(f"federation: {_show(federation)} (given)")
        return federation.resolve()
    from ease_engine.federation.config import ConfigError, load_config
    from lethe_cli.engine import DEFAULT_RUN_DIR
    from lethe_cli.logs import setup_logging

    try:
        cfg = load_config(config)
    except (ConfigError, OSError) as exc:
        raise DemoError(f"--config {config}: {exc}") from exc
    out = DEFAULT_RUN_DIR / cfg.name
    if (out / "metrics.json").is_file():
        _say(f"federation: reusing {_show(out)} (delete it to retrain)")
        return out.resolve()
    from ease_engine.federation.fedavg import run_federation

    setup_logging()
    _say(f"federation: training {cfg.name!r} ({cfg.partition.n_clients} clients, {cfg.training.rounds} rounds, "
         f"{cfg.data.scenes.n_train} scenes) into {_show(out)}; a few minutes on CPU, resumable if interrupted")
    began = time.monotonic()
    run_federation(cfg, out)
    _say(f"federation: trained in {time.monotonic() - began:.0f} s")
    return out.resolve()


def demo_environment(layout: Layout, base: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The children's environment: the demo's database and artifacts, the local broker and key pair."""
    env = {key: value for key, value in (os.environ if base is None else base).items() if key not in OWN_SETTINGS}
    env["LETHE_DATABASE_URL"] = f"sqlite:///{layout.database}"
    env["LETHE_ARTIFACT_DIR"] = str(layout.artifacts)
    env.setdefault("LETHE_OUTBOX_POLL_SECONDS", "1")
    env.setdefault("LETHE_WORKER_METRICS_PORT", "0")  # no fixed port on a shared machine
    env["PYTHONUNBUFFERED"] = "1"
    return child_environment(env)


class Api:
    """The REST calls of the demo, with the right token each."""

    def __init__(self, base_url: str, tokens: dict[str, str]):
        self.http = httpx.Client(base_url=base_url, timeout=60.0)
        self.tokens = tokens

    def call(self, method: str, path: str, role: str | None = None, expect=(200,), **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        response = self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code not in expect:
            raise DemoFailure(f"{method} {path} answered {response.status_code}: {response.text[:1000]}")
        return response

    def close(self) -> None:
        self.http.close()


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class Demo:
    def __init__(self, layout: Layout, grace: float = 30.0):
        self.layout = layout
        self.supervisor = Supervisor(grace_seconds=grace, echo=_say)
        self.logs: dict[str, Path] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        log = self.layout.logs / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        child = Child(name, process)
        self.supervisor.children.append(child)
        self.logs[name] = log
        _say(f"started {name} (pid {process.pid}), log {_show(log)}")
        return child

    def check_children(self) -> None:
        for child in self.supervisor.children:
            code = child.process.poll()
            if code is not None:
                raise DemoFailure(f"{child.name} exited with code {code}; end of {_show(self.logs[child.name])}:\n"
                                  f"{_tail(self.logs[child.name])}")

    def wait_ready(self, api: Api, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_children()
            with contextlib.suppress(httpx.HTTPError):
                if api.http.get("/readyz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise DemoFailure(f"the API was not ready within {timeout:.0f} s; end of its log:\n"
                                  f"{_tail(self.logs['api'])}")
            time.sleep(0.5)

    def poll(self, api: Api, request_id: str, timeout: float) -> dict[str, Any]:
        began = time.monotonic()
        last: tuple | None = None
        while True:
            view = api.call("GET", f"/v1/erasure-requests/{request_id}", "requester").json()
            status, stage, progress = view["status"], view.get("stage"), float(view.get("progress") or 0.0)
            key = (status, stage, int(progress * 20))  # a line per stage and per 5 %
            if key != last:
                _say(f"  {time.monotonic() - began:7.1f} s  {status:<20} {stage or '-':<11} {100 * progress:5.1f} %")
                last = key
            if status in TERMINAL:
                return view
            self.check_children()
            if status == "received" and time.monotonic() - began > UNSENT_SECONDS:
                raise DemoFailure(f"request {request_id} was not sent to the broker within {UNSENT_SECONDS:.0f} s; "
                                  f"end of the API log:\n{_tail(self.logs['api'])}")
            if time.monotonic() - began > timeout:
                raise DemoFailure(f"request {request_id} still {status}/{stage} after {timeout:.0f} s (--timeout); "
                                  f"end of the worker log:\n{_tail(self.logs['worker'])}")
            time.sleep(1.0)


def _print_gates(view: dict[str, Any], checks: Checks) -> None:
    result = view.get("result") or {}
    gates = result.get("gates") or (view.get("failure") or {}).get("gates") or []
    if not gates:
        return
    config = result.get("gate_config")
    _say("gates" + (f" ({', '.join(f'{k}={v}' for k, v in config.items())})" if config else "") + ":")
    failed = [str(gate.get("name")) for gate in gates if not gate.get("passed")]
    checks.add(f"gates ({len(gates) - len(failed)} of {len(gates)} passed)", not failed,
               f"failed: {', '.join(failed)}" if failed else "")
    for gate in gates:
        ok = bool(gate.get("passed"))
        value, threshold = gate.get("value"), gate.get("threshold")
        figures = (f"{value:8.3f} {gate.get('comparison', '?')} {threshold:.3f}"
                   if isinstance(value, int | float) and isinstance(threshold, int | float) else "")
        _say(f"  {_mark(ok)}  {gate.get('name', '?'):<22} {figures}")
    before, after = result.get("before") or {}, result.get("metrics") or {}
    if after:
        _say("Recall@1 (image->text / text->image), before -> after:")
        for split, metrics in after.items():
            old = before.get(split) or {}

            def pair(m: dict) -> str:
                return "/".join(f"{m[k]:5.1f}" if isinstance(m.get(k), int | float) else "  -  "
                                for k in ("i2t_r1", "t2i_r1"))

            _say(f"  {split:<10} {pair(old)} -> {pair(metrics)}")


def run_demo(federation: Path | None, config: Path, workdir: Path, keep_running: bool = False, port: int = 0,
             timeout: float = 1800.0, grace: float = 30.0) -> int:
    """The whole demo; returns the exit code (see the module docstring)."""
    began = time.monotonic()
    try:
        layout = prepare_workdir(workdir)
        source = obtain_federation(federation, config)
        model, client = federation_identity(source)
    except DemoError as exc:
        _say(f"error: {exc}", fg=typer.colors.RED, err=True)
        return 2

    from service.auth import create_token
    from service.db import Database, upgrade_database

    key_existed = (layout.var / "keys").is_dir() and any((layout.var / "keys").iterdir())
    env, _notes = demo_environment(layout)
    upgrade_database(env["LETHE_DATABASE_URL"])
    database = Database(env["LETHE_DATABASE_URL"])
    try:
        with database.transaction() as session:
            tokens = {role: create_token(session, f"demo-{role}", role)
                      for role in ("aggregator", "requester", "compliance")}
    finally:
        database.dispose()
    private_key, public_key = Path(env["LETHE_SIGNING_KEY"]), Path(env["LETHE_SIGNING_PUBLIC_KEY"])
    _say(f"database: {_show(layout.database)} (SQLite, migrated); broker: {env['LETHE_BROKER_URL']}")
    _say(f"signing key: {_show(private_key)} ({'kept' if key_existed else 'generated'}; public {_show(public_key)})")
    _say("tokens: aggregator, requester, compliance (stored hashed in the database)")

    port = port or free_port()
    base_url = f"http://{HOST}:{port}"
    demo = Demo(layout, grace)
    api = Api(base_url, tokens)
    checks = Checks()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    code = 1
    try:
        demo.start("api", api_command(HOST, port, "warning"), env)
        demo.start("worker", worker_command(env.get("LETHE_TASK_QUEUE") or None, "solo", 1, "info",
                                            f"lethe-demo-{os.getpid()}"), env)
        v1 = layout.artifacts / model / "v1"
        _say(f"copying the federation to {_show(v1)}")
        shutil.copytree(source, v1, ignore=shutil.ignore_patterns(".checkpoint*", "*.tmp"))
        demo.wait_ready(api, timeout=180)
        _say(f"API ready on {base_url} (docs: {base_url}/docs)")

        version = api.call("POST", f"/v1/models/{model}/versions", "aggregator", expect=(200, 201),
                           json={"path": f"{model}/v1"}).json()
        _say(f"registered {model} v{version['version']} ({len(version['clients'])} clients, "
             f"content hash {version['content_hash'][:16]}...)")
        body = {"scope": "client", "client_id": client, "model": model, "legal_basis": "art17_1_a",
                "reason": f"lethe demo: client {client} asks that its data be erased"}
        accepted = api.call("POST", "/v1/erasure-requests", "requester", expect=(202,), json=body).json()
        request_id = accepted["id"]
        _say(f"erasure request {request_id}: client {client} of {model} v{version['version']} (GDPR Art. 17(1)(a)); "
             "the worker takes it up (its start imports torch: some seconds)")
        view = demo.poll(api, request_id, timeout)
        status = view["status"]
        checks.add(f"request {status}", status == "published",
                   "" if status == "published" else json.dumps(view.get("failure"))[:1500])
        _print_gates(view, checks)

        report_json = layout.reports / f"erasure-{request_id}.json"
        report_pdf = layout.reports / f"erasure-{request_id}.pdf"
        report_json.write_bytes(api.call("GET", f"/v1/erasure-requests/{request_id}/report.json",
                                         "compliance").content)
        report_pdf.write_bytes(api.call("GET", f"/v1/erasure-requests/{request_id}/report.pdf",
                                        "compliance").content)
        checks.add("report.pdf is a PDF", report_pdf.read_bytes().startswith(b"%PDF"))

        new_dir = None
        if status == "published" and view.get("result_version"):
            number = view["result_version"]["version"]
            new = api.call("GET", f"/v1/models/{model}/versions/{number}", "compliance").json()
            new_dir = layout.artifacts / new["path"]
            served = api.call("GET", "/v1/keys").json()["keys"]
            served_key = layout.reports / "signing-key.pub.pem"
            served_key.write_text(served[0]["pem"] if served else "")
            from workers.signing import VerificationError, verify_directory

            try:
                verify_directory(new_dir, served_key)
                checks.add(f"signature of v{number} (key from /v1/keys)", True)
            except VerificationError as exc:
                checks.add(f"signature of v{number} (key from /v1/keys)", False, str(exc)[:1000])
        chain = api.call("GET", "/v1/audit/verify", "compliance").json()
        checks.add(f"audit chain ({chain.get('events_checked')} events, head {chain.get('head', {}).get('seq')})",
                   chain.get("ok") is True, "" if chain.get("ok") else json.dumps(chain.get("first_broken_link")))

        _say("")
        _say("where everything is:")
        _say(f"  work folder    {_show(layout.workdir)}")
        _say(f"  database       {_show(layout.database)} (broker {_show(layout.var / 'celery-broker.sqlite')})")
        _say(f"  signing key    {_show(private_key)} (public {_show(public_key)}; served at {base_url}/v1/keys)")
        _say(f"  federation     {_show(source)} -> registered as {model} v1: {_show(v1)}")
        if new_dir is not None:
            _say(f"  new version    {_show(new_dir)} (signature {_show(new_dir / 'model.sig')})")
        _say(f"  reports        {_show(report_json)}")
        _say(f"                 {_show(report_pdf)}")
        _say(f"  logs           {_show(layout.logs / 'api.log')}, {_show(layout.logs / 'worker.log')}")
        _say("checks:")
        for name, ok, detail in checks.items:
            _say(f"  {_mark(ok)}  {name}" + (f": {detail}" if detail else ""))
        elapsed = time.monotonic() - began
        if checks.failed:
            _say(f"demo FAILED ({', '.join(checks.failed)}) after {elapsed:.0f} s", fg=typer.colors.RED, bold=True,
                 err=True)
            code = 1
        else:
            _say(f"demo passed: client {client} erased, v{view['result_version']['version']} published, signed and "
                 f"verified, audit chain intact ({elapsed:.0f} s)", fg=typer.colors.GREEN, bold=True)
            code = 0
        if keep_running:
            _say(f"\nAPI on {base_url} (docs: {base_url}/docs) with one worker; Ctrl-C stops them. Tokens:")
            for role, token in tokens.items():
                _say(f"  {role:<11} {token}")
            _say(f"  e.g. curl -H 'Authorization: Bearer {tokens['compliance']}' {base_url}/v1/audit/verify")
            signal.signal(signal.SIGTERM, previous)
            exited = demo.supervisor.run()
            code = code or exited
    except DemoFailure as exc:
        _say(f"demo FAILED: {exc}", fg=typer.colors.RED, bold=True, err=True)
        code = 1
    except KeyboardInterrupt:
        _say("interrupted", err=True)
        code = 130
    finally:
        api.close()
        try:
            demo.supervisor.stop()
        except KeyboardInterrupt:
            demo.supervisor.stop(kill=True)
        signal.signal(signal.SIGTERM, previous)
        if demo.supervisor.children:
            _say("stopped the API and the worker")
    return code


def _raise_interrupt(_signum, _frame):
    raise KeyboardInterrupt
