"""Build open_clip models, their tokenizer and image preprocessing, fully offline.

Any open_clip architecture works (``ViT-B-32`` and up). Weights come from a local file
or an open_clip pretrained tag; a tag downloads, so it only works on a machine that is
online, and the error says so. The small configs in ``configs/`` (``lethe-tiny``) are
registered with open_clip on import, so they are ordinary open_clip model names.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from torch import nn

from ease_engine.models.config import ModelConfig
from ease_engine.models.lora import add_lora

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model cannot be built or loaded as asked; the message says what to change."""


@dataclass
class ClipBundle:
    """A model with everything needed to feed it: tokenizer and image normalisation."""

    model: nn.Module
    config: ModelConfig
    model_cfg: dict  # the open_clip architecture config (JSON-able)
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def copy(self) -> ClipBundle:
        """The same bundle with its own deep copy of the model (the tokenizer and config are shared)."""
        clone = copy.copy(self)
        clone.model = copy.deepcopy(self.model)
        return clone

    @property
    def context_length(self) -> int:
        return int(self.model_cfg["text_cfg"].get("context_length", 77))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def tokenize_each_once(self, texts: list[str]) -> torch.Tensor:
        """``tokenize(texts)``, with each distinct text tokenized once (captions repeat: many images share one)."""
        unique = sorted(set(texts))
        position = {text: i for i, text in enumerate(unique)}
        return self.tokenize(unique)[[position[text] for text in texts]]

    def pixels_to_tensor(self, pixels: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, S, S) at the model's resolution."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False
            ).clamp_(0, 1)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std

    def image_batch(self, dataset, items: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """The model's input for ``items`` of a caption data set: its pixels, or its image files through
        open_clip's evaluation transform. Deterministic (no augmentation): EASE's repair keeps the parent's
        embedding of each image it has seen (``ease_displacement.AnchorEmbeddings``)."""
        if dataset.pixels is not None:
            return self.pixels_to_tensor(dataset.pixels[items], device)
        transform = self.image_transform()
        return torch.stack([transform(dataset.load_image(int(i))) for i in items]).to(device)

    def image_transform(self):
        """open_clip's evaluation transform for PIL images (real data sets)."""
        return open_clip.image_transform(self.image_size, is_train=False, mean=self.mean, std=self.std)


def architecture_config(name: str) -> dict:
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelError(
            f"unknown open_clip architecture {name!r}; use one of open_clip.list_models() "
            f"(e.g. ViT-B-32) or a config in {CONFIG_DIR}"
        )
    return cfg


def local_weights_path(config: ModelConfig) -> Path | None:
    """The local weights file ``config.pretrained`` names (None: no pretrained weights, or an open_clip tag);
    a name with a weights suffix that is no file is an error."""
    if config.pretrained is None:
        return None
    path = Path(config.pretrained).expanduser()
    if path.suffix in {".safetensors", ".pt", ".pth", ".bin"} or path.is_file():
        if not path.is_file():
            raise ModelError(f"pretrained weights file not found: {path}")
        return path
    return None


def _resolve_pretrained(config: ModelConfig) -> str | None:
    if config.pretrained is None:
        return None
    path = local_weights_path(config)
    if path is not None:
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(config.architecture)
    if config.pretrained not in tags:
        raise ModelError(
            f"{config.pretrained!r} is neither a local weights file nor an open_clip pretrained tag of "
            f"{config.architecture} (tags: {', '.join(tags) or 'none'})"
        )
    return config.pretrained


def build_model(config: ModelConfig, version_dir: Path | None = None) -> ClipBundle:
    """Create the model described by ``config`` (weights as asked, adapters in ``lora`` mode).

    With ``version_dir`` the architecture comes from that directory's
    ``open_clip_config.json`` (open_clip's own ``local-dir:`` format) and no weights are
    loaded here: :func:`ease_engine.models.version_io.load_version` loads them after.
    """
    torch.manual_seed(config.init_seed)
    if version_dir is not None:
        name = f"local-dir:{Path(version_dir).resolve()}"
        model = open_clip.create_model(name, load_weights=False)
        tokenizer = open_clip.get_tokenizer(name)
        cfg = json.loads((Path(version_dir) / "open_clip_config.json").read_text())["model_cfg"]
    else:
        pretrained = _resolve_pretrained(config)
        cfg = architecture_config(config.architecture)
        try:
            model = open_clip.create_model(config.architecture, pretrained=pretrained)
        except RuntimeError as exc:
            if pretrained is not None and not Path(pretrained).is_file():
                raise ModelError(
                    f"could not fetch open_clip weights {config.architecture}/{pretrained}: {exc}. "
                    "Tags download from the internet; offline, pass the path of a local weights file."
                ) from exc
            raise
        tokenizer = open_clip.get_tokenizer(config.architecture)
    model.train()
    if config.mode == "lora":
        add_lora(model, config.lora_rank, config.lora_alpha, generator_seed=config.init_seed + 1)
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, list | tuple) else size
    return ClipBundle(
        model=model,
        config=config,
        model_cfg=cfg,
        tokenizer=tokenizer,
        image_size=int(size),
        mean=tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
    )
