"""Does the federation know the erased client's data? Original against retrain, over seeds.

    python -m lethe_bench.real_images [--config ease_engine/configs/real-images.toml]
        [--seeds 0 1 2] [--forget-client 0] [--set training.rounds=30 ...] [--json docs/results/real_images.json]

For every seed (``training.seed`` and ``model.init_seed``) it trains the federation of the
config (the original) and the same schedule without the forget client (the retrain
reference), then measures both on the same galleries:

- ``forget``: the forget client's training pairs (members of the original only);
- ``forget_held_out``: the held-out pairs of the forget client's category (never trained on);
- ``retain``: the other clients' training pairs (a seeded gallery of at most ``--gallery``);
- ``test``: every held-out pair.

Erasure is only measurable where ``forget`` R@1 of the original is clearly above the
retrain's; the summary prints that margin (mean and spread over seeds) next to the wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ease_engine.atomic import write_json
from ease_engine.configs import CONFIG_DIR
from ease_engine.data import by_category
from ease_engine.data.dataset import CaptionDataset
from ease_engine.evaluation.evaluate import retrieval_metrics
from ease_engine.evaluation.splits import sample_gallery, select_split
from ease_engine.federation.config import FederationConfig, load_config, load_federation_data
from ease_engine.federation.fedavg import run_federation
from ease_engine.models.version_io import load_version

DEFAULT_CONFIG = CONFIG_DIR / "real-images.toml"
METRICS = ("i2t_r1", "t2i_r1")


def held_out_of_client(train: CaptionDataset, test: CaptionDataset, config: FederationConfig, client: int):
    """The held-out pairs of ``client``'s categories (category partitions only)."""
    partition = config.partition
    if partition.kind != "category":
        return None
    categories = partition.categories
    if categories is None:  # one client per value, sorted: the same mapping as the train split's
        values = sorted({next(iter(c[partition.category_attribute])) for c in train.concepts})
        categories = [[v] for v in values]
    mine = by_category(test, categories, partition.category_attribute, every_category_present=False) == client
    return test.subset(np.flatnonzero(mine), name=f"held-out:{client}")


def evaluation_splits(config: FederationConfig, client: int, gallery: int) -> dict[str, CaptionDataset]:
    train, test = load_federation_data(config)
    splits = {
        "forget": select_split(train, test, f"client:{client}"),
        "retain": sample_gallery(select_split(train, test, f"retain:{client}"), gallery),
        "test": test,
    }
    own = held_out_of_client(train, test, config, client)
    if own is not None and len(own):
        splits["forget_held_out"] = own
    return splits


def seeded(config: FederationConfig, seed: int, exclude: list[int]) -> FederationConfig:
    out = config.model_copy(deep=True)
    out.training.seed = seed
    out.model.init_seed = seed
    out.training.exclude_clients = exclude
    return out


def measure_seed(config: FederationConfig, client: int, seed: int, workdir: Path, gallery: int) -> dict:
    result: dict = {"seed": seed}
    splits = None
    for role, exclude in (("original", []), ("retrain", [client])):
        cfg = seeded(config, seed, exclude)
        began = time.perf_counter()
        version = run_federation(cfg, workdir / f"seed{seed}" / role, resume=False, show_progress=False)
        wall = time.perf_counter() - began
        splits = splits or evaluation_splits(cfg, client, gallery)
        bundle, metadata = load_version(version)
        result[role] = {
            "wall_seconds": wall,
            "train_seconds": metadata["train_seconds"],
            "splits": {name: retrieval_metrics(bundle, data) for name, data in splits.items()},
        }
    result["gallery_sizes"] = {name: len(data) for name, data in splits.items()}
    return result


def summarise(runs: list[dict]) -> dict:
    """Mean and std over seeds of every R@1, and of the original-minus-retrain margin."""

    def stats(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}

    summary: dict = {"margin": {}}
    for role in ("original", "retrain"):
        summary[role] = {
            split: {m: stats([r[role]["splits"][split][m] for r in runs]) for m in METRICS}
            for split in runs[0][role]["splits"]
        }
        summary[role]["wall_seconds"] = stats([r[role]["wall_seconds"] for r in runs])
    for split in runs[0]["original"]["splits"]:
        summary["margin"][split] = {
            m: stats([r["original"]["splits"][split][m] - r["retrain"]["splits"][split][m] for r in runs])
            for m in METRICS
        }
    return summary


def render(summary: dict, gallery_sizes: dict) -> str:
    lines = [f"{'split':<16}{'n':>5}  {'metric':<7}{'original':>16}{'retrain':>16}{'margin':>16}"]
    for split, size in gallery_sizes.items():
        for m in METRICS:
            cells = [summary[role][split][m] for role in ("original", "retrain")] + [summary["margin"][split][m]]
            text = "".join(f"{c['mean']:>10.1f} ±{c['std']:>4.1f}" for c in cells)
            lines.append(f"{split:<16}{size:>5}  {m:<7}{text}")
    for role in ("original", "retrain"):
        w = summary[role]["wall_seconds"]
        lines.append(f"wall seconds {role}: {w['mean']:.0f} ± {w['std']:.0f}")
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[list[str], object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set needs KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(config: FederationConfig, overrides: list[tuple[list[str], object]]) -> FederationConfig:
    raw = config.model_dump(mode="json")
    for path, value in overrides:
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return FederationConfig.model_validate(raw)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--forget-client", type=int, default=0)
    parser.add_argument("--gallery", type=int, default=500, help="retain gallery size")
    parser.add_argument("--set", dest="overrides", type=_parse_override, action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("runs/real-images"))
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    config = apply_overrides(load_config(args.config), args.overrides)
    runs = []
    for seed in args.seeds:
        runs.append(measure_seed(config, args.forget_client, seed, args.out, args.gallery))
        print(f"seed {seed}: " + json.dumps({r: runs[-1][r]["splits"]["forget"] for r in ("original", "retrain")}))
    summary = summarise(runs)
    print(render(summary, runs[0]["gallery_sizes"]))
    if args.json:
        write_json(
            args.json,
            {
                "config": config.model_dump(mode="json"),
                "forget_client": args.forget_client,
                "gallery_sizes": runs[0]["gallery_sizes"],
                "summary": summary,
                "runs": runs,
            },
        )


if __name__ == "__main__":
    main()
