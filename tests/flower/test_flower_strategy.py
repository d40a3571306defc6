"""LedgerStrategy and the ClientApp in one process (Flower's round loop, a loopback Grid): the built-in
simulation's weights and ledger, and the replies, locks and versions it must refuse."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install -e '.[flower]'): Flower integration untested")

import torch  # noqa: E402
from flwr.app import Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from ease_engine.federation.fedavg import prepare_federation  # noqa: E402
from ease_engine.linalg.forget_lock import ForgetLock  # noqa: E402
from ease_engine.models.blocks import read_blocks  # noqa: E402
from lethe_flower.client import make_client_app, train_message  # noqa: E402
from lethe_flower.lineage import LineageError, continued_lineage  # noqa: E402
from lethe_flower.records import CLIENT_ID_KEY, METRICS_KEY, ReplyError  # noqa: E402
from lethe_flower.strategy import LedgerStrategy, RoundFailedError  # noqa: E402
from tests.federation_helpers import tiny_federation_config  # noqa: E402
from tests.flower.flower_helpers import (  # noqa: E402
    WEIGHT_TOLERANCE,
    max_ledger_difference,
    max_weight_difference,
    run_loopback,
)
from tests.flower.loopback import LoopbackGrid  # noqa: E402


def test_flower_rounds_match_the_builtin_simulation(tiny_version, tmp_path):
    config, builtin = tiny_version
    strategy = run_loopback(config, tmp_path / "flower")
    out = tmp_path / "flower"
    assert max_weight_difference(out, builtin) <= WEIGHT_TOLERANCE
    assert max_ledger_difference(out, builtin, strategy.setup.fingerprint) <= WEIGHT_TOLERANCE
    for name in ("clients.json", "metrics.json", "ledger/ledger.json"):
        assert json.loads((out / name).read_text()) == json.loads((builtin / name).read_text()), name
    history = json.loads((out / "history.json").read_text())
    assert [h["participants"] for h in history] == [[0, 1, 2]] * config.training.rounds
    assert all(h["lock_interventions"] == 0 and h["lock_failed_closed"] == 0 for h in history)
    assert json.loads((out / "metadata.json").read_text())["lock_failed_closed"] == 0
    stored = sorted(p.name for p in (out / "updates").iterdir())
    assert stored == sorted(p.name for p in (builtin / "updates").iterdir())


def _without_client_id(config):
    inner = make_client_app(config, [0, 1, 2], config.training.threads)
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        reply = inner(message, context)
        del reply.content.metric_records[METRICS_KEY][CLIENT_ID_KEY]
        return reply

    return app


def test_a_reply_without_client_id_is_refused_and_nothing_is_recorded(tmp_path):
    config = tiny_federation_config(rounds=1)
    strategy = LedgerStrategy.from_config(config, tmp_path / "v")
    with pytest.raises(ReplyError, match="client-id"):
        strategy.start(grid=LoopbackGrid(_without_client_id(config), 3))
    assert not (tmp_path / "v").exists()
    assert all(strategy.lineage.ledger.client(k).rounds == [] for k in (0, 1, 2))


def test_two_nodes_claiming_one_client_are_refused(tmp_path):
    config = tiny_federation_config(rounds=1)
    app = make_client_app(config, [1, 1, 2], config.training.threads)
    with pytest.raises(ReplyError, match="client 1 replied twice"):
        run_loopback(config, tmp_path / "v", client_app=app)
    assert not (tmp_path / "v").exists()


def test_a_left_out_client_whose_supernode_still_answers_is_set_aside(tmp_path):
    config = tiny_federation_config(rounds=1, exclude_clients=[2])
    app = make_client_app(config, [0, 1, 2], config.training.threads)  # client 2's SuperNode is still connected
    strategy = run_loopback(config, tmp_path / "v", client_app=app, num_nodes=3)
    history = json.loads((tmp_path / "v" / "history.json").read_text())
    assert history[0]["participants"] == [0, 1] and history[0]["refused_clients"] == [2]
    assert strategy.lineage.ledger.clients == [0, 1]
    # the same round without client 2's SuperNode: the same model (its update never entered)
    alone = run_loopback(config, tmp_path / "w", client_app=make_client_app(config, [0, 1], config.training.threads))
    assert max_weight_difference(tmp_path / "v", tmp_path / "w") == 0.0
    assert alone.history[0]["refused_clients"] == []


class LateNodesGrid(LoopbackGrid):
    """SuperNodes still registering when round 1 starts: the first look sees one of them."""

    looks = 0

    def get_node_ids(self):
        self.looks += 1
        nodes = super().get_node_ids()
        return nodes[:1] if self.looks == 1 else nodes


class SilentNodeGrid(LoopbackGrid):
    """One SuperNode never answers (Flower drops it at the timeout: no reply, no error)."""

    def send_and_receive(self, messages, *, timeout=None):
        return super().send_and_receive(list(messages)[1:], timeout=timeout)


def test_late_supernodes_still_all_train_and_a_silent_one_is_noticed(tmp_path):
    config = tiny_federation_config(rounds=1)
    app = make_client_app(config, [0, 1, 2], config.training.threads)
    strategy = LedgerStrategy.from_config(config, tmp_path / "late")
    strategy.start(grid=LateNodesGrid(app, 3))
    assert strategy.history[0]["participants"] == [0, 1, 2]

    strict = LedgerStrategy.from_config(config, tmp_path / "strict", require_all_replies=True)
    with pytest.raises(RoundFailedError, match="1 of 3 clients did not answer"):
        strict.start(grid=SilentNodeGrid(app, 3))
    tolerant = LedgerStrategy.from_config(config, tmp_path / "tolerant")
    tolerant.start(grid=SilentNodeGrid(app, 3))
    assert len(tolerant.history[0]["participants"]) == 2


def _failing_for(config, broken_client):
    inner = make_client_app(config, [0, 1, 2], config.training.threads)
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        if int(context.node_config["partition-id"]) == broken_client:
            raise RuntimeError("disk full")
        return inner(message, context)

    return app


def test_a_failed_client_stops_a_run_that_needs_all_and_is_left_out_otherwise(tmp_path):
    config = tiny_federation_config(rounds=1)
    with pytest.raises(RoundFailedError, match="disk full"):
        run_loopback(config, tmp_path / "strict", client_app=_failing_for(config, 1), require_all_replies=True)
    assert not (tmp_path / "strict").exists()

    strategy = run_loopback(config, tmp_path / "tolerant", client_app=_failing_for(config, 1))
    ledger = strategy.lineage.ledger
    assert ledger.client(1).rounds == [] and ledger.client(0).rounds == [0] and ledger.client(2).rounds == [0]
    history = json.loads((tmp_path / "tolerant" / "history.json").read_text())
    assert history[0]["participants"] == [0, 2] and history[0]["failed_clients"] == 1
    # the two updates it did aggregate are all the ledger holds, and all the model moved
    setup = prepare_federation(config)
    start = read_blocks(setup.bundle.model, setup.blocks)
    final = read_blocks(strategy.setup.bundle.model, setup.blocks)
    for name in start:
        recorded = ledger.client(0).contribution[name] + ledger.client(2).contribution[name]
        assert torch.allclose(final[name] - start[name], recorded, atol=1e-6), name


def test_a_lock_for_another_model_is_refused(tmp_path):
    config = tiny_federation_config(rounds=1)
    setup = prepare_federation(config)
    block = setup.blocks[0]
    unknown = ForgetLock()
    unknown.add_block("visual.no_such_layer.weight", torch.eye(4)[:, :1], torch.zeros(4), torch.ones(4))
    with pytest.raises(LineageError, match="another model.*no_such_layer"):
        LedgerStrategy.from_config(config, tmp_path / "v", lock=unknown)
    wrong_size = ForgetLock()
    d = block.numel + 3
    wrong_size.add_block(block.name, torch.eye(d)[:, :1], torch.zeros(d), torch.ones(d))
    with pytest.raises(LineageError, match=f"another model.*{block.numel + 3} elements"):
        LedgerStrategy.from_config(config, tmp_path / "v", lock=wrong_size)
    fitting = ForgetLock()
    fitting.add_block(block.name, torch.eye(block.numel)[:, :1], torch.zeros(block.numel), torch.ones(block.numel))
    assert LedgerStrategy.from_config(config, tmp_path / "v", lock=fitting).lineage.lock is fitting


def test_a_version_of_another_model_cannot_be_continued(tiny_version, tmp_path):
    config, version = tiny_version
    other = tiny_federation_config()
    other.model.init_seed = 7
    with pytest.raises(LineageError, match="belongs to another model"):
        continued_lineage(prepare_federation(other), version)
    lineage = continued_lineage(prepare_federation(config), version)
    assert lineage.first_round == config.training.rounds and lineage.participants == [0, 1, 2]


def test_a_continued_versions_lock_is_kept_and_a_lost_one_stops_the_run(tiny_version, tmp_path):
    """The version a continued run writes holds the lock it continued from, also when an explicit (here empty)
    lock filtered the run instead; a lock directory whose manifest is gone, or whose tensors were changed, stops
    the run instead of passing as no lock."""
    import shutil

    config, version = tiny_version
    setup = prepare_federation(config)
    locked = tmp_path / "locked"
    shutil.copytree(version, locked)
    lock = ForgetLock(metadata={"client": "0"})
    block = setup.blocks[0]
    lock.add_block(block.name, torch.eye(block.numel)[:, :1], torch.zeros(block.numel), torch.ones(block.numel))
    lock.save(locked / "forget_lock")
    assert continued_lineage(setup, locked).lock.block_names == [block.name]
    same = ForgetLock.load(locked / "forget_lock")  # the version's own lock passed again: adds no layer
    for label, override in (("kept", None), ("control", ForgetLock()), ("same", same)):
        strategy = LedgerStrategy.from_config(config, tmp_path / label, continue_from=locked, lock=override)
        written = strategy.write_version(tmp_path / label)
        kept = ForgetLock.load(written / "forget_lock")
        assert kept.erasures == [{"client": "0"}] and kept.block_names == [block.name], label
        assert len(kept.layers(block.name)) == 1, label
    assert len(LedgerStrategy.from_config(config, tmp_path / "c", continue_from=locked, lock=ForgetLock()).lineage
               .lock) == 0, "an empty lock is a control: the run is not filtered"
    extra = ForgetLock(metadata={"client": "2"})
    extra.add_block(block.name, torch.eye(block.numel)[:, 1:2], torch.zeros(block.numel), torch.ones(block.numel))
    joined = LedgerStrategy.from_config(config, tmp_path / "joined", continue_from=locked, lock=extra)
    assert [m["client"] for m in joined.lineage.lock.erasures] == ["0", "2"], "the inherited layer still filters"
    written = joined.write_version(tmp_path / "joined")
    assert [m["client"] for m in ForgetLock.load(written / "forget_lock").erasures] == ["0", "2"]

    (locked / "forget_lock" / "forget_lock.safetensors").write_bytes(b"tampered")
    with pytest.raises(LineageError, match="Forget Lock of .* cannot be read"):
        continued_lineage(setup, locked)
    (locked / "forget_lock" / "forget_lock.json").unlink()
    with pytest.raises(LineageError, match="Forget Lock of .* cannot be read: forget_lock.json cannot be read"):
        continued_lineage(setup, locked)


def test_a_client_of_another_model_refuses_the_message(tiny_version):
    config, _ = tiny_version
    strategy = LedgerStrategy.from_config(config, "unused")
    messages = list(strategy.configure_train(1, strategy.initial_arrays(), _empty_config(), LoopbackGrid(None, 3)))
    other = tiny_federation_config()
    other.model.init_seed = 7
    from flwr.app import Context, RecordDict

    context = Context(run_id=0, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="same Lethe config"):
        train_message(messages[0], context, other, [0, 1, 2])


def _empty_config():
    from flwr.app import ConfigRecord

    return ConfigRecord()
