"""A model version on disk: a directory plain open_clip can also load (``local-dir:``).

    open_clip_config.json       {"model_cfg": ..., "preprocess_cfg": ...} (open_clip's format)
    open_clip_model.safetensors  the weights, adapters folded in
    lethe_model.json             how Lethe trains it: ModelConfig (mode, LoRA rank, ...)
    lethe_state.safetensors      lora mode only: frozen base and adapter factors, exactly
    metadata.json                what produced the version (free-form, JSON)

Nothing is pickled. The directory appears in one rename, so a crash never leaves half
a version behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ease_engine.atomic import new_directory, write_json
from ease_engine.models.config import ModelConfig
from ease_engine.models.factory import ClipBundle, ModelError, build_model
from ease_engine.models.lora import merged_state_dict
from lethe_format import layout

FORMAT = "lethe-model/1"


def _contiguous(state: dict) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def write_model_files(bundle: ClipBundle, directory: Path, metadata: dict | None = None) -> None:
    """Write the model files into an existing (temporary) directory."""
    directory = Path(directory)
    preprocess = {"size": bundle.image_size, "mean": list(bundle.mean), "std": list(bundle.std)}
    write_json(directory / layout.OPEN_CLIP_CONFIG, {"model_cfg": bundle.model_cfg, "preprocess_cfg": preprocess})
    save_file(_contiguous(merged_state_dict(bundle.model)), str(directory / layout.WEIGHTS))
    if bundle.config.mode == "lora":
        save_file(_contiguous(bundle.model.state_dict()), str(directory / layout.LORA_STATE))
    write_json(directory / layout.MODEL_CONFIG, {"format": FORMAT, "model": bundle.config.model_dump()})
    write_json(directory / layout.METADATA, metadata or {})


def save_version(
    bundle: ClipBundle, directory: str | Path, metadata: dict | None = None, overwrite: bool = False
) -> Path:
    with new_directory(directory, overwrite=overwrite) as tmp:
        write_model_files(bundle, tmp, metadata)
    return Path(directory)


def read_model_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    path = directory / layout.MODEL_CONFIG
    if not path.is_file():
        raise ModelError(f"{directory} is not a Lethe model version: {path.name} is missing")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ModelError(f"{path}: unsupported format {data.get('format')!r} (expected {FORMAT})")
    return ModelConfig.model_validate(data["model"])


def load_version(directory: str | Path, device: str = "cpu") -> tuple[ClipBundle, dict]:
    """Load a version directory: the model (trainable as it was saved) and its metadata."""
    directory = Path(directory)
    config = read_model_config(directory)
    bundle = build_model(config, version_dir=directory)
    state_file = directory / (layout.LORA_STATE if config.mode == "lora" else layout.WEIGHTS)
    if not state_file.is_file():
        raise ModelError(f"{directory}: weights file {state_file.name} is missing")
    state = load_file(str(state_file))
    missing, unexpected = bundle.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"{state_file} does not match the architecture in open_clip_config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    bundle.model.to(device)
    metadata_file = directory / layout.METADATA
    metadata = json.loads(metadata_file.read_text()) if metadata_file.exists() else {}
    return bundle, metadata
