"""Evaluate a saved version on named splits of the federation data it was trained on."""

from __future__ import annotations

from pathlib import Path

from ease_engine.evaluation.splits import evaluate_bundle
from ease_engine.federation.config import load_federation_data, version_config
from ease_engine.models.version_io import load_version


def evaluate_version(
    version: str | Path, splits: list[str], probe: str | None = None, device: str = "cpu", gallery: int | None = None
) -> dict:
    version = Path(version)
    if not version.is_dir():
        raise FileNotFoundError(f"version directory not found: {version}")
    config = version_config(version)
    bundle, _ = load_version(version, device)
    data = load_federation_data(config)
    return evaluate_bundle(bundle, data, splits, probe, device, gallery)
