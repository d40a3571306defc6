"""The erasure pipeline end to end on a small federation that has learned something."""

import json
import shutil

import numpy as np
import pytest
import torch

from ease_engine.erasure import erase
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.blocks import read_blocks
from ease_engine.models.version_io import load_version
from ease_engine.unlearning import ErasureTarget, UnlearningContext, UnlearningError
from ease_engine.verification.gates import GateConfig
from ease_engine.verification.membership import MembershipScores, similarity_distribution
from lethe_bench.measure import Bench
from lethe_format import content_hash, directory_digests, hashed_files, pair_id_hash

PUBLISH = {"publish_on_failure": True}  # the mechanics of writing a version, whatever the verdict


@pytest.fixture(scope="module")
def context(gate_versions):
    original, _ = gate_versions
    return UnlearningContext.load(original)


@pytest.fixture(scope="module")
def client_erasure(gate_versions, context, tmp_path_factory):
    original, retrain = gate_versions
    out = tmp_path_factory.mktemp("erased") / "v2"
    result = erase(original, ErasureTarget(0), "ease", None, out, reference_dir=retrain, context=context, **PUBLISH)
    return result, out


def test_erased_version_is_complete_and_chained(gate_versions, client_erasure):
    original, _ = gate_versions
    result, out = client_erasure
    assert result.version_dir == out
    for name in ["open_clip_model.safetensors", "manifest.json", "verification.json", "clients.json",
                 "forget_lock/forget_lock.json", "ledger/ledger.json"]:
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parent"]["content_hash"] == content_hash(directory_digests(original))
    assert manifest["files"] == hashed_files(directory_digests(out))
    assert manifest["content_hash"] == content_hash(directory_digests(out))
    assert manifest["erasure"]["method"] == "ease" and manifest["erasure"]["client"] == 0
    # how the repair stopped is on record: the ledger's choice (client 0 alone used "purple"), the steps, the measures
    repair = manifest["erasure"]["repair_stop"]
    assert repair["requested"] == "auto" and repair["until"] == "parent_utility" and "wholly exclusive" in repair["why"]
    assert repair["steps"] >= 30 and repair["criterion"]["measures"][-1]["step"] == repair["steps"]
    clients = json.loads((out / "clients.json").read_text())["clients"]
    assert clients["0"]["erased"] is True
    ledger = json.loads((out / "ledger" / "ledger.json").read_text())
    assert "0" not in ledger["clients"], "the erased client's ledger entry is removed"
    lock = ForgetLock.load(out / "forget_lock")
    assert len(lock) > 0
    report = json.loads((out / "verification.json").read_text())
    assert {g["name"] for g in report["gates"]} >= {"forget_vs_nonmember_i2t_r1", "retain_t2i_r1",
                                                    "mia_similarity_auc", "ledger_residual"}
    assert report["verdict"] in ("passed", "failed", "inconclusive") and "reasons" in report
    assert all({"low", "high", "comparison", "threshold", "control_value"} <= set(g) for g in report["gates"])
    assert report["reference"]["kind"] == "retrain" and "recall" in report["reference"]
    assert report["distributions"]["similarity"]["n_members"] == report["membership"]["n_members"]


def test_report_carries_the_similarity_distribution_of_forget_vs_matched_nonmembers(client_erasure, context):
    """The histogram in the report is that of the erased model's scores on the erased pairs and on the same
    client's audit pairs (matched non-members)."""
    from ease_engine.verification.membership import pair_embeddings, similarity_scores

    result, out = client_erasure
    distribution = result.report.distributions["similarity"]
    assert (distribution["members_split"], distribution["nonmembers_split"]) == ("forget", "nonmembers")
    bench = Bench.build(context, ErasureTarget(0))
    erased = load_version(out)[0]
    members = similarity_scores(*pair_embeddings(erased, bench.splits.members))
    nonmembers = similarity_scores(*pair_embeddings(erased, bench.splits.nonmembers))
    assert np.histogram(members, bins=distribution["edges"])[0].tolist() == distribution["members"]
    assert np.histogram(nonmembers, bins=distribution["edges"])[0].tolist() == distribution["nonmembers"]
    assert sum(distribution["members"]) == len(bench.splits.members) == result.report.membership["n_members"]
    assert sum(distribution["nonmembers"]) == len(bench.splits.nonmembers)
    assert set(bench.splits.nonmembers.client_ids) == {0}, "matched non-members: the erased client's own pairs"
    assert distribution["members_mean"] == pytest.approx(members.mean(), abs=1e-5)


def test_similarity_histogram_matches_numpy_on_constructed_scores():
    rng = np.random.default_rng(3)
    members, nonmembers = rng.normal(0.32, 0.05, 57), rng.normal(0.22, 0.07, 203)
    d = similarity_distribution(members, nonmembers)
    json.dumps(d)  # JSON-ready
    edges = np.asarray(d["edges"])
    assert len(edges) == 41 and len(d["members"]) == len(d["nonmembers"]) == 40
    assert np.all(np.diff(edges) > 0) and np.allclose(np.diff(edges), (edges[-1] - edges[0]) / 40)
    assert edges[0] <= min(members.min(), nonmembers.min()) and edges[-1] >= max(members.max(), nonmembers.max())
    assert edges[0] > min(members.min(), nonmembers.min()) - 0.05  # rounded out to a multiple of 0.05, no more
    assert round(edges[0] / 0.05, 6).is_integer() and round(edges[-1] / 0.05, 6).is_integer()
    assert d["members"] == np.histogram(members, bins=edges)[0].tolist()
    assert d["nonmembers"] == np.histogram(nonmembers, bins=edges)[0].tolist()
    assert (sum(d["members"]), sum(d["nonmembers"]), d["n_members"], d["n_nonmembers"]) == (57, 203, 57, 203)
    assert all(isinstance(c, int) for c in d["members"] + d["nonmembers"])
    assert d["members_mean"] == pytest.approx(members.mean(), abs=1e-6)
    assert d["nonmembers_median"] == pytest.approx(np.median(nonmembers), abs=1e-6)


def test_similarity_histogram_edge_cases():
    same = similarity_distribution(np.full(5, 0.3), np.full(3, 0.3), bins=4)
    assert same["edges"][0] <= 0.3 <= same["edges"][-1] and same["edges"][-1] - same["edges"][0] == pytest.approx(0.05)
    assert (sum(same["members"]), sum(same["nonmembers"])) == (5, 3)
    # float noise past +-1 stays inside [-1, 1] bins; non-finite scores are dropped; an empty set has no mean
    d = similarity_distribution(np.array([1.0000001, 0.5, np.nan]), np.array([-1.0000001, np.inf]))
    assert (d["edges"][0], d["edges"][-1]) == (-1.0, 1.0)
    assert (sum(d["members"]), sum(d["nonmembers"]), d["members"][-1], d["nonmembers"][0]) == (2, 1, 1, 1)
    empty = similarity_distribution(np.array([]), np.array([0.1, 0.2]))
    assert empty["members_mean"] is None and sum(empty["members"]) == 0 and sum(empty["nonmembers"]) == 2
    with pytest.raises(ValueError):
        similarity_distribution(np.array([]), np.array([np.nan]))


def test_membership_scores_summary_and_distribution_share_the_scores():
    scores = MembershipScores(np.array([0.4, 0.5, 0.45]), np.array([0.1, 0.2, 0.45, 0.3]),
                              np.array([-1.0, -2.0, -1.5]), np.array([-3.0, -1.0]), 3, 4)
    summary = scores.summary()
    assert summary == {"similarity_auc": pytest.approx((4 + 3 + 3.5) / 12), "loss_auc": pytest.approx(3.5 / 6),
                       "n_members": 3, "n_nonmembers": 4}
    assert scores.similarity_distribution() == similarity_distribution(scores.similarity_members,
                                                                       scores.similarity_nonmembers)


def test_ease_removes_the_exclusive_contribution_and_keeps_utility(client_erasure):
    """Margins a do-nothing method (residual stays ~1) or a destroying one (utility collapses) would fail."""
    result, _ = client_erasure
    report = result.report
    assert report.residual["parent"]["all"] > 0.6
    assert abs(report.residual["candidate"]["all"]) < 0.5
    for split in ("retain", "retained_heldout"):
        for d in ("i2t", "t2i"):
            assert report.metrics[split][f"{d}_r1"] >= 0.5 * report.before[split][f"{d}_r1"], (split, report.metrics)


def test_excision_puts_exclusive_rows_where_retrain_has_them(gate_versions, context, tmp_path):
    """A word only client 0 used: its embedding row is reset exactly to the never-trained value."""
    original, retrain = gate_versions
    result = erase(original, ErasureTarget(0), "ease", {"steps": 0}, tmp_path / "v", context=context, **PUBLISH)
    wholly = result.outcome.details["angles"]["wholly_exclusive_blocks"]
    assert wholly, "client 0 owns purple: its token row is moved by no other client"
    rows = [int(name.split("[")[1].rstrip("]")) for name in wholly]
    erased_emb = load_version(tmp_path / "v")[0].model.token_embedding.weight.detach()[rows]
    retrain_emb = load_version(retrain)[0].model.token_embedding.weight.detach()[rows]
    original_emb = context.setup.bundle.model.token_embedding.weight.detach()[rows]
    assert (original_emb - retrain_emb).abs().max() > 1e-3, "the original did learn these rows"
    assert (erased_emb - retrain_emb).abs().max() < 1e-5


def test_the_erased_client_cannot_be_erased_again(client_erasure, tmp_path):
    _, out = client_erasure
    with pytest.raises(UnlearningError, match="already erased"):
        erase(out, ErasureTarget(0), out_dir=tmp_path / "v3", **PUBLISH)
    assert not (tmp_path / "v3").exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (ErasureTarget(7), "Client '7' is not in"),
        (ErasureTarget(0, ()), "at least one pair id"),
        (ErasureTarget(0, ("scenes-train-999999",)), "are not pairs of client '0'"),
    ],
)
def test_bad_targets_write_nothing(gate_versions, context, tmp_path, target, message):
    original, _ = gate_versions
    with pytest.raises(UnlearningError, match=message):
        erase(original, target, out_dir=tmp_path / "v", context=context, **PUBLISH)
    assert not (tmp_path / "v").exists()


def test_bad_method_or_parameters_fail_before_any_work(gate_versions, tmp_path):
    original, _ = gate_versions
    with pytest.raises(UnlearningError, match="unknown method"):
        erase(original, ErasureTarget(0), "forget-it", out_dir=tmp_path / "v")
    with pytest.raises(UnlearningError, match="sin_mni"):
        erase(original, ErasureTarget(0), "ease", {"sin_mni": 0.5}, out_dir=tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_a_version_without_ledger_is_refused(gate_versions, tmp_path):
    original, _ = gate_versions
    copy = tmp_path / "no-ledger"
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "ledger")
    with pytest.raises(UnlearningError, match="needs the contribution ledger"):
        erase(copy, ErasureTarget(0), out_dir=tmp_path / "v", **PUBLISH)
    assert not (tmp_path / "v").exists()


def test_a_baselines_own_repair_history_is_not_taken_for_eases_record(gate_versions, context, tmp_path):
    """PGA keeps its repair rounds under ``details["repair"]`` (a list): publishing it, and the job's figures, work
    and say nothing of how an EASE repair stopped."""
    from workers.figures import job_figures

    original, _ = gate_versions
    result = erase(original, ErasureTarget(0), "pga", {"steps": 2, "repair_rounds": 1}, tmp_path / "v",
                   context=context, **PUBLISH)
    assert isinstance(result.outcome.details["repair"], list)
    manifest = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert "repair_stop" not in manifest["erasure"]
    figures = job_figures(1, "pga", result, GateConfig(), tmp_path / "v")
    assert "repair_stop" not in figures and figures["repair"] == result.outcome.details["repair"]


def test_the_job_figures_carry_the_manifests_repair_record(client_erasure):
    from workers.figures import job_figures

    result, out = client_erasure
    manifest = json.loads((out / "manifest.json").read_text())
    figures = job_figures(1, "ease", result, GateConfig(), out)
    assert figures["repair_stop"] == manifest["erasure"]["repair_stop"]
    assert "repair_criterion" not in figures["displacement"]  # said once, in repair_stop


def test_a_noop_publishes_nothing(gate_versions, context, tmp_path):
    """The unchanged parent is never published: its verdict is failed or inconclusive, and no directory
    appears (``lethe erase V --client 0 --method noop``)."""
    original, _ = gate_versions
    result = erase(original, ErasureTarget(0), "noop", None, tmp_path / "v", context=context)
    assert not result.report.passed and result.version_dir is None
    assert not (tmp_path / "v").exists()


def test_sample_scope_erasure(gate_versions, context, tmp_path):
    original, _ = gate_versions
    items = context.setup.client_items(1)[:5]
    pairs = tuple(context.setup.train.pair_ids[i] for i in items)
    result = erase(original, ErasureTarget(1, pairs), "ease", {"steps": 10}, tmp_path / "v", context=context,
                   **PUBLISH)
    clients = json.loads((tmp_path / "v" / "clients.json").read_text())["clients"]
    assert clients["1"]["erased_pair_hashes"] == sorted(pair_id_hash(p) for p in pairs)
    assert not set(pairs) & set(clients["1"]["pair_ids"])
    assert result.outcome.cost.client_samples >= len(pairs)


def test_sample_scope_excises_the_clients_exclusive_contribution(context):
    """A subject's erasure removes what its client alone taught (residual 0 of that client's x_c; the parent's
    is 1) and the lock holds those directions; the earlier design (no excision) leaves the weights unchanged
    before its displacement, so a method that skipped closure 1 in samples scope fails here."""
    from ease_engine.federation.exclusive import ExclusiveContribution
    from ease_engine.models.blocks import read_blocks
    from ease_engine.unlearning import METHODS

    spec = METHODS["ease"]
    items = context.setup.client_items(1)[:5]
    target = ErasureTarget(1, tuple(context.setup.train.pair_ids[i] for i in items))
    exclusive = ExclusiveContribution.from_ledger(context.ledger, 1)
    assert exclusive.residual(context.original_values)["all"] == pytest.approx(1.0, abs=1e-6)

    excised = spec.unlearn(context, target, spec.params(steps=0))
    after = read_blocks(excised.bundle.model, context.setup.blocks)
    assert abs(exclusive.residual(after)["all"]) < 1e-4
    assert excised.lock is not None and set(excised.lock.block_names) == set(exclusive.parts)

    assert spec.unlearn(context, target, spec.params(steps=0, excise=False)).ledger_debit is None
    assert spec.unlearn(context, ErasureTarget(1), spec.params(steps=0)).ledger_debit is None  # client scope

    untouched = spec.unlearn(context, target, spec.params(steps=0, sample_excision="none"))
    after = read_blocks(untouched.bundle.model, context.setup.blocks)
    assert all(np.array_equal(after[n].numpy(), context.original_values[n].numpy()) for n in after)


def test_a_subjects_erasure_debits_its_clients_ledger_entry(gate_versions, context, tmp_path):
    """After a subject's erasure the client stays, but what was excised on its behalf is no longer counted in
    its recorded contribution: a second excision (another subject, or the whole client later) finds nothing of
    it left to take out, instead of subtracting it twice."""
    from ease_engine.federation.exclusive import ExclusiveContribution
    from ease_engine.federation.ledger import Ledger, LedgerError

    original, _ = gate_versions
    items = context.setup.client_items(1)[:5]
    pairs = tuple(context.setup.train.pair_ids[i] for i in items)
    result = erase(original, ErasureTarget(1, pairs), "ease", {"steps": 0}, tmp_path / "v", context=context,
                   **PUBLISH)
    assert result.outcome.ledger_debit
    parent_energy = ExclusiveContribution.from_ledger(context.ledger, 1).energy()
    child = Ledger.load(tmp_path / "v" / "ledger")
    assert 1 in child.clients and child.clients == context.ledger.clients
    assert not ExclusiveContribution.from_ledger(child, 1).parts, "rounding left over is no exclusive block"
    # the other clients' entries are as they were, and the parent's ledger object is untouched
    for k in (0, 2):
        for name, c in context.ledger.client(k).contribution.items():
            assert torch.equal(child.client(k).contribution[name], c)
    assert ExclusiveContribution.from_ledger(context.ledger, 1).energy() == pytest.approx(parent_energy)
    with pytest.raises(LedgerError, match="not in the ledger"):
        context.ledger.debited(99, {})


def test_a_second_erasure_carries_the_first_erasures_lock_forward(client_erasure, tmp_path):
    """Erasing from an erased version keeps the first erasure's lock layers beside its own, so the first
    client's directions stay guarded in later rounds; a method without a lock of its own carries the
    parent's unchanged; an unreadable parent lock fails before any work and writes nothing."""
    _, first = client_erasure
    parent_lock = ForgetLock.load(first / "forget_lock")
    context = UnlearningContext.load(first)
    second = erase(first, ErasureTarget(1), "ease", {"steps": 0, "lock_epsilon": 0.05}, tmp_path / "v3",
                   context=context, **PUBLISH)
    lock = ForgetLock.load(tmp_path / "v3" / "forget_lock")
    assert [m["client"] for m in lock.erasures] == ["0", "1"]
    assert set(lock.block_names) == set(parent_lock.block_names) | set(second.outcome.lock.block_names)
    for name in parent_lock.block_names:
        assert torch.equal(lock.layers(name)[0].basis, parent_lock.block(name).basis)
    # the second erasure's own move did not go back toward what the first excised (it was filtered as a round is)
    manifest = json.loads((tmp_path / "v3" / "manifest.json").read_text())
    assert "inherited_lock_interventions" in manifest["erasure"]
    stop = manifest["erasure"]["repair_stop"]
    assert stop["until"] == "steps" and stop["steps"] == 0 and "no block is wholly exclusive" in stop["why"]
    moved = read_blocks(load_version(tmp_path / "v3")[0].model, context.setup.blocks)
    # its own layer is anchored where it was published: a zero update under the chained lock stays zero
    zero = {name: torch.zeros_like(value) for name, value in moved.items()}
    held, _ = lock.apply_to_updates(zero, theta_current=moved)
    assert all(float(held[name].abs().max()) < 1e-6 for name in held) and not lock.failed_closed
    for name in parent_lock.block_names:
        block = parent_lock.block(name)
        coords = block.basis.double().T @ (moved[name] - context.original_values[name]).double().reshape(-1)
        back = -torch.sign(block.displacement) * coords
        worst = float(back.max()) if back.numel() else 0.0
        assert worst <= 1e-5 * (float(context.original_values[name].norm()) + 1), (name, worst)

    erase(first, ErasureTarget(1), "noop", None, tmp_path / "noop", context=context, **PUBLISH)
    carried = ForgetLock.load(tmp_path / "noop" / "forget_lock")
    assert carried.erasures == parent_lock.erasures and carried.block_names == parent_lock.block_names

    alien = tmp_path / "alien"
    shutil.copytree(first, alien)
    other = ForgetLock()
    other.add_block("visual.no_such_layer", torch.eye(3)[:, :1], torch.zeros(3), torch.ones(3))
    shutil.rmtree(alien / "forget_lock")
    other.save(alien / "forget_lock")
    with pytest.raises(UnlearningError, match="belongs to another model.*no_such_layer"):
        erase(alien, ErasureTarget(1), "ease", {"steps": 0}, tmp_path / "never", context=context, **PUBLISH)

    broken = tmp_path / "broken"
    shutil.copytree(first, broken)
    (broken / "forget_lock" / "forget_lock.safetensors").write_bytes(b"not a lock")
    with pytest.raises(UnlearningError, match="Forget Lock of version broken cannot be read"):
        erase(broken, ErasureTarget(1), "ease", {"steps": 0}, tmp_path / "never", context=context, **PUBLISH)
    assert not (tmp_path / "never").exists()


def test_an_erasure_that_would_step_back_along_an_earlier_erasure_is_held(client_erasure):
    """``hold_earlier_erasures`` on a constructed move: straight back along every locked direction of the first
    erasure, plus a part orthogonal to them. The back part is removed and counted; the rest is kept."""
    from ease_engine.inherited_lock import hold_earlier_erasures
    from ease_engine.models.blocks import write_blocks
    from ease_engine.unlearning.base import Cost, UnlearningOutcome

    _, first = client_erasure
    lock = ForgetLock.load(first / "forget_lock")
    context = UnlearningContext.load(first)
    bundle = context.fresh_bundle()
    gen = torch.Generator().manual_seed(0)
    moved, sideways = {}, {}
    for name, value in context.original_values.items():
        side = 1e-3 * torch.randn(value.numel(), generator=gen, dtype=torch.float64)
        if name in lock:
            e = lock.block(name).basis.double()
            side = side - e @ (e.T @ side)
            back = -(e @ lock.block(name).displacement)
        else:
            back = torch.zeros_like(side)
        sideways[name] = side
        moved[name] = value + (back + side).reshape(value.shape).to(value.dtype)
    write_blocks(bundle.model, context.setup.blocks, moved)
    debited = next(n for n in lock.block_names if lock.block(n).rank)
    debit = {debited: torch.zeros_like(context.original_values[debited])}
    outcome = UnlearningOutcome(bundle, Cost(), ledger_debit={k: v.clone() for k, v in debit.items()})
    interventions = hold_earlier_erasures(context, outcome, lock)
    assert interventions == sum(lock.block(n).rank for n in lock.block_names if lock.block(n).rank)
    held = read_blocks(bundle.model, context.setup.blocks)
    for name, value in context.original_values.items():
        change = (held[name] - value).double().reshape(-1)
        torch.testing.assert_close(change, sideways[name], atol=1e-6, rtol=0)
        if name not in lock:
            assert torch.equal(held[name], moved[name]), "a block the lock does not hold keeps its weights exactly"
    # what the lock put back is no longer debited: the debit went down by exactly that
    e, d = lock.block(debited).basis.double(), lock.block(debited).displacement
    torch.testing.assert_close(outcome.ledger_debit[debited].double().reshape(-1), -(e @ d), atol=1e-5, rtol=0)
