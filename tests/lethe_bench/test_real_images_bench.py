"""`python -m lethe_bench.real_images` end to end on the small emoji files the tests make:
original and retrain per seed, the same galleries for both, margins and the docs section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lethe_bench.real_images import main, summarise
from tests.emoji_helpers import write_emoji_files


def test_summary_takes_mean_and_spread_of_each_figure_and_of_the_margin():
    def run(original: float, retrain: float) -> dict:
        splits = lambda v: {"forget": {"i2t_r1": v, "t2i_r1": v / 2}}  # noqa: E731
        return {
            "original": {"splits": splits(original), "wall_seconds": 10.0},
            "retrain": {"splits": splits(retrain), "wall_seconds": 8.0},
        }

    summary = summarise([run(40.0, 2.0), run(30.0, 4.0), run(35.0, 0.0)])
    margin = summary["margin"]["forget"]["i2t_r1"]
    assert margin["values"] == [38.0, 26.0, 35.0]
    assert margin["mean"] == pytest.approx(33.0) and margin["std"] == pytest.approx(np.std([38, 26, 35]))
    assert summary["original"]["forget"]["t2i_r1"]["mean"] == pytest.approx(17.5)
    assert summary["retrain"]["wall_seconds"]["mean"] == pytest.approx(8.0)


def test_bench_trains_original_and_retrain_and_writes_json_and_docs(tmp_path):
    files = write_emoji_files(tmp_path)
    config = tmp_path / "real.toml"
    config.write_text(
        f"""
name = "real-test"
[data]
source = "emoji"
[data.emoji]
font = "{files['font']}"
font_size = 40
emoji_test = "{files['emoji_test']}"
annotations = ["{files['xml']}"]
image_size = 32
held_out_fraction = 0.25
[partition]
kind = "category"
n_clients = 4
categories = [["Smileys & Emotion"], ["Animals & Nature"], ["Food & Drink"], ["Activities"]]
[model]
architecture = "lethe-micro"
[training]
rounds = 2
batch_size = 4
threads = 1
[ledger]
rank_cap = 2
[holdout]
client_fraction = 0.34
"""
    )
    out, result, docs = tmp_path / "runs", tmp_path / "result.json", tmp_path / "benchmarks.md"
    main(["--config", str(config), "--seeds", "0", "--out", str(out), "--json", str(result), "--docs", str(docs)])
    saved = json.loads(result.read_text())
    # client 0 (2 smileys after the loader's held-out share) keeps a third (rounded: one) out of training: one
    # trained (forget), one held out by the client (forget_held_out); the loader's held-out pairs are the test set
    assert saved["gallery_sizes"] == {"forget": 1, "retain": 3, "test": 3, "forget_held_out": 1}
    run = saved["runs"][0]
    assert set(run) >= {"original", "retrain"} and (out / "seed0" / "retrain" / "clients.json").is_file()
    clients = json.loads((out / "seed0" / "retrain" / "clients.json").read_text())["clients"]
    assert clients["0"]["excluded"] and not clients["1"]["excluded"]
    for split, metrics in run["original"]["splits"].items():
        margin = saved["summary"]["margin"][split]["i2t_r1"]["mean"]
        assert margin == pytest.approx(metrics["i2t_r1"] - run["retrain"]["splits"][split]["i2t_r1"])
    text = docs.read_text()
    assert "<!-- real-images:begin -->" in text and "client 0 (Smileys & Emotion) erased" in text
    assert "python -m lethe_bench.real_images --config" in text
    # --render re-renders a saved result without training
    docs.unlink()
    main(["--render", str(result), "--docs", str(docs)])
    assert "client 0 (Smileys & Emotion) erased" in docs.read_text()
