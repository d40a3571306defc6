"""The bench's reference cache: what a cached retrain reference was trained without is part of its path."""

import dataclasses
from pathlib import Path

import pytest

from ease_engine.models.factory import ModelError
from lethe_bench import references
from lethe_bench.scenarios import SCENARIOS
from lethe_format import layout


def test_a_retrain_without_another_client_is_not_reused(tmp_path, monkeypatch):
    """Erasing another client of the same federation reuses the original but trains its own retrain; a cache
    keyed by the config alone would hand back the retrain without the first client."""
    trained = []

    def fake_run(config, out, show_progress=False, setup=None):
        trained.append((out.name, list(config.training.exclude_clients)))
        out.mkdir(parents=True)
        (out / layout.METRICS).write_text("{}")

    monkeypatch.setattr(references, "run_federation", fake_run)
    first = dataclasses.replace(SCENARIOS["dirichlet"], client=4)
    second = dataclasses.replace(first, client=3)
    a = references.ensure_references(tmp_path, first, 0, quick=True, log=lambda _: None)
    b = references.ensure_references(tmp_path, second, 0, quick=True, log=lambda _: None)
    again = references.ensure_references(tmp_path, first, 0, quick=True, log=lambda _: None)
    assert a.original == b.original and a.retrain != b.retrain and again == a
    assert trained == [("original", []), ("retrain-without-client4", [4]), ("retrain-without-client3", [3])]
    assert (a.target.client, b.target.client) == (4, 3)


def test_references_on_other_backbone_bytes_are_not_reused(tmp_path, monkeypatch):
    """The pretrained backbone's path is the same on every machine, its bytes are not (floating point differs
    between CPUs; another pretraining seed): references trained on one backbone are not handed back for another,
    and the same bytes find them again."""
    backbone = tmp_path / "backbone.safetensors"
    scenario = SCENARIOS["pretrained-lora"]
    real = references.Scenario.config

    def config(self, seed, quick=False):
        config = real(self, seed, quick)
        config.model.pretrained = str(backbone)
        return config

    monkeypatch.setattr(references.Scenario, "config", config)
    backbone.write_bytes(b"one backbone")
    first = references.reference_paths(tmp_path, scenario, 0)
    backbone.write_bytes(b"another backbone")
    second = references.reference_paths(tmp_path, scenario, 0)
    backbone.write_bytes(b"one backbone")
    assert first.original != second.original and references.reference_paths(tmp_path, scenario, 0) == first
    # the bytes decide, not the path they are read from
    monkeypatch.chdir(tmp_path)
    backbone = Path("backbone.safetensors")
    assert references.reference_paths(tmp_path, scenario, 0) == first
    # a named backbone that is missing is an error, never a key without its bytes
    backbone = tmp_path / "missing.safetensors"
    with pytest.raises(ModelError, match="not found"):
        references.reference_paths(tmp_path, scenario, 0)
    # a config without a local weights file keeps the key it always had
    monkeypatch.undo()
    plain = SCENARIOS["exclusive"]
    assert references.backbone_digest(plain.config(0)) is None

