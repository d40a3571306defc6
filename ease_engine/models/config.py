"""Typed model settings: which open_clip architecture, which weights, what is trained."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    """How the federated CLIP model is built.

    ``architecture`` is any open_clip model name (``ViT-B-32`` ...) or a config shipped in
    ``ease_engine/models/configs`` (``lethe-tiny``). ``pretrained`` is an open_clip tag (it
    downloads, so only on a machine that is online) or the path of a local weights file
    (``.safetensors``, ``.pt``/``.bin`` state dict); ``None`` means random initialisation.
    ``mode`` ``full`` trains every parameter; ``lora`` freezes the backbone and trains
    low-rank adapters on the 2-D weights of BOTH towers.
    """

    model_config = ConfigDict(extra="forbid")

    architecture: str = "lethe-tiny"
    pretrained: str | None = None
    mode: Literal["full", "lora"] = "full"
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    init_seed: int = 0
