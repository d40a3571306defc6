"""Typed federation configs (TOML or JSON files); unknown keys are rejected by name."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from ease_engine.data import (
    DataError,
    EmojiConfig,
    PartitionConfig,
    ScenesConfig,
    apply_partition,
    load_emoji,
    load_karpathy,
    load_manifest,
    make_scenes,
)
from ease_engine.data.holdout import FederationData, HoldoutConfig, split_holdout
from ease_engine.federation.ledger import LedgerConfig
from ease_engine.models.config import ModelConfig
from lethe_format import layout


class ConfigError(ValueError):
    """A config file is unreadable or invalid; the message names the file and the key."""


class DataConfig(BaseModel):
    """Where the pairs come from.

    - ``scenes``: the built-in synthetic set, split among clients by ``partition``.
    - ``karpathy``: Flickr30K/COCO Karpathy JSON; its train split is federated by
      ``partition``, its test split is held out.
    - ``manifest``: a JSONL manifest whose lines carry their client id; lines with
      ``client_id: null`` are the held-out set.
    - ``emoji``: real images with human-written names, rendered from files Debian packages
      install (:mod:`ease_engine.data.emoji`); a share of every Unicode group is held out,
      the rest is federated by ``partition`` (kind ``category``: one group per client).
    """

    model_config = ConfigDict(extra="forbid")

    source: Literal["scenes", "karpathy", "manifest", "emoji"] = "scenes"
    scenes: ScenesConfig = Field(default_factory=ScenesConfig)
    emoji: EmojiConfig = Field(default_factory=EmojiConfig)
    karpathy_json: Path | None = None
    image_root: Path | None = None
    manifest: Path | None = None
    on_error: Literal["raise", "skip"] = "raise"
    limit: int | None = Field(None, ge=1, description="karpathy: at most this many pairs per split")

    @model_validator(mode="after")
    def _paths_given(self) -> DataConfig:
        if self.source == "karpathy" and (self.karpathy_json is None or self.image_root is None):
            raise ValueError("source 'karpathy' needs karpathy_json and image_root")
        if self.source == "manifest" and self.manifest is None:
            raise ValueError("source 'manifest' needs manifest")
        return self


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(24, ge=1)
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    lr_min: float = Field(1e-4, ge=0)
    warmup_rounds: int = Field(1, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    client_fraction: float = Field(1.0, gt=0, le=1)
    exclude_clients: list[int] = Field(default_factory=list, description="left out entirely (retrain reference)")
    seed: int = 0
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None keeps torch's default")
    eval_every: int = Field(0, ge=0, description="evaluate on the test split every N rounds (0: only at the end)")
    amp: bool = Field(
        False,
        description="bfloat16 autocast for the local training steps' forward pass (mixed precision: CUDA, or a "
        "CPU with bfloat16 kernels); the loss, the gradients and the weights stay float32. Off: plain float32, "
        "deterministic on CPU",
    )

    @model_serializer(mode="wrap")
    def _omit_amp_when_off(self, handler):
        """``amp`` is written only when on, so every config written before it existed serialises (and hashes,
        for checkpoints and benchmark reuse) exactly as before."""
        data = handler(self)
        if not self.amp:
            data.pop("amp", None)
        return data


class FederationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(
        default_factory=lambda: PartitionConfig(kind="exclusive", n_clients=6, owners={0: ("colour", "purple")})
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    holdout: HoldoutConfig = Field(default_factory=HoldoutConfig)


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (check the spelling; see FederationConfig)")
        else:
            lines.append(f"  {where}: {err['msg']}")
    return f"invalid config {path}:\n" + "\n".join(lines)


def load_config(path: str | Path) -> FederationConfig:
    """Read a ``.toml`` or ``.json`` federation config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    try:
        return FederationConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None


def load_federation_data(config: FederationConfig) -> FederationData:
    """The federation's training pairs (with client ids) and its held-out calibration and audit splits."""
    data = config.data
    if data.source == "scenes":
        train, test = make_scenes(data.scenes)
        return split_holdout(apply_partition(train, config.partition), test, config.holdout)
    if data.source == "emoji":
        train, test = load_emoji(data.emoji, on_error=data.on_error)
        return split_holdout(apply_partition(train, config.partition), test, config.holdout)
    if data.source == "karpathy":
        train = load_karpathy(data.karpathy_json, data.image_root, "train", on_error=data.on_error, limit=data.limit)
        test = load_karpathy(data.karpathy_json, data.image_root, "test", on_error=data.on_error, limit=data.limit)
        return split_holdout(apply_partition(train, config.partition), test, config.holdout)
    dataset = load_manifest(data.manifest, on_error=data.on_error)
    held_out = dataset.client_ids < 0
    if not held_out.any():
        raise DataError(f"{data.manifest}: no held-out lines (client_id null); the test split would be empty")
    return split_holdout(dataset.subset(np.flatnonzero(~held_out)), dataset.subset(np.flatnonzero(held_out)),
                         config.holdout)


def version_config(version: str | Path) -> FederationConfig:
    """The federation config recorded in a version's metadata.json (it names the data the version saw)."""
    path = Path(version) / layout.METADATA
    metadata = json.loads(path.read_text()) if path.is_file() else {}
    if "config" not in metadata:
        raise ConfigError(f"{version}: metadata.json records no federation config; it was not made by `lethe federate`")
    return FederationConfig.model_validate(metadata["config"])
