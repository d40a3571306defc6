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
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from ease_engine.atomic import write_json
from ease_engine.configs import CONFIG_DIR
from ease_engine.data.dataset import CaptionDataset
from ease_engine.evaluation.evaluate import retrieval_metrics
from ease_engine.evaluation.splits import sample_gallery, select_split
from ease_engine.federation.config import FederationConfig, load_config, load_federation_data
from ease_engine.federation.fedavg import run_federation
from ease_engine.models.version_io import load_version
from lethe_bench.machine import describe as describe_machine
from lethe_bench.markdown import replace_section, table

DEFAULT_CONFIG = CONFIG_DIR / "real-images.toml"
METRICS = ("i2t_r1", "t2i_r1")


def evaluation_splits(config: FederationConfig, client: int, gallery: int) -> dict[str, CaptionDataset]:
    data = load_federation_data(config)
    splits = {
        "forget": select_split(data, f"client:{client}"),
        "retain": sample_gallery(select_split(data, f"retain:{client}"), gallery),
        "test": select_split(data, "test"),
    }
    own = select_split(data, f"heldout:{client}")  # the client's own held-out pairs (ease_engine.data.holdout)
    if len(own):
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


SPLIT_LABELS = {
    "forget": "forget client's pairs (members)",
    "forget_held_out": "forget category, held out",
    "retain": "other clients' pairs",
    "test": "held-out test (all categories)",
}


def render_markdown(summary: dict, gallery_sizes: dict, config: FederationConfig, client: int, command: str) -> str:
    """The ``real-images`` section of docs/benchmarks.md."""
    emoji, tc = config.data.emoji, config.training
    seeds = len(summary["margin"]["forget"]["i2t_r1"]["values"])
    category = config.partition.categories[client] if config.partition.categories else f"client {client}"
    rows = []
    for split, size in gallery_sizes.items():
        cells = [SPLIT_LABELS.get(split, split), size, f"{100 / size:.1f}"]
        for m in METRICS:
            for part in (summary["original"][split][m], summary["retrain"][split][m], summary["margin"][split][m]):
                cells.append(f"{part['mean']:.1f} ± {part['std']:.1f}")
        rows.append(cells)
    roles = ("original", "retrain", "margin")
    headers = ["split", "pairs", "chance"] + [f"{r} {m[:3]}" for m in METRICS for r in roles]
    wall = {role: summary[role]["wall_seconds"] for role in ("original", "retrain")}
    return (
        f"## Real images: does the federation know the erased category?\n\nCommand: `{command}` "
        f"({date.today().isoformat()}, {describe_machine()} shared with other jobs). "
        f"Data: the emoji of {', '.join(emoji.groups or ['every group'])} (Noto Color Emoji at {emoji.image_size} px, "
        f"Unicode names{' and CLDR keywords' if emoji.annotations else ''}), {emoji.held_out_fraction:.0%} of every "
        f"group held out; one group per client, client {client} ({', '.join(category)}) erased. "
        f"`{config.model.architecture}`, FedAvg {tc.rounds} rounds x {tc.local_epochs} local epochs, batch "
        f"{tc.batch_size}, lr {tc.lr} -> {tc.lr_min}. Retrain = the same schedule without client {client}. "
        f"R@1 in percent, mean ± std over {seeds} seeds (training and initialisation seed), each split on the same "
        f"gallery for both models; margin = original - retrain.\n\n"
        + table(headers, rows)
        + f"\n\nWall time per run (training, ledger, evaluation of the test split): original "
        f"{wall['original']['mean']:.0f} ± {wall['original']['std']:.0f} s, retrain "
        f"{wall['retrain']['mean']:.0f} ± {wall['retrain']['std']:.0f} s. Chance = 100 / pairs (R@1 of a random "
        "ranking). The data, the partition and how this config was chosen: docs/real-images.md.\n"
    )


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
    parser.add_argument("--docs", type=Path, default=None, help="write the section real-images of this markdown file")
    parser.add_argument("--render", type=Path, default=None, help="no training: print (and --docs) a saved --json")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        config, client = FederationConfig.model_validate(saved["config"]), saved["forget_client"]
        summary, sizes, command = saved["summary"], saved["gallery_sizes"], saved["command"]
    else:
        config = apply_overrides(load_config(args.config), args.overrides)
        client, runs = args.forget_client, []
        for seed in args.seeds:
            runs.append(measure_seed(config, client, seed, args.out, args.gallery))
            print(f"seed {seed}: " + json.dumps({r: runs[-1][r]["splits"]["forget"] for r in ("original", "retrain")}))
        summary, sizes = summarise(runs), runs[0]["gallery_sizes"]
        command = "python -m lethe_bench.real_images " + " ".join(argv if argv is not None else sys.argv[1:])
        if args.json:
            write_json(
                args.json,
                {
                    "command": command,
                    "config": config.model_dump(mode="json"),
                    "forget_client": client,
                    "gallery_sizes": sizes,
                    "summary": summary,
                    "runs": runs,
                },
            )
    print(render(summary, sizes))
    if args.docs:
        replace_section(args.docs, "real-images", render_markdown(summary, sizes, config, client, command))


if __name__ == "__main__":
    main()
