"""The erasure pipeline end to end on a small federation that has learned something."""

import json
import shutil

import numpy as np
import pytest

from ease_engine.erasure import erase
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.version_io import load_version
from ease_engine.unlearning import ErasureTarget, UnlearningContext, UnlearningError
from ease_engine.verification.membership import MembershipScores, similarity_distribution
from ease_engine.verification.report import GateConfig
from lethe_bench.measure import Bench
from lethe_format import content_hash, directory_digests, hashed_files, pair_id_hash

LOOSE = GateConfig(forget_margin=100, retain_drop=100, mia_margin=1)


@pytest.fixture(scope="module")
def context(learned_versions):
    _, original, _ = learned_versions
    return UnlearningContext.load(original)


@pytest.fixture(scope="module")
def client_erasure(learned_versions, context, tmp_path_factory):
    _, original, retrain = learned_versions
    out = tmp_path_factory.mktemp("erased") / "v2"
    result = erase(original, ErasureTarget(0), "ease", None, out, gates=LOOSE, reference_dir=retrain, context=context)
    return result, out


def test_erased_version_is_complete_and_chained(learned_versions, client_erasure):
    _, original, _ = learned_versions
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
    clients = json.loads((out / "clients.json").read_text())["clients"]
    assert clients["0"]["erased"] is True
    ledger = json.loads((out / "ledger" / "ledger.json").read_text())
    assert "0" not in ledger["clients"], "the erased client's ledger entry is removed"
    lock = ForgetLock.load(out / "forget_lock")
    assert len(lock) > 0
    report = json.loads((out / "verification.json").read_text())
    assert {g["name"] for g in report["gates"]} >= {"forget_i2t_r1", "retain_t2i_r1", "mia_similarity_auc"}
    assert report["reference"]["kind"] == "retrain"
    assert report["distributions"]["similarity"]["n_members"] == report["membership"]["n_members"]


def test_report_carries_the_similarity_distribution_of_forget_vs_test_pairs(client_erasure, context):
    """The histogram in the report is that of the erased model's scores on the forget and test splits."""
    from ease_engine.verification.membership import pair_embeddings, similarity_scores

    result, out = client_erasure
    distribution = result.report.distributions["similarity"]
    assert (distribution["members_split"], distribution["nonmembers_split"]) == ("forget", "test")
    bench = Bench.build(context, ErasureTarget(0), LOOSE)
    erased = load_version(out)[0]
    members = similarity_scores(*pair_embeddings(erased, bench.splits["forget"]))
    nonmembers = similarity_scores(*pair_embeddings(erased, bench.splits["test"]))
    assert np.histogram(members, bins=distribution["edges"])[0].tolist() == distribution["members"]
    assert np.histogram(nonmembers, bins=distribution["edges"])[0].tolist() == distribution["nonmembers"]
    assert sum(distribution["members"]) == len(bench.splits["forget"]) == result.report.membership["n_members"]
    assert sum(distribution["nonmembers"]) == len(bench.splits["test"])
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


def _mean_pair_similarity(bundle, dataset) -> float:
    from ease_engine.verification.membership import pair_embeddings, similarity_scores

    return float(similarity_scores(*pair_embeddings(bundle, dataset)).mean())


def test_ease_forgets_and_keeps_utility(learned_versions, client_erasure, context):
    """Margins a do-nothing method (no change) or a destroying one (retain collapses) would fail.

    On this small federation retrain itself is barely worse on client 0's pairs, so forgetting is
    measured as the forget pairs' image-text similarity: it must fall clearly more than the
    held-out pairs' does, while retain and test R@1 hold.
    """
    result, out = client_erasure
    bench = Bench.build(context, ErasureTarget(0))
    erased = load_version(out)[0]
    forget_drop = _mean_pair_similarity(context.setup.bundle, bench.splits["forget"]) - _mean_pair_similarity(
        erased, bench.splits["forget"]
    )
    test_drop = _mean_pair_similarity(context.setup.bundle, bench.splits["test"]) - _mean_pair_similarity(
        erased, bench.splits["test"]
    )
    assert forget_drop >= 0.05 and forget_drop >= 2 * test_drop, (forget_drop, test_drop)
    before = bench.measure(context.setup.bundle)
    after = bench.measure(erased)
    retain_drop = sum(before.r1("retain", d) - after.r1("retain", d) for d in ("i2t", "t2i")) / 2
    test_r1_drop = sum(before.r1("test", d) - after.r1("test", d) for d in ("i2t", "t2i")) / 2
    assert retain_drop <= 3.0 and test_r1_drop <= 5.0, (before.recall, after.recall)


def test_excision_puts_exclusive_rows_where_retrain_has_them(learned_versions, context, tmp_path):
    """A word only client 0 used: its embedding row is reset exactly to the never-trained value."""
    _, original, retrain = learned_versions
    result = erase(original, ErasureTarget(0), "ease", {"steps": 0}, tmp_path / "v", gates=LOOSE, context=context)
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
        erase(out, ErasureTarget(0), out_dir=tmp_path / "v3", gates=LOOSE)
    assert not (tmp_path / "v3").exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (ErasureTarget(7), "Client '7' is not in"),
        (ErasureTarget(0, ()), "at least one pair id"),
        (ErasureTarget(0, ("scenes-train-999999",)), "are not pairs of client '0'"),
    ],
)
def test_bad_targets_write_nothing(learned_versions, context, tmp_path, target, message):
    _, original, _ = learned_versions
    with pytest.raises(UnlearningError, match=message):
        erase(original, target, out_dir=tmp_path / "v", gates=LOOSE, context=context)
    assert not (tmp_path / "v").exists()


def test_bad_method_or_parameters_fail_before_any_work(learned_versions, tmp_path):
    _, original, _ = learned_versions
    with pytest.raises(UnlearningError, match="unknown method"):
        erase(original, ErasureTarget(0), "forget-it", out_dir=tmp_path / "v")
    with pytest.raises(UnlearningError, match="sin_mni"):
        erase(original, ErasureTarget(0), "ease", {"sin_mni": 0.5}, out_dir=tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_a_version_without_ledger_is_refused(learned_versions, tmp_path):
    _, original, _ = learned_versions
    copy = tmp_path / "no-ledger"
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "ledger")
    with pytest.raises(UnlearningError, match="needs the contribution ledger"):
        erase(copy, ErasureTarget(0), out_dir=tmp_path / "v", gates=LOOSE)
    assert not (tmp_path / "v").exists()


def test_failed_gates_publish_nothing(learned_versions, context, tmp_path):
    _, original, _ = learned_versions
    # sin_min = 0.01 marks nearly every direction of client 0 exclusive and excises its whole contribution,
    # entangled blocks included: retain R@1 falls (this small model's is only 4-7%, so the gate is tight)
    destroy = {"excise_blocks": "exclusive", "sin_min": 0.01, "steps": 0}
    gates = GateConfig(retain_drop=0.5)
    result = erase(original, ErasureTarget(0), "ease", destroy, tmp_path / "v", gates=gates, context=context)
    assert not result.report.passed and result.version_dir is None
    assert not (tmp_path / "v").exists()
    assert {g.name for g in result.report.failed()} & {"retain_i2t_r1", "retain_t2i_r1"}


def test_sample_scope_erasure(learned_versions, context, tmp_path):
    _, original, _ = learned_versions
    items = context.setup.client_items(1)[:5]
    pairs = tuple(context.setup.train.pair_ids[i] for i in items)
    result = erase(original, ErasureTarget(1, pairs), "ease", {"steps": 10}, tmp_path / "v", gates=LOOSE,
                   context=context)
    clients = json.loads((tmp_path / "v" / "clients.json").read_text())["clients"]
    assert clients["1"]["erased_pair_hashes"] == sorted(pair_id_hash(p) for p in pairs)
    assert not set(pairs) & set(clients["1"]["pair_ids"])
    assert result.outcome.cost.client_samples >= len(pairs)
