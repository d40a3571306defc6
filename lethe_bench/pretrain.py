"""The pretrained backbone of the ``pretrained-lora`` scenario, built deterministically.

    python -m lethe_bench.pretrain [--seed 7] [--out runs/pretrained/lethe-tiny-scenes.safetensors]

No pretrained CLIP can be downloaded here, so one is made: ``lethe-tiny`` trained centrally (one party, full
fine-tuning) on a ``scenes`` corpus the federation never sees and that lacks what the erased client holds:
scenes drawn from another seed, every image with a purple object left out (the corpus is partitioned with
purple as client 0's exclusive concept and client 0 is excluded). The result is open_clip's state dict as
safetensors, with its sha256 in ``<out>.sha256``; ``ensure`` rebuilds it when missing. The federation then
trains LoRA adapters on both towers on top of it (``ease_engine/configs/pretrained-lora.toml``). The same
scenario runs ViT-B-32 with a local weights file: set ``model.architecture = "ViT-B-32"`` and
``model.pretrained`` to that file.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from ease_engine.federation.config import FederationConfig
from ease_engine.federation.fedavg import run_federation
from lethe_format import layout

DEFAULT_OUT = Path("runs/pretrained/lethe-tiny-scenes.safetensors")
DEFAULT_SEED = 7  # the published backbone's; another seed gives another backbone of the same recipe


def corpus(seed: int = DEFAULT_SEED) -> dict:
    """The pretraining run: its corpus (scenes of ``seed``, purple left out), initialisation and order."""
    return {
        "name": "pretrain-lethe-tiny",
        "data": {"scenes": {"n_train": 7000, "n_test": 200, "image_size": 48, "seed": seed}},
        "partition": {"kind": "exclusive", "n_clients": 2, "owners": {0: ["colour", "purple"]},
                      "n_shared_per_owner": 0, "seed": seed},
        "model": {"architecture": "lethe-tiny", "mode": "full", "init_seed": seed},
        "training": {"rounds": 12, "local_epochs": 1, "batch_size": 128, "lr": 2e-3, "lr_min": 1e-4,
                     "warmup_rounds": 1, "exclude_clients": [0], "seed": seed, "threads": 1},
        "ledger": {"enabled": False},
        "holdout": {"client_fraction": 0.0},
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build(out: Path = DEFAULT_OUT, show_progress: bool = True, seed: int = DEFAULT_SEED) -> Path:
    out = Path(out)
    work = out.with_suffix(".run")
    version = run_federation(FederationConfig.model_validate(corpus(seed)), work, resume=True,
                             show_progress=show_progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(version / layout.WEIGHTS, tmp)
    tmp.replace(out)
    Path(f"{out}.sha256").write_text(f"{sha256(out)}  {out.name}\n")
    return out


def backbone_path(seed: int = DEFAULT_SEED) -> Path:
    """Where the backbone of pretraining seed ``seed`` is kept (the default seed's is the scenario's)."""
    return DEFAULT_OUT if seed == DEFAULT_SEED else DEFAULT_OUT.with_name(f"{DEFAULT_OUT.stem}-seed{seed}.safetensors")


def ensure(seed: int = DEFAULT_SEED) -> Path:
    """The backbone of pretraining seed ``seed`` at ``backbone_path(seed)``, built if missing or if it does not
    match its recorded sha256."""
    out = backbone_path(seed)
    recorded = Path(f"{out}.sha256")
    if out.is_file() and recorded.is_file() and recorded.read_text().split()[0] == sha256(out):
        return out
    return build(out, show_progress=False, seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="default: backbone_path(seed), the scenario's file for "
                        "the default seed and a file of its own for another")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="corpus, initialisation and order (another seed: another backbone of the same recipe)")
    args = parser.parse_args(argv)
    path = build(args.out or backbone_path(args.seed), seed=args.seed)
    print(f"wrote {path} (sha256 {sha256(path)})")


if __name__ == "__main__":
    main()
