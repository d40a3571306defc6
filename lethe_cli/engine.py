"""The engine's commands of ``lethe``: federate, evaluate, federation-demo, erase, methods, bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ease_engine.configs import DEFAULT_CONFIG
from ease_engine.data.errors import DataError
from lethe_cli.logs import setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lethe: verified erasure for federated CLIP.")
HELP = app.info.help

DEFAULT_RUN_DIR = Path("runs")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _format_metrics(title: str, metrics: dict) -> str:
    keys = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    cells = "  ".join(f"{k}={metrics[k]:5.1f}" for k in keys if k in metrics)
    return f"{title:<22} {cells}  (n={metrics.get('n_images', '?')})"


@app.command()
def federate(
    config: Annotated[Path, typer.Option("--config", "-c", help="federation config (.toml or .json)")] = DEFAULT_CONFIG,
    out: Annotated[Path | None, typer.Option(help="version directory to write (default runs/<name>)")] = None,
    exclude: Annotated[list[int] | None, typer.Option(help="leave this client out (retrain reference)")] = None,
    restart: Annotated[bool, typer.Option(help="ignore a checkpoint of an interrupted run")] = False,
    engine: Annotated[
        str, typer.Option(help="builtin: Lethe's FedAvg simulation; flower: Flower's Simulation Engine (needs flwr)")
    ] = "builtin",
    continue_from: Annotated[
        Path | None, typer.Option(help="flower: continue this version (its weights, ledger and Forget Lock)")
    ] = None,
) -> None:
    """Train a federation with FedAvg and write a model version with its ledger."""
    from ease_engine.federation.config import ConfigError, load_config
    from ease_engine.federation.fedavg import FederationError, run_federation

    setup_logging()
    if engine not in ("builtin", "flower"):
        _fail(f"--engine must be builtin or flower, not {engine!r}")
    if continue_from is not None and engine != "flower":
        _fail("--continue-from needs --engine flower")
    try:
        cfg = load_config(config)
        if exclude:
            cfg.training.exclude_clients = sorted(set(cfg.training.exclude_clients) | set(exclude))
        out = out or DEFAULT_RUN_DIR / cfg.name
        if engine == "flower":
            path = _federate_with_flower(cfg, out, continue_from)
        else:
            path = run_federation(cfg, out, resume=not restart)
    except (ConfigError, DataError, FederationError, FileExistsError) as exc:
        _fail(str(exc))
    metrics = json.loads((path / "metrics.json").read_text())
    typer.echo(f"wrote {path}")
    if "test" in metrics:
        typer.echo(_format_metrics("test", metrics["test"]))


def _federate_with_flower(cfg, out: Path, continue_from: Path | None) -> Path:
    """``federate --engine flower``: lethe_flower is imported only here (the engine does not need flwr)."""
    try:
        from lethe_flower.run import run_flower_federation
    except ImportError as exc:
        _fail(f"--engine flower needs Flower ({exc.name} is missing): pip install -e '.[flower]'")
    from lethe_flower.lineage import LineageError
    from lethe_flower.records import ReplyError
    from lethe_flower.run import FlowerRunError
    from lethe_flower.strategy import RoundFailedError

    try:
        return run_flower_federation(cfg, out, continue_from)
    except (LineageError, ReplyError, FlowerRunError, RoundFailedError) as exc:
        _fail(str(exc))


@app.command()
def evaluate(
    version: Annotated[Path, typer.Argument(help="a model version directory")],
    split: Annotated[
        list[str] | None, typer.Option(help="test | train | client:K | retain:K (all clients but K); repeatable")
    ] = None,
    probe: Annotated[str | None, typer.Option(help="concept probe ATTRIBUTE=VALUE, e.g. colour=purple")] = None,
    gallery: Annotated[
        int | None, typer.Option(help="evaluate each split on a seeded sample of this many pairs")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Recall@1/5/10 (both directions) of a version on data splits, and the concept probe."""
    from ease_engine.federation.version_eval import evaluate_version
    from ease_engine.models.factory import ModelError

    setup_logging()
    try:
        result = evaluate_version(version, split or ["test"], probe, gallery=gallery)
    except (DataError, ModelError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, metrics in result["retrieval"].items():
        typer.echo(_format_metrics(name, metrics))
    _echo_probes(result)


def _echo_probes(result: dict) -> None:
    for name, p in result.get("probe", {}).items():
        untrained = (f"  outscores {p['beats_untrained']:.1f}% of {p['n_untrained']} untrained words"
                     if "beats_untrained" in p else "")
        typer.echo(f"probe {name:<16} accuracy={p['accuracy']:.1f}%  chance={p['chance']:.1f}%{untrained}  "
                   f"(n={p['n_images']})")


@app.command("federation-demo")
def federation_demo(
    out: Annotated[Path, typer.Option(help="where the default federation is written")] = DEFAULT_RUN_DIR / "default",
    config: Annotated[Path, typer.Option("--config", "-c")] = DEFAULT_CONFIG,
) -> None:
    """Train (or reuse) the default federation and evaluate it (no service; `lethe demo` runs the whole service)."""
    from ease_engine.federation.config import load_config
    from ease_engine.federation.fedavg import run_federation
    from ease_engine.federation.version_eval import evaluate_version

    setup_logging()
    cfg = load_config(config)
    if (out / "metrics.json").is_file():
        typer.echo(f"reusing the federation in {out} (delete it to retrain)")
    else:
        typer.echo(
            f"training the default federation ({cfg.partition.n_clients} clients, {cfg.training.rounds} "
            f"rounds, {cfg.data.scenes.n_train} scenes) into {out}"
        )
        run_federation(cfg, out)
    owner, (attribute, value) = next(iter(cfg.partition.owners.items()))
    result = evaluate_version(out, ["test", f"client:{owner}", f"retain:{owner}"], f"{attribute}={value}", gallery=500)
    for name, metrics in result["retrieval"].items():
        typer.echo(_format_metrics(name, metrics))
    _echo_probes(result)
    typer.echo(f"version: {out}  (ledger: {out / 'ledger'})")


@app.command()
def erase(
    version: Annotated[Path, typer.Argument(help="the model version to erase from")],
    out: Annotated[Path, typer.Option(help="directory for the new version")],
    client: Annotated[int, typer.Option(help="the client whose data is erased")],
    pairs: Annotated[Path | None, typer.Option(help="file of pair ids (one per line): erase only these")] = None,
    method: Annotated[str, typer.Option(help="unlearning method (`lethe methods`; `noop` is the control)")] = "ease",
    params: Annotated[str | None, typer.Option(help="method parameters as JSON, e.g. '{\"steps\": 40}'")] = None,
    concept: Annotated[str | None, typer.Option(help="a concept only this client held, ATTRIBUTE=VALUE (adds the "
                                                     "concept-probe gate)")] = None,
    reference: Annotated[Path | None, typer.Option(help="a retrain reference version, reported beside the "
                                                        "gates")] = None,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
) -> None:
    """Erase a client (or some of its pairs), verify, and write the new version only if verified; prints the
    gates (each beside the same gate measured on the unchanged parent) and the verdict."""
    from ease_engine.erasure import erase as run_erasure
    from ease_engine.unlearning import ErasureTarget, UnlearningError

    setup_logging()
    try:
        pair_ids = None
        if pairs is not None:
            if not pairs.is_file():
                raise UnlearningError(f"pair id file not found: {pairs}")
            pair_ids = tuple(line.strip() for line in pairs.read_text().splitlines() if line.strip())
            if not pair_ids:
                raise UnlearningError(f"{pairs} lists no pair ids")
        named = None
        if concept is not None:
            attribute, _, value = concept.partition("=")
            if not value:
                raise UnlearningError(f"--concept must be ATTRIBUTE=VALUE, got {concept!r}")
            named = (attribute, value)
        parsed = json.loads(params) if params else None
        result = run_erasure(version, ErasureTarget(client, pair_ids), method, parsed, out, reference_dir=reference,
                             device=device, concept=named)
    except json.JSONDecodeError as exc:
        _fail(f"--params is not valid JSON: {exc}")
    except (UnlearningError, DataError, FileNotFoundError) as exc:
        _fail(str(exc))
    report = result.report
    for gate in report.gates:
        typer.echo(f"{'pass' if gate.passed else 'FAIL'}  {gate.summary()}   (parent: {gate.control_value})")
    typer.echo(f"{method} took {result.outcome.wall_seconds:.1f} s; verdict: {report.verdict}")
    for reason in report.reasons:
        typer.echo(f"  {reason}")
    if result.version_dir is None:
        typer.secho(f"verification {report.verdict}: no version was written", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"wrote {result.version_dir}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run every unlearning method on every scenario and seed against the retrain reference; write
    docs/benchmarks.md and docs/results/unlearning.json.

    Options are those of `python -m lethe_bench.unlearning --help` (--scenarios, --seeds, --quick, --root).
    """
    from lethe_bench.unlearning import main as bench_main

    setup_logging()
    bench_main(list(ctx.args))


@app.command()
def methods() -> None:
    """List the unlearning methods and their parameters."""
    from ease_engine.unlearning import METHODS

    for name, spec in METHODS.items():
        fields = ", ".join(f"{k}={v.default!r}" for k, v in spec.params.model_fields.items())
        typer.echo(f"{name:<12} {spec.summary}\n{'':<12} {fields or '(no parameters)'}")
