"""The unlearning benchmark: every method against the retrain reference, in one run.

    lethe bench [--quick] [--base runs/bench-federation] [--skip-samples]
    python -m lethe_bench.unlearning ...

Client scope: erase the exclusive client of the default federation. The reference is the
federation trained without it (``<base>/retrain``, made by the federation benchmark, or
trained here if missing); its wall time is that run's training time. Samples scope: erase
``sample_pairs`` pairs of another client; its reference is trained here without them.

Per method: R@1 per split and direction, |gap| to retrain and their mean (Avg. Gap), the
concept probe, MIA AUC (similarity and loss attacks), wall time and speed-up over retrain,
client samples processed, bytes exchanged, ledger bytes, and reactivation after K more
FedAvg rounds (with and without the Forget Lock, plain and with re-injected forget pairs).
Writes the section ``unlearning`` of docs/benchmarks.md and PNG plots beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from ease_engine.federation.config import FederationConfig
from ease_engine.federation.fedavg import run_federation
from ease_engine.models.version_io import load_version
from ease_engine.unlearning import METHODS, ErasureTarget, UnlearningContext
from ease_engine.unlearning.base import BYTES_PER_NUMBER
from lethe_bench.markdown import replace_section, table
from lethe_bench.measure import DIRECTIONS, SPLITS, Bench, Measurement, gaps
from lethe_bench.reactivation import continue_training

# (row label, method, parameters): EASE's ablations are rows of their own
ROWS: list[tuple[str, str, dict]] = [
    ("finetune", "finetune", {}),
    ("pga", "pga", {}),
    ("federaser", "federaser", {}),
    ("sfu", "sfu", {}),
    ("multidelete", "multidelete", {}),
    ("ease", "ease", {}),
    ("ease w/o excision", "ease", {"excise": False}),
    ("ease, entangled blocks excised too", "ease", {"excise_blocks": "exclusive"}),
    ("ease image tower only", "ease", {"towers": "image"}),
    ("ease text tower only", "ease", {"towers": "text"}),
]
REACTIVATION_ROUNDS = 5
REINJECTED_PAIRS = 20


@dataclass
class Row:
    label: str
    measurement: Measurement
    wall_seconds: float
    client_samples: int
    bytes_exchanged: int
    details: dict = field(default_factory=dict)


def reference_row(reference_dir: Path, bench: Bench) -> Row:
    bundle, metadata = load_version(reference_dir)
    numbers = bench.context.numbers_per_model()
    history = json.loads((reference_dir / "history.json").read_text())
    bytes_exchanged = sum(2 * len(h["participants"]) * numbers * BYTES_PER_NUMBER for h in history)
    return Row(
        "retrain (reference)",
        bench.measure(bundle),
        metadata["train_seconds"],
        metadata["samples_processed"],
        bytes_exchanged,
    )


def run_rows(bench: Bench, rows: list[tuple[str, str, dict]], log) -> tuple[list[Row], dict]:
    results, outcomes = [], {}
    for label, method, params in rows:
        spec = METHODS[method]
        if bench.target.scope not in spec.scopes:
            continue
        outcome = spec.unlearn(bench.context, bench.target, spec.params.model_validate(params))
        measurement = bench.measure(outcome.bundle)
        results.append(
            Row(
                label,
                measurement,
                outcome.wall_seconds,
                outcome.cost.client_samples,
                outcome.cost.bytes_exchanged,
                outcome.details,
            )
        )
        outcomes[label] = outcome
        log(
            f"{label}: {outcome.wall_seconds:.1f} s, forget R@1 {measurement.r1('forget', 'i2t'):.1f}/"
            f"{measurement.r1('forget', 't2i'):.1f}"
        )
    return results, outcomes


def reactivation_study(bench: Bench, reference_bundle, ease_outcome, rounds: int, log) -> dict:
    curves = {}
    for label, bundle, lock in [
        ("retrain", reference_bundle, None),
        ("ease + lock", ease_outcome.bundle, ease_outcome.lock),
        ("ease, no lock", ease_outcome.bundle, None),
    ]:
        curves[label] = continue_training(bench, bundle, rounds, lock=lock)
        curves[f"{label}, relearning attack"] = continue_training(
            bench, bundle, rounds, lock=lock, reinjected=min(REINJECTED_PAIRS, len(bench.splits["forget"]))
        )
        log(f"reactivation {label}: forget i2t R@1 {curves[label][-1]['forget_i2t_r1']:.1f}")
    return curves


def scenario(context: UnlearningContext, target: ErasureTarget, reference_dir: Path, rows, rounds: int, log) -> dict:
    bench = Bench.build(context, target)
    reference = reference_row(reference_dir, bench)
    original = Row("original (no erasure)", bench.measure(context.setup.bundle), 0.0, 0, 0)
    results, outcomes = run_rows(bench, rows, log)
    curves = {}
    if "ease" in outcomes and rounds:
        curves = reactivation_study(bench, load_version(reference_dir)[0], outcomes["ease"], rounds, log)
    ledger_bytes = context.ledger.nbytes() if context.ledger else 0
    return {
        "target": {"client": target.client, "scope": target.scope, "n_pairs": len(bench.splits["forget"])},
        "reference": reference,
        "original": original,
        "rows": results,
        "curves": curves,
        "ledger_bytes": ledger_bytes,
    }


def samples_reference(config: FederationConfig, base: Path, pair_ids: list[str]) -> Path:
    """The federation retrained without the erased pairs (cached in ``base``)."""
    out = base / "retrain-samples"
    marker = out / "erased_pairs.json"
    if marker.is_file() and json.loads(marker.read_text()) == pair_ids:
        return out
    from ease_engine.federation.fedavg import prepare_federation

    setup = prepare_federation(config)
    keep = np.asarray([i for i, p in enumerate(setup.train.pair_ids) if p not in set(pair_ids)])
    setup.train = setup.train.subset(keep)
    from ease_engine.federation.training import EncodedCaptions

    setup.captions = EncodedCaptions.build(setup.bundle, setup.train)
    run_federation(config, out, resume=False, setup=setup)
    marker.write_text(json.dumps(pair_ids))
    return out


def pick_sample_pairs(context: UnlearningContext, client: int, n: int, seed: int = 0) -> list[str]:
    items = context.setup.client_items(client)
    chosen = np.sort(np.random.default_rng(seed).choice(items, size=min(n, len(items) - 1), replace=False))
    return [context.setup.train.pair_ids[i] for i in chosen]


# ---------------------------------------------------------------------- report
def _row_cells(row: Row, reference: Row) -> list:
    g = gaps(row.measurement, reference.measurement)
    m = row.measurement
    cells = [row.label]
    for split in SPLITS:
        cells += [m.r1(split, d) for d in DIRECTIONS]
    probe = m.probe_accuracy()
    speed = reference.wall_seconds / row.wall_seconds if row.wall_seconds else float("nan")
    cells += [
        "-" if probe is None else probe,
        f"{m.membership['similarity_auc']:.3f} / {m.membership['loss_auc']:.3f}",
        f"{g['avg_gap']:.2f}",
        f"{row.wall_seconds:.1f}",
        "-" if row is reference or not row.wall_seconds else f"{speed:.0f}x",
        row.client_samples,
        f"{row.bytes_exchanged / 2**20:.1f}",
    ]
    return cells


HEADERS = [
    "method",
    "forget i2t",
    "forget t2i",
    "retain i2t",
    "retain t2i",
    "test i2t",
    "test t2i",
    "probe",
    "MIA AUC sim / loss",
    "Avg. Gap",
    "wall s",
    "speed-up",
    "client samples",
    "MiB exchanged",
]


def render_scenario(title: str, result: dict) -> str:
    reference = result["reference"]
    rows = [result["original"], reference, *result["rows"]]
    body = table(HEADERS, [_row_cells(r, reference) for r in rows])
    gap_rows = []
    for r in result["rows"]:
        g = gaps(r.measurement, reference.measurement)
        gap_rows.append(
            [
                r.label,
                *(f"{g[f'{s}_{d}']:.1f}" for s in SPLITS for d in DIRECTIONS),
                "-" if "probe" not in g else f"{g['probe']:.1f}",
                f"{g['mia_similarity_auc']:.3f}",
                f"{g['avg_gap']:.2f}",
            ]
        )
    gap_table = table(
        ["method", *(f"|gap| {s} {d}" for s in SPLITS for d in DIRECTIONS), "|gap| probe", "|gap| MIA sim", "Avg. Gap"],
        gap_rows,
    )
    t = result["target"]
    text = (
        f"### {title}\n\nTarget: client {t['client']}, scope {t['scope']}, {t['n_pairs']} forget pairs. "
        f"Ledger: {result['ledger_bytes'] / 2**20:.1f} MiB for the whole federation. R@1 in percent.\n\n"
        f"{body}\n\nGaps to retrain (points; MIA in AUC):\n\n{gap_table}\n"
    )
    if result["curves"]:
        curve_rows = []
        for label, curve in result["curves"].items():
            last = curve[-1]
            curve_rows.append(
                [
                    label,
                    f"{curve[0]['forget_i2t_r1']:.1f} -> {last['forget_i2t_r1']:.1f}",
                    f"{curve[0]['forget_t2i_r1']:.1f} -> {last['forget_t2i_r1']:.1f}",
                    "-" if last["probe"] is None else f"{curve[0]['probe']:.1f} -> {last['probe']:.1f}",
                    f"{last['similarity_auc']:.3f}",
                    sum(p["lock_interventions"] for p in curve),
                ]
            )
        text += (
            f"\nReactivation: {len(next(iter(result['curves'].values()))) - 1} more FedAvg rounds on the "
            f"retained clients (relearning attack: {REINJECTED_PAIRS} forget pairs re-injected into one "
            f"client):\n\n"
            + table(
                ["run", "forget i2t R@1", "forget t2i R@1", "probe", "MIA sim AUC", "lock interventions"], curve_rows
            )
            + "\n"
        )
    return text


def plot(results: dict[str, dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items(), strict=True):
        reference = result["reference"]
        for row in result["rows"]:
            g = gaps(row.measurement, reference.measurement)["avg_gap"]
            ax.scatter(max(row.wall_seconds, 1e-2), g)
            ax.annotate(row.label, (max(row.wall_seconds, 1e-2), g), fontsize=7)
        ax.axvline(reference.wall_seconds, color="grey", ls="--", label="retrain time")
        ax.set_xscale("log")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("Avg. Gap to retrain (R@1 points)")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "avg_gap_vs_time.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    client = results.get("client")
    if client and client["curves"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for label, curve in client["curves"].items():
            rounds = [p["round"] for p in curve]
            axes[0].plot(rounds, [p["forget_i2t_r1"] for p in curve], marker="o", label=label)
            if curve[0]["probe"] is not None:
                axes[1].plot(rounds, [p["probe"] for p in curve], marker="o", label=label)
        axes[0].set_ylabel("forget i2t R@1 (%)")
        axes[1].set_ylabel("concept probe (%)")
        for ax in axes:
            ax.set_xlabel("further FedAvg rounds")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / "reactivation.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        ease_row = next((r for r in client["rows"] if r.label == "ease"), None)
        if ease_row is not None:
            angles = ease_row.details["angles"]["principal_angles_deg"]
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.hist(angles, bins=45, range=(0, 90))
            ax.set_xlabel("principal angle between forget directions and retained support (degrees)")
            ax.set_ylabel("directions")
            ax.set_title(f"client {client['target']['client']}: {len(angles)} forget directions")
            fig.tight_layout()
            paths.append(out_dir / "principal_angles.png")
            fig.savefig(paths[-1], dpi=110)
            plt.close(fig)
    return paths


def to_json(result: dict) -> dict:
    def row(r: Row) -> dict:
        return {
            "label": r.label,
            "measurement": r.measurement.to_json(),
            "wall_seconds": r.wall_seconds,
            "client_samples": r.client_samples,
            "bytes_exchanged": r.bytes_exchanged,
            "details": {k: v for k, v in r.details.items() if k != "history"},
        }

    return {
        **result,
        "reference": row(result["reference"]),
        "original": row(result["original"]),
        "rows": [row(r) for r in result["rows"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base",
        type=Path,
        default=Path("runs/bench-federation"),
        help="folder with original/ and retrain/ (the federation benchmark's output)",
    )
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="a tiny federation, few rounds; docs are not written")
    parser.add_argument("--skip-samples", action="store_true", help="client scope only")
    parser.add_argument("--sample-pairs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=REACTIVATION_ROUNDS, help="reactivation rounds")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    base = args.base
    if args.quick:
        from ease_engine.configs import DEFAULT_CONFIG
        from ease_engine.federation.config import load_config
        from lethe_bench.federation import QUICK_OVERRIDES, _merge

        base = base.with_name(base.name + "-quick")
        config = FederationConfig.model_validate(_merge(load_config(DEFAULT_CONFIG).model_dump(), QUICK_OVERRIDES))
        config.ledger.store_updates_every = 1
        if not (base / "original" / "metrics.json").is_file():
            run_federation(config, base / "original", show_progress=False)
        owner = next(iter(config.partition.owners))
        if not (base / "retrain" / "metrics.json").is_file():
            retrain_config = config.model_copy(deep=True)
            retrain_config.training.exclude_clients = [owner]
            run_federation(retrain_config, base / "retrain", show_progress=False)
        args.sample_pairs = min(args.sample_pairs, 5)
        args.rounds = min(args.rounds, 1)
    for needed in ("original", "retrain"):
        if not (base / needed / "metrics.json").is_file():
            raise SystemExit(f"{base / needed} is missing: run `python -m lethe_bench.federation` first")
    context = UnlearningContext.load(base / "original")
    config = context.config
    owner = next(iter(config.partition.owners))
    results = {"client": scenario(context, ErasureTarget(owner), base / "retrain", ROWS, args.rounds, log)}
    if not args.skip_samples:
        other = next(k for k in context.setup.clients if k != owner)
        pairs = pick_sample_pairs(context, other, args.sample_pairs)
        reference = samples_reference(config, base, pairs)
        results["samples"] = scenario(context, ErasureTarget(other, tuple(pairs)), reference, ROWS, 0, log)
    (base / "unlearning.json").write_text(
        json.dumps({k: to_json(v) for k, v in results.items()}, indent=2, default=str)
    )
    if args.quick:
        return
    plots = plot(results, args.docs.parent / "plots")
    command = "lethe bench" + (" --skip-samples" if args.skip_samples else "")
    text = (
        f"## Unlearning benchmark (issue 3)\n\nCommand: `{command}` ({date.today().isoformat()}, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores), on the default federation of the section above. "
        "Wall times are of one run on a shared 2-core machine: compare them as ratios.\n\n"
    )
    text += render_scenario("Client scope: the exclusive client", results["client"])
    if "samples" in results:
        text += "\n" + render_scenario(f"Sample scope: {args.sample_pairs} pairs of one client", results["samples"])
    text += "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    replace_section(args.docs, "unlearning", text)


if __name__ == "__main__":
    main()
