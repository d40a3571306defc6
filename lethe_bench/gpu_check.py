"""A GPU check of the engine: federated training steps under CUDA + AMP and an EASE erasure, timed.

``scripts/gpu_check.sh`` runs ``python -m lethe_bench.gpu_check``. By default, on ``cuda``:

1. a FedAvg federation (``ease_engine.federation.fedavg.run_federation``) of open_clip ``ViT-B-32`` in
   ``lora`` mode (adapters on both towers), random initialisation unless ``--weights`` names a local weights
   file, with ``training.amp`` (bfloat16 autocast) and the contribution ledger, on the built-in ``scenes`` data
   (client 0 alone owns the purple objects);
2. an EASE erasure of client 0 (``ease_engine.erasure.erase``: excision, displacement, Forget Lock,
   verification, the new version written);

printing the seconds per training step and per round, the erasure's wall time, the peak GPU memory of each
phase, and whether autocast really ran the matmuls in bfloat16 (a forward hook on an MLP layer sees the dtype).
The defaults are meant to take well under 8 minutes on a data-centre GPU (not yet timed on one). Without CUDA
it prints that it skips and exits 0; ``--device cpu`` runs the same code on the CPU (``--architecture
lethe-micro --quick --threads 1`` makes that a seconds-long smoke test). Exit status 1 when a phase raises, a
training loss is not finite, AMP was asked for but the layer did not compute in bfloat16, or no version was
written.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

SCENES_IMAGE_SIZE = 64  # the scenes images are drawn at this size, then resized to the model's resolution


def build_config(args: argparse.Namespace):
    from ease_engine.federation.config import FederationConfig

    n_train = args.clients * args.pairs_per_client
    model = {"architecture": args.architecture, "mode": args.mode, "lora_rank": args.lora_rank}
    if args.weights:
        model["pretrained"] = str(args.weights)
    return FederationConfig.model_validate({
        "name": "gpu-check",
        "data": {"scenes": {"n_train": n_train, "n_test": args.test_pairs, "image_size": args.image_size,
                            "seed": 0}},
        "partition": {"kind": "exclusive", "n_clients": args.clients,
                      "n_shared_per_owner": max(2, args.pairs_per_client // 4), "seed": 0},
        "model": model,
        "training": {"rounds": args.rounds, "local_epochs": 1, "batch_size": args.batch_size, "lr": 1e-3,
                     "warmup_rounds": 0, "device": args.device, "amp": args.amp, "seed": 0,
                     "threads": args.threads},
        "ledger": {"rank_cap": args.ledger_rank},
    })


class Memory:
    """Peak memory of the device (CUDA) between ``reset`` and ``peak_mib``; None elsewhere."""

    def __init__(self, device: str):
        import torch

        self.cuda = torch.device(device).type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def autocast_probe(model):
    """A forward hook on the first MLP input layer of the model, recording the dtypes of its outputs while the
    model trains (evaluation runs without autocast)."""
    seen: set[str] = set()
    layer = next((module for name, module in model.named_modules() if name.endswith("mlp.c_fc")), None)
    if layer is None:
        return seen, None

    def record(module, _inputs, output):
        if module.training:
            seen.add(str(output.dtype))

    return seen, layer.register_forward_hook(record)


def run_check(args: argparse.Namespace, workdir: Path) -> dict:
    import torch

    from ease_engine.erasure import erase
    from ease_engine.federation.fedavg import prepare_federation, run_federation
    from ease_engine.unlearning import ErasureTarget
    from ease_engine.verification.report import GateConfig
    from lethe_format import layout

    config = build_config(args)
    memory = Memory(args.device)
    result: dict = {"device": args.device, "architecture": args.architecture, "mode": args.mode,
                    "amp": args.amp, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(torch.device(args.device)) if memory.cuda else None}

    memory.reset()
    began = time.perf_counter()
    setup = prepare_federation(config)
    result["setup_seconds"] = round(time.perf_counter() - began, 3)
    result["trainable_parameters"] = sum(p.numel() for p in setup.bundle.model.parameters() if p.requires_grad)
    seen_dtypes, hook = autocast_probe(setup.bundle.model)
    began = time.perf_counter()
    version = run_federation(config, workdir / "federation", resume=False, show_progress=False, setup=setup)
    memory.sync()
    result["federation_seconds"] = round(time.perf_counter() - began, 3)
    if hook is not None:
        hook.remove()
    result["federation_peak_gpu_mib"] = memory.peak_mib()
    result["autocast_dtypes"] = sorted(seen_dtypes)
    history = json.loads((version / layout.HISTORY).read_text())
    result["rounds"] = [
        {"round": entry["round"], "seconds": round(entry["seconds"], 3), "steps": entry["steps"],
         "train_seconds": round(entry["train_seconds"], 3),
         "seconds_per_step": round(entry["train_seconds"] / max(entry["steps"], 1), 4), "loss": round(entry["loss"], 4)}
        for entry in history
    ]
    steady = result["rounds"][1:] or result["rounds"]  # round 0 pays for CUDA warm-up
    steps = max(sum(r["steps"] for r in steady), 1)
    result["seconds_per_step_steady"] = round(sum(r["train_seconds"] for r in steady) / steps, 4)
    result["seconds_per_round_steady"] = round(sum(r["seconds"] for r in steady) / len(steady), 3)

    del setup
    if memory.cuda:
        torch.cuda.empty_cache()
    memory.reset()
    began = time.perf_counter()
    stages: list[tuple[str, float]] = []
    erasure = erase(version, ErasureTarget(0), "ease", {"steps": args.erase_steps, "check_every": 10},
                    workdir / "erased", GateConfig(max_split_items=args.test_pairs),
                    on_stage=lambda stage, _progress: stages.append((stage, time.perf_counter())),
                    publish_on_failure=True, device=args.device)
    memory.sync()
    ended = time.perf_counter()
    result["erasure_wall_seconds"] = round(ended - began, 3)
    result["erasure_stage_seconds"] = {
        stage: round((stages[i + 1][1] if i + 1 < len(stages) else ended) - at, 3)
        for i, (stage, at) in enumerate(stages)
    }
    result["erasure_peak_gpu_mib"] = memory.peak_mib()
    result["erasure_gates"] = {gate.name: gate.passed for gate in erasure.report.gates}
    result["erasure_displacement_steps"] = (erasure.outcome.details.get("displacement") or {}).get("steps")
    written = erasure.version_dir
    result["erased_version_written"] = written is not None and (written / "manifest.json").is_file()
    return result


def problems(result: dict) -> list[str]:
    """What makes the check fail (beyond an exception): non-finite losses, AMP that did not run in bfloat16."""
    found = [f"round {r['round']} loss is {r['loss']}" for r in result["rounds"] if not math.isfinite(r["loss"])]
    if result["amp"] and result["autocast_dtypes"] and "torch.bfloat16" not in result["autocast_dtypes"]:
        found.append(f"training.amp is on but the MLP layer computed in {result['autocast_dtypes']}")
    if not result["erased_version_written"]:
        found.append("the erasure wrote no version")
    return found


def print_summary(result: dict) -> None:
    def memory(value):
        return "n/a (not CUDA)" if value is None else f"{value:.0f} MiB"

    print(f"device {result['device']} ({result['gpu'] or 'CPU'}), torch {result['torch']}, "
          f"{result['architecture']} {result['mode']}, {result['trainable_parameters']:,} trainable parameters, "
          f"amp {'on' if result['amp'] else 'off'} (MLP output dtype: {', '.join(result['autocast_dtypes']) or '?'})")
    for entry in result["rounds"]:
        print(f"  round {entry['round']}: {entry['seconds']:.2f} s ({entry['train_seconds']:.2f} s in "
              f"{entry['steps']} training steps: {1000 * entry['seconds_per_step']:.1f} ms/step; the rest is the "
              f"ledger and aggregation), loss {entry['loss']:.3f}")
    print(f"training: {1000 * result['seconds_per_step_steady']:.1f} ms per step and "
          f"{result['seconds_per_round_steady']:.2f} s per round after the first; federation "
          f"{result['federation_seconds']:.1f} s; peak GPU memory {memory(result['federation_peak_gpu_mib'])}")
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result["erasure_stage_seconds"].items())
    print(f"EASE erasure of client 0: {result['erasure_wall_seconds']:.1f} s wall ({stages}); "
          f"{result['erasure_displacement_steps']} displacement steps; peak GPU memory "
          f"{memory(result['erasure_peak_gpu_mib'])}")
    print("gates: " + ", ".join(f"{name} {'pass' if ok else 'FAIL'}" for name, ok in result["erasure_gates"].items())
          + " (a random-init model is not expected to pass them)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda; cpu runs the same code)")
    parser.add_argument("--architecture", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="local weights file for the architecture (default: random initialisation)")
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="training.amp: bfloat16 autocast in the training steps (default on)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--pairs-per-client", type=int, default=512)
    parser.add_argument("--test-pairs", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=SCENES_IMAGE_SIZE, help="scenes image side (pixels)")
    parser.add_argument("--ledger-rank", type=int, default=4)
    parser.add_argument("--erase-steps", type=int, default=20, help="EASE displacement steps")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is fastest on a busy machine)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (2 rounds, 32 pairs per client, 3 erasure steps): a smoke test")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the versions here (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.pairs_per_client, args.test_pairs = 2, 32, 20
        args.batch_size, args.erase_steps, args.image_size, args.ledger_rank = 16, 3, 32, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"GPU check skipped: no CUDA device on this machine (torch {torch.__version__}); "
              "--device cpu runs the same code on the CPU")
        return 0
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lethe-gpu-check-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(workdir / "erased", ignore_errors=True)  # erase() writes a new directory only
        result = run_check(args, workdir)
    result["total_seconds"] = round(time.perf_counter() - began, 3)
    print_summary(result)
    print(f"total {result['total_seconds']:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    found = problems(result)
    for problem in found:
        print(f"GPU check FAILED: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
