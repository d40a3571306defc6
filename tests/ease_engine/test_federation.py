import json

import pytest
import torch
from safetensors.torch import load_file

from ease_engine.federation.config import ConfigError, load_config
from ease_engine.federation.fedavg import (
    FederationError,
    learning_rate,
    prepare_federation,
    round_participants,
    run_federation,
)
from ease_engine.federation.ledger import Ledger, LedgerError
from ease_engine.models.blocks import TOKEN_EMBEDDING
from ease_engine.models.version_io import load_version
from tests.federation_helpers import tiny_federation_config


def _weights(directory):
    return load_file(str(directory / "open_clip_model.safetensors"))


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture()
def tiny_run(tiny_version):
    return tiny_version


def test_version_directory_contents(tiny_run):
    config, out = tiny_run
    for name in [
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "lethe_model.json",
        "metadata.json",
        "metrics.json",
        "history.json",
        "clients.json",
        "ledger/ledger.json",
    ]:
        assert (out / name).is_file(), name
    clients = json.loads((out / "clients.json").read_text())["clients"]
    assert sorted(clients) == ["0", "1", "2"]
    # every training pair, once (each client keeps its held-out share out of training: ease_engine.data.holdout)
    from ease_engine.federation.config import load_federation_data

    assert sum(c["n_samples"] for c in clients.values()) == len(load_federation_data(config).train) < 240
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"i2t_r1", "t2i_r1", "i2t_r10", "t2i_r10"}
    assert not (out.parent / "v.work").exists(), "the checkpoint folder is removed after a finished run"


def test_training_reduces_the_loss(tiny_run):
    _, out = tiny_run
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"] - 0.1


def test_rerun_gives_identical_weights(tiny_run, tmp_path):
    config, out = tiny_run
    again = run_federation(config, tmp_path / "again", show_progress=False)
    _assert_same_weights(out, again)


def test_killed_run_resumes_to_the_same_weights(tiny_run, tmp_path):
    config, out = tiny_run
    partial = tmp_path / "resumed"
    assert run_federation(config, partial, show_progress=False, stop_after_round=1) is None
    progress = json.loads((tmp_path / "resumed.work" / "checkpoint" / "progress.json").read_text())
    assert progress["rounds_completed"] == 1
    assert not partial.exists()
    run_federation(config, partial, show_progress=False)
    _assert_same_weights(out, partial)
    # the ledger also continues where it stopped
    a, b = Ledger.load(out / "ledger"), Ledger.load(partial / "ledger")
    for k in a.clients:
        assert a.records[k].rounds == b.records[k].rounds == [0, 1, 2]
        for name in a.records[k].contribution:
            torch.testing.assert_close(a.records[k].contribution[name], b.records[k].contribution[name])


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    config = tiny_federation_config(rounds=2)
    run_federation(config, tmp_path / "v", show_progress=False, stop_after_round=1)
    other = tiny_federation_config(rounds=2, lr=1e-2)
    with pytest.raises(FederationError, match="different config"):
        run_federation(other, tmp_path / "v", show_progress=False)


def test_ledger_contributions_sum_to_the_total_update(tiny_run):
    """theta_final - theta_init = sum_k C_k exactly (FedAvg adds nothing else)."""
    config, out = tiny_run
    setup = prepare_federation(config)  # fresh model = the same initialisation
    ledger = Ledger.load(out / "ledger", setup.fingerprint)
    final, _ = load_version(out)
    params_init = dict(setup.bundle.model.named_parameters())
    params_final = dict(final.model.named_parameters())
    for block in ledger.blocks:
        init = params_init[block.param].detach()
        fin = params_final[block.param].detach()
        if block.rows is not None:
            init, fin = init[list(block.rows)], fin[list(block.rows)]
        total = sum(ledger.records[k].contribution[block.name] for k in ledger.clients)
        torch.testing.assert_close(fin.reshape(-1) - init.reshape(-1), total, rtol=1e-4, atol=2e-6)


def test_untouched_embedding_rows_never_move(tiny_run):
    config, out = tiny_run
    setup = prepare_federation(config)
    final, _ = load_version(out)
    rows = {b.rows[0] for b in setup.blocks if b.param == TOKEN_EMBEDDING}
    before = setup.bundle.model.token_embedding.weight.detach()
    after = final.model.token_embedding.weight.detach()
    moved = set((after != before).any(dim=1).nonzero().flatten().tolist())
    assert moved and moved <= rows
    assert len(rows) < 200, "a scenes federation uses a few hundred vocabulary rows at most"


def test_ledger_bases_are_orthonormal_and_capped(tiny_run):
    config, out = tiny_run
    ledger = Ledger.load(out / "ledger")
    for k in ledger.clients:
        for u in ledger.records[k].basis.values():
            assert u.shape[1] <= config.ledger.rank_cap
            if u.shape[1]:
                torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1]), atol=1e-4, rtol=0)
    bytes_per_round = [h["ledger_bytes"] for h in json.loads((out / "history.json").read_text())]
    assert bytes_per_round[-1] == bytes_per_round[-2], "flat once the rank cap (2) is reached"


def test_ledger_of_another_model_is_refused(tiny_run):
    _, out = tiny_run
    with pytest.raises(LedgerError, match="another model"):
        Ledger.load(out / "ledger", expected_fingerprint="0" * 32)
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger.load(out)


def test_left_out_client_is_not_trained_on(tmp_path):
    config = tiny_federation_config(rounds=1, exclude_clients=[0])
    out = run_federation(config, tmp_path / "retrain", show_progress=False)
    ledger = Ledger.load(out / "ledger")
    assert ledger.clients == [1, 2]
    history = json.loads((out / "history.json").read_text())
    assert history[0]["participants"] == [1, 2]
    clients = json.loads((out / "clients.json").read_text())["clients"]
    assert clients["0"]["excluded"] is True
    with pytest.raises(FederationError, match="unknown clients"):
        prepare_federation(tiny_federation_config(exclude_clients=[9]))


def test_client_fraction_samples_deterministically():
    config = tiny_federation_config(client_fraction=0.5)
    picks = [round_participants(config, [0, 1, 2, 3], t) for t in range(6)]
    assert all(len(p) == 2 for p in picks)
    assert picks == [round_participants(config, [0, 1, 2, 3], t) for t in range(6)]
    assert len({tuple(p) for p in picks}) > 1


def test_learning_rate_schedule():
    config = tiny_federation_config(rounds=10, lr=1e-3, lr_min=1e-4, warmup_rounds=1)
    lrs = [learning_rate(config, t) for t in range(10)]
    assert lrs[0] < lrs[1] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_config_rejects_unknown_keys_by_name(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[training]\nrounds = 3\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"training\.learning_rate: unknown key"):
        load_config(path)
    path.write_text("[training\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_default_config_file_is_valid():
    from ease_engine.configs import DEFAULT_CONFIG

    config = load_config(DEFAULT_CONFIG)
    assert config.partition.kind == "exclusive" and config.partition.n_clients == 6
    assert config.partition.owners == {0: ("colour", "purple")}
    assert config.ledger.enabled and config.ledger.store_updates_every > 0, "FedEraser needs stored updates"


def test_stored_updates_replay_the_global_trajectory(tiny_run):
    """global^(t+1) = global^t + sum_k p_k Delta_k^t, from the stored rounds alone."""
    from ease_engine.federation.update_store import load_rounds

    _, out = tiny_run
    rounds = load_rounds(out / "updates")
    assert [r.round_index for r in rounds] == [0, 1, 2]
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["stored_update_bytes"] > 0
    for before, after in zip(rounds, rounds[1:], strict=False):
        assert sum(before.weights.values()) == pytest.approx(1.0)
        for name, start in before.global_start.items():
            step = sum(w * before.updates[k][name] for k, w in before.weights.items())
            torch.testing.assert_close(start + step, after.global_start[name], rtol=1e-5, atol=1e-6)


def test_ledger_skips_blocks_a_client_did_not_move_with_the_same_result():
    """A zero block update (the token rows of words a client never uses) leaves its record as the
    incremental SVD would: unchanged; the moved blocks are recorded as usual."""
    from ease_engine.federation.ledger import LedgerConfig
    from ease_engine.linalg.incremental_svd import empty_basis, update
    from ease_engine.models.blocks import ParameterBlock

    blocks = [ParameterBlock("a", (3,)), ParameterBlock("b", (2,))]
    ledger = Ledger(blocks, [0], LedgerConfig(rank_cap=2, energy=1.0), "f" * 32)
    rounds = [
        {"a": torch.tensor([1.0, 0.0, 0.0]), "b": torch.zeros(2)},
        {"a": torch.zeros(3), "b": torch.tensor([0.0, 2.0])},
        {"a": torch.tensor([0.0, 3.0, 0.0]), "b": torch.zeros(2)},
    ]
    for t, updates in enumerate(rounds):
        ledger.record(0, t, updates)
    record = ledger.records[0]
    for block in blocks:
        u, s = empty_basis(block.numel)
        for updates in rounds:
            u, s = update(u, s, updates[block.name], rank_cap=2, energy=1.0)
        torch.testing.assert_close(record.basis[block.name], u)
        torch.testing.assert_close(record.singular_values[block.name], s)
        torch.testing.assert_close(record.contribution[block.name], sum(r[block.name] for r in rounds))
    assert record.basis["a"].shape == (3, 2) and record.basis["b"].shape == (2, 1) and record.rounds == [0, 1, 2]


def test_a_caption_pick_is_one_caption_of_each_item_and_pick_rows_makes_the_same_draw():
    """Four images with 1, 2, 3 and 4 captions: each pick is a row of its own image; ``pick`` and ``pick_rows``
    consume the generator alike (the seeded draw is pinned: a change in how the generator is used shows)."""
    import numpy as np

    from ease_engine.federation.training import EncodedCaptions

    captions = EncodedCaptions(tokens=torch.arange(10).reshape(10, 1), offsets=np.array([0, 1, 3, 6, 10]))
    items = np.array([3, 0, 2, 1, 3, 2])
    rows = captions.pick_rows(items, torch.Generator().manual_seed(5))
    assert rows.tolist() == [9, 0, 5, 2, 9, 3]
    assert all(captions.offsets[i] <= r < captions.offsets[i + 1] for i, r in zip(items, rows.tolist(), strict=True))
    assert torch.equal(captions.pick(items, torch.Generator().manual_seed(5)), captions.tokens[rows])
