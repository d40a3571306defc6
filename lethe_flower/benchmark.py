"""What the Flower path costs over the built-in simulation, and whether it trains the same model.

    python -m lethe_flower.benchmark --out docs/results/flower.json \\
        [--compare runs/default-builtin runs/default-flower [--erased runs/default-flower-erased]]

1. Overhead, controlled: the default model (``lethe-tiny``, full) on a smaller ``scenes`` set so that the
   per-round cost of Flower (messages, serialization, Ray scheduling) is visible next to training; the
   built-in simulation and Flower's Simulation Engine alternate ``--reps`` times, each client trained with
   one torch thread, one client at a time in both (Ray given one CPU). Per run: the wall time, the
   seconds of every round (history.json), and whether the weights are bit-identical.
2. The cost of one model's trip through Flower's records (serialization both ways), default model.
3. ``--compare``: two versions of the same config already trained by ``lethe federate`` with
   ``--engine builtin`` and ``--engine flower``: weight difference, test metrics, round seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load_file

from ease_engine.atomic import write_json
from ease_engine.configs import DEFAULT_CONFIG
from ease_engine.federation.config import load_config
from ease_engine.federation.fedavg import run_federation
from lethe_flower.run import run_flower_federation


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "open_clip_model.safetensors")), load_file(str(b / "open_clip_model.safetensors"))
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def round_seconds(version: Path) -> list[float]:
    return [h["seconds"] for h in json.loads((version / "history.json").read_text())]


def summary(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def overhead_config(rounds: int, n_train: int):
    config = load_config(DEFAULT_CONFIG)
    config.name = "flower-overhead"
    config.data.scenes.n_train = n_train
    config.data.scenes.n_test = 200
    config.partition.n_shared_per_owner = min(config.partition.n_shared_per_owner, n_train // 30)
    config.training.rounds = rounds
    config.training.threads = 1
    config.ledger.store_updates_every = 0
    return config


def measure_overhead(work: Path, reps: int, rounds: int, n_train: int) -> dict:
    config = overhead_config(rounds, n_train)
    runs = []
    for rep in range(reps):
        for engine in ("builtin", "flower"):
            out = work / f"{engine}-{rep}"
            began = time.perf_counter()
            if engine == "builtin":
                run_federation(config, out, resume=False, show_progress=False)
            else:
                run_flower_federation(config, out, cpus=1, show_progress=False)
            wall = time.perf_counter() - began
            seconds = round_seconds(out)
            runs.append({"engine": engine, "rep": rep, "wall_seconds": wall, "round_seconds": seconds,
                         "load_average": os.getloadavg()[0]})
            print(f"{engine} rep {rep}: wall {wall:.1f} s, rounds {[round(s, 2) for s in seconds]}", flush=True)
    identical = all(max_weight_difference(work / f"builtin-{r}", work / f"flower-{r}") == 0.0 for r in range(reps))

    def later_rounds(engine: str) -> list[float]:  # round 1 of Flower also starts the actors and builds the data
        return [s for run in runs if run["engine"] == engine for s in run["round_seconds"][1:]]

    def first_round(engine: str) -> list[float]:
        return [run["round_seconds"][0] for run in runs if run["engine"] == engine]

    def walls(engine: str) -> list[float]:
        return [run["wall_seconds"] for run in runs if run["engine"] == engine]

    builtin_round, flower_round = summary(later_rounds("builtin")), summary(later_rounds("flower"))
    return {
        "config": config.model_dump(mode="json"),
        "clients": config.partition.n_clients,
        "runs": runs,
        "weights_bit_identical": identical,
        "round_seconds_after_the_first": {"builtin": builtin_round, "flower": flower_round},
        "overhead_per_round_seconds": flower_round["mean"] - builtin_round["mean"],
        "overhead_per_round_relative": flower_round["mean"] / builtin_round["mean"] - 1,
        "first_round_seconds": {"builtin": summary(first_round("builtin")), "flower": summary(first_round("flower"))},
        "wall_seconds": {"builtin": summary(walls("builtin")), "flower": summary(walls("flower"))},
    }


def measure_messages(repeats: int = 5) -> dict:
    """One model's trip through Flower's records: blocks -> ArrayRecord -> bytes (deflate) -> ArrayRecord ->
    blocks, for the default model; a round moves this twice per client (down and back)."""
    from flwr.app import RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from ease_engine.federation.fedavg import prepare_federation
    from ease_engine.models.blocks import read_blocks
    from lethe_flower.records import arrays_to_blocks, blocks_to_arrays

    setup = prepare_federation(load_config(DEFAULT_CONFIG))
    values = read_blocks(setup.bundle.model, setup.blocks)
    seconds, nbytes = [], 0
    for _ in range(repeats):
        began = time.perf_counter()
        record = RecordDict({"arrays": blocks_to_arrays(values)})
        contents = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(record).items()}
        nbytes = sum(len(c) for c in contents.values())
        back = arrays_to_blocks(inflate_object_from_contents(record.object_id, contents)["arrays"])
        seconds.append(time.perf_counter() - began)
        assert all(torch.equal(back[k], values[k]) for k in values)
    return {"blocks": len(values), "numbers": sum(v.numel() for v in values.values()), "bytes": nbytes,
            "seconds_per_model_trip": summary(seconds)}


def compare_versions(builtin: Path, flower: Path, erased: Path | None) -> dict:
    def load(version: Path) -> dict:
        return {
            "path": str(version),
            "metrics": json.loads((version / "metrics.json").read_text()),
            "train_seconds": json.loads((version / "metadata.json").read_text()).get("train_seconds"),
            "round_seconds": summary(round_seconds(version)[1:]),
            "first_round_seconds": round_seconds(version)[0],
        }

    out = {"builtin": load(builtin), "flower": load(flower)}
    out["max_weight_difference"] = max_weight_difference(builtin, flower)
    if erased is not None:
        verification = json.loads((erased / "verification.json").read_text())
        out["erased"] = {
            "path": str(erased),
            "gates": verification["gates"],
            "before": verification["before"],
            "after": verification["metrics"],
            "has_forget_lock": (erased / "forget_lock" / "forget_lock.json").is_file(),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/results/flower.json"))
    parser.add_argument("--work", type=Path, default=Path("runs/flower-benchmark"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BUILTIN", "FLOWER"))
    parser.add_argument("--erased", type=Path)
    parser.add_argument("--skip-overhead", action="store_true", help="only --compare (keeps an earlier overhead)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    result["date"] = datetime.now(UTC).date().isoformat()
    if not args.skip_overhead:
        result["overhead"] = measure_overhead(args.work, args.reps, args.rounds, args.n_train)
    result["messages"] = measure_messages()
    if args.compare:
        result["default_config"] = compare_versions(*args.compare, args.erased)
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.get("overhead", {}).items() if k not in ("runs", "config")}, indent=1))


if __name__ == "__main__":
    main()
