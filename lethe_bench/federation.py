"""Benchmark of the foundation: the default federation, its retrain reference, the ledger.

    python -m lethe_bench.federation [--quick] [--out runs/bench-federation]

Trains the default federation and the same schedule without the exclusive client, each in
its own process (wall time and peak resident memory per run), evaluates both on the
exclusive client's data, the other clients' data and the held-out test set, runs the
concept probe, reads the ledger's size per client and its growth per round, and writes
the section ``federation`` of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from ease_engine.configs import DEFAULT_CONFIG
from ease_engine.federation.config import FederationConfig, load_config
from ease_engine.federation.version_eval import evaluate_version
from lethe_bench.machine import describe as describe_machine
from lethe_bench.markdown import replace_section, table
from lethe_format import layout

QUICK_OVERRIDES = {
    "data": {"scenes": {"n_train": 300, "n_test": 80}},
    "partition": {"n_clients": 3, "n_shared_per_owner": 20},
    "training": {"rounds": 3, "batch_size": 32},
    "ledger": {"rank_cap": 2},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _run_federation_process(config_path: Path, out: Path, exclude: list[int]) -> dict:
    """``lethe federate`` in a child process: wall seconds and that child's peak RSS."""
    cmd = [
        sys.executable,
        "-m",
        "lethe_cli.main",
        "federate",
        "--config",
        str(config_path),
        "--out",
        str(out),
        "--restart",
    ]
    for k in exclude:
        cmd += ["--exclude", str(k)]
    began = time.perf_counter()
    pid = subprocess.Popen(cmd, stdout=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {status}")
    return {"wall_seconds": time.perf_counter() - began, "peak_rss_mib": usage.ru_maxrss / 1024}


GALLERY = 500  # every split is evaluated on a gallery of this many pairs (the test set's size)


def run(config: FederationConfig, workdir: Path, docs: Path | None, command: str, reuse: bool = False) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    owner, (attribute, value) = next(iter(config.partition.owners.items()))
    original, retrain = workdir / "original", workdir / "retrain"
    if reuse:
        previous = json.loads((workdir / "result.json").read_text())
        if json.loads(config_path.read_text()) != json.loads(config.model_dump_json()):
            raise SystemExit(f"--reuse: {workdir} was trained with another config")
        runs = previous["runs"]
    else:
        config_path.write_text(config.model_dump_json(indent=2))
        runs = {
            "original": _run_federation_process(config_path, original, []),
            "retrain": _run_federation_process(config_path, retrain, [owner]),
        }
    splits = [f"client:{owner}", f"retain:{owner}", "test"]
    probe = f"{attribute}={value}"
    evals = {name: evaluate_version(workdir / name, splits, probe, gallery=GALLERY) for name in runs}
    ledger = json.loads((original / "ledger" / "ledger.json").read_text())
    history = json.loads((original / layout.HISTORY).read_text())
    n_clients = len(ledger["clients"])
    result = {
        "runs": runs,
        "evaluation": evals,
        "ledger": {
            "per_client_bytes": {k: v["nbytes"] for k, v in ledger["clients"].items()},
            "total_bytes_per_round": [h["ledger_bytes"] for h in history],
            "rank_cap": ledger["config"]["rank_cap"],
            "n_clients": n_clients,
        },
        "metadata": json.loads((original / "metadata.json").read_text()),
        "owner": owner,
        "probe": probe,
    }
    (workdir / "result.json").write_text(json.dumps(result, indent=2))
    if docs is not None:
        replace_section(docs, "federation", render(result, config, command))
    return result


def render(result: dict, config: FederationConfig, command: str) -> str:
    owner = result["owner"]
    ev = result["evaluation"]
    splits = [
        (f"client:{owner}", f"exclusive client {owner}"),
        (f"retain:{owner}", "other clients"),
        ("test", "held-out test"),
    ]
    rows = []
    for split, label in splits:
        o, r = ev["original"]["retrieval"][split], ev["retrain"]["retrieval"][split]
        rows.append(
            [
                label,
                o["n_images"],
                o["i2t_r1"],
                o["t2i_r1"],
                r["i2t_r1"],
                r["t2i_r1"],
                o["i2t_r1"] - r["i2t_r1"],
                o["t2i_r1"] - r["t2i_r1"],
            ]
        )
    probe_rows = []
    for split in ev["original"]["probe"]:
        o, r = ev["original"]["probe"][split], ev["retrain"]["probe"][split]
        probe_rows.append(
            [split, o["n_images"], o["accuracy"], r["accuracy"], o["accuracy"] - r["accuracy"], o["chance"]]
        )
    recall_rows = []
    for name in ("original", "retrain"):
        m = ev[name]["retrieval"]["test"]
        recall_rows.append([name, *(m[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"))])
    led = result["ledger"]
    per_round = led["total_bytes_per_round"]
    growth = ", ".join(f"{b / led['n_clients'] / 2**20:.1f}" for b in per_round)
    runs = result["runs"]
    md = result["metadata"]
    tc = config.training
    return f"""## Federation foundation (issue 2)

Command: `{command}` ({date.today().isoformat()}, {describe_machine()}, torch threads
default). Setup: `{config.data.source}` with {config.data.scenes.n_train} training and {config.data.scenes.n_test}
test images at {config.data.scenes.image_size} px; {config.partition.n_clients} clients, client {owner} alone holds
`{result["probe"]}` (plus {config.partition.n_shared_per_owner} ordinary pairs); `{config.model.architecture}`
({config.model.mode}, {md["trainable_parameters"]:,} trainable numbers: the token embedding restricted to
{md["token_embedding_rows"]} used rows); FedAvg {tc.rounds} rounds x {tc.local_epochs} local epoch, batch
{tc.batch_size}, lr {tc.lr} -> {tc.lr_min} cosine. Retrain = the same schedule without client {owner}.

| run | wall time | peak RSS |
|---|---|---|
| original federation | {runs["original"]["wall_seconds"] / 60:.1f} min | {runs["original"]["peak_rss_mib"]:.0f} MiB |
| retrain without client {owner} | {runs["retrain"]["wall_seconds"] / 60:.1f} min | {
        runs["retrain"]["peak_rss_mib"]:.0f} MiB |

Recall@K on the held-out test set (percent):

{table(["model", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10"], recall_rows)}

Forgetting is measurable: R@1 of the original and the retrain reference per split, each split on a
seeded gallery of {GALLERY} pairs (R@K falls as a gallery grows, so splits are compared at one size;
`lethe evaluate --gallery {GALLERY}`).

{table(["split", "images", "original i2t", "original t2i", "retrain i2t", "retrain t2i", "gap i2t", "gap t2i"], rows)}

Concept probe (choose the true caption among captions that differ only in the exclusive concept; percent):

{table(["split", "images", "original", "retrain", "gap", "chance"], probe_rows)}

Ledger (rank cap {led["rank_cap"]}): per client {
        ", ".join(f"client {k}: {v / 2**20:.1f} MiB" for k, v in led["per_client_bytes"].items())
    }. Mean per client after each round (MiB): {growth}.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-federation"))
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="a tiny federation (for tests); docs are not written")
    parser.add_argument("--reuse", action="store_true", help="re-evaluate the trained runs of a previous call")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.quick:
        config = FederationConfig.model_validate(_merge(config.model_dump(), QUICK_OVERRIDES))
    command = "python -m lethe_bench.federation" + (" --quick" if args.quick else "")
    result = run(config, args.out, None if args.quick else args.docs, command, reuse=args.reuse)
    ev = result["evaluation"]
    for name in ("original", "retrain"):
        print(
            name,
            json.dumps({k: round(v["i2t_r1"], 1) for k, v in ev[name]["retrieval"].items()}),
            json.dumps({k: round(v["accuracy"], 1) for k, v in ev[name]["probe"].items()}),
        )
    print(
        "peak RSS (MiB):",
        {k: round(v["peak_rss_mib"]) for k, v in result["runs"].items()},
        "own:",
        round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    )


if __name__ == "__main__":
    main()
