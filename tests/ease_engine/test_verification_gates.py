"""Production verification: the negative controls fail, the retrain reference and EASE pass, and nothing
is called verified where nothing can be (issue 9). On a small federation that has learned client 0's
exclusive concept (``gate_federation_config``)."""

from __future__ import annotations

import numpy as np
import pytest

from ease_engine.models.version_io import load_version
from ease_engine.unlearning import METHODS, ErasureTarget, UnlearningContext
from ease_engine.verification.gates import Gate, GateConfig, Verdict
from ease_engine.verification.report import Figures, _inconclusive_reasons
from lethe_bench.measure import Bench

OVER_ASCENT = {"radius_fraction": 100.0, "steps": 200, "lr": 0.05, "stop_loss_ratio": 100.0, "repair_rounds": 0,
               "max_grad_norm": None}


@pytest.fixture(scope="module")
def bench(gate_versions):
    original, _ = gate_versions
    context = UnlearningContext.load(original)
    return Bench.build(context, ErasureTarget(0))  # production: no concept named, no reference


def _verdict(bench, method: str, params: dict | None = None):
    spec = METHODS[method]
    outcome = spec.unlearn(bench.context, bench.target, spec.params.model_validate(params or {}))
    return bench.verify(outcome.bundle)


UTILITY_GATES = {"retain_i2t_r1", "retain_t2i_r1", "retained_heldout_i2t_r1", "retained_heldout_t2i_r1"}


@pytest.mark.parametrize(("method", "params", "any_of"), [
    ("noop", {}, {"ledger_residual"}),
    ("perturb", {}, {"ledger_residual"}),
    ("finetune", {}, {"ledger_residual"}),
    # a destroyed model must be caught by a utility gate; which direction's Recall@1 lands under its floor
    # depends on floating point (on one CPU both held-out directions, on another retain and held-out t2i)
    ("pga", OVER_ASCENT, UTILITY_GATES),
])
def test_negative_controls_fail(bench, method, params, any_of):
    report = _verdict(bench, method, params)
    assert report.verdict == Verdict.FAILED, report.reasons
    assert any_of & {g.name for g in report.failed()}, report.reasons


def test_the_retrain_reference_passes_as_a_candidate(bench, gate_versions):
    report = bench.verify(load_version(gate_versions[1])[0])
    assert report.verdict == Verdict.PASSED, report.reasons
    residual = next(g for g in report.gates if g.name == "ledger_residual")
    assert residual.control_passed is False, "the parent itself fails the residual: the gate discriminates"


def test_ease_passes(bench):
    report = _verdict(bench, "ease")
    assert report.verdict == Verdict.PASSED, report.reasons


def test_a_parent_that_learned_nothing_gives_inconclusive_not_passed(tiny_version):
    """Three short rounds: the parent's Recall@1 on client 0 is at chance, so no verdict can be verified."""
    _, original = tiny_version
    bench = Bench.build(UnlearningContext.load(original), ErasureTarget(0))
    report = _verdict(bench, "ease")
    assert report.verdict in (Verdict.INCONCLUSIVE, Verdict.FAILED) and not report.passed, report.reasons
    if report.verdict == Verdict.INCONCLUSIVE:
        assert any("chance" in reason for reason in report.reasons)


# ---------------------------------------------------------------- the gate logic on constructed figures
def _figures(forget=30.0, retain=30.0, heldout=30.0, members=30.0, nonmembers=30.0, auc=0.5, residual=1.0):
    r = {"i2t_r1": 0.0, "t2i_r1": 0.0}
    recall = {"forget": {**r, "i2t_r1": forget, "t2i_r1": forget}, "retain": {**r, "i2t_r1": retain, "t2i_r1": retain},
              "retained_heldout": {**r, "i2t_r1": heldout, "t2i_r1": heldout}}
    return Figures(recall=recall, matched={"members": {"i2t_r1": members, "t2i_r1": members},
                                           "nonmembers": {"i2t_r1": nonmembers, "t2i_r1": nonmembers}},
                   membership={"similarity_auc": auc, "loss_auc": auc}, residual={"all": residual})


class _Sizes:
    """What the gates read of the splits: their sizes."""

    def __init__(self, n=200):
        self.members = self.nonmembers = self.retain = self.retained_heldout = [0] * n
        self.matched_size = n


def _gates(candidate: Figures, parent: Figures, n=200):
    from ease_engine.verification import report as module

    config = GateConfig()
    gates = module._forgetting_gates(candidate, parent, _Sizes(n), config)
    gates += module._utility_gates(candidate, parent, _Sizes(n), config)
    return {g.name: g for g in gates}, gates, config


def test_membership_gate_is_two_sided():
    parent = _figures(auc=0.75)
    too_low = _gates(_figures(auc=0.22), parent)[0]["mia_similarity_auc"]
    too_high = _gates(_figures(auc=0.78), parent)[0]["mia_similarity_auc"]
    fine = _gates(_figures(auc=0.51), parent)[0]["mia_similarity_auc"]
    assert not too_low.passed and not too_high.passed and fine.passed
    assert too_low.control_passed is False


def test_utility_floor_is_relative_to_the_parent_and_chance():
    parent = _figures(retain=40.0, heldout=40.0)
    kept = _gates(_figures(retain=25.0, heldout=25.0), parent)[0]
    lost = _gates(_figures(retain=5.0, heldout=5.0), parent)[0]
    assert kept["retain_i2t_r1"].passed and not lost["retain_i2t_r1"].passed
    # a parent at chance leaves a floor below chance: the gate cannot fail, so the verdict must not be "passed"
    weak_parent = _figures(forget=0.5, retain=0.5, heldout=0.5)
    named, gates, config = _gates(_figures(retain=0.5, heldout=0.5, residual=0.0), weak_parent)
    reasons = _inconclusive_reasons(weak_parent, _Sizes(200), gates, config)
    assert any("utility cannot be verified" in r for r in reasons)
    assert any("no knowledge of them" in r for r in reasons)


def test_a_gate_that_the_parent_passes_is_no_evidence():
    parent = _figures(residual=0.1)  # the parent already looks erased: nothing discriminates
    named, gates, config = _gates(_figures(residual=0.0), parent)
    reasons = _inconclusive_reasons(parent, _Sizes(200), gates, config)
    assert any("every one passes for the parent too" in r for r in reasons)
    discriminating_parent = _figures(residual=1.0)
    named, gates, config = _gates(_figures(residual=0.0), discriminating_parent)
    assert not [r for r in _inconclusive_reasons(discriminating_parent, _Sizes(200), gates, config)
                if "parent too" in r]


def test_gate_bands_and_summary():
    band = Gate.check("x", "forgetting", "d", 0.3, -0.5, 0.5, control_value=1.0)
    assert band.passed and band.comparison == "within" and band.control_passed is False
    floor = Gate.check("y", "utility", "d", 2.0, 3.0, None)
    assert not floor.passed and floor.comparison == ">=" and floor.threshold == 3.0
    assert "FAIL" in floor.summary() and ">= 3" in floor.summary()


def test_the_concept_probe_gates_only_a_concept_no_kept_pair_shows():
    from ease_engine.verification import report as module

    probe = {"accuracy": 60.0, "chance": 12.5, "n_images": 300.0}
    candidate, parent = _figures(residual=0.0), _figures()
    candidate.probe, parent.probe = dict(probe), dict(probe)
    config = GateConfig()
    gated = {g.name: g for g in module._forgetting_gates(candidate, parent, _Sizes(), config)}
    assert not gated["concept_probe"].passed  # 60% on a concept that only the erased data taught: it fails
    shared = {g.name for g in module._forgetting_gates(candidate, parent, _Sizes(), config, probe_gated=False)}
    assert "concept_probe" not in shared  # retained clients teach it too: reported, not gated


def test_concept_pairs_kept_counts_the_pairs_that_stay(gate_versions):
    from ease_engine.evaluation.evaluate import concept_items
    from ease_engine.verification.report import concept_pairs_kept

    context = UnlearningContext.load(gate_versions[0])
    train, concept = context.setup.train, ("colour", "purple")
    owner = context.setup.client_items(0)
    kept = context.retain_items(ErasureTarget(0))
    assert concept_pairs_kept(train, kept, concept) == 0  # client 0 alone holds purple (exclusive partition)
    purple_of_owner = np.intersect1d(owner, concept_items(train, *concept))
    assert len(purple_of_owner) > 0
    with_two = np.concatenate([kept, purple_of_owner[:2]])  # two purple pairs held by a retained client
    assert concept_pairs_kept(train, with_two, concept) == 2
    assert concept_pairs_kept(train, kept, None) == 0


def test_the_ledger_residual_gate_is_one_sided():
    parent = _figures(residual=1.0)
    kept = _gates(_figures(residual=0.8), parent)[0]["ledger_residual"]
    removed = _gates(_figures(residual=0.05), parent)[0]["ledger_residual"]
    beyond = _gates(_figures(residual=-0.9), parent)[0]["ledger_residual"]  # retrain on non-IID data: down to -0.77
    assert not kept.passed and removed.passed and beyond.passed
    assert kept.control_passed is False and kept.comparison == "<="


def test_the_concept_probe_fails_a_word_that_outranks_nearly_every_untrained_word():
    from ease_engine.verification.report import _probe_gate

    config = GateConfig()
    parent = {"accuracy": 79.0, "chance": 12.5, "n_images": 1350.0, "beats_untrained": 100.0, "n_untrained": 199.0}
    ignorant = {**parent, "accuracy": 25.0, "beats_untrained": 62.3}  # above chance, yet an ordinary rank
    gate = _probe_gate(ignorant, parent, config)
    assert gate.passed and gate.control_passed is False
    assert not _probe_gate({**ignorant, "beats_untrained": 100 * 196 / 199}, parent, config).passed
    assert _probe_gate({**ignorant, "beats_untrained": 100 * 195 / 199}, parent, config).passed
    position = {"accuracy": 40.0, "chance": 25.0, "n_images": 400.0}  # two-word values: against chance
    assert not _probe_gate(position, position, config).passed
    assert _probe_gate({**position, "accuracy": 30.0}, position, config).passed


def test_the_retrain_reference_ranks_purple_like_an_untrained_word_and_the_parent_its_known_words_first(
        gate_versions):
    """On real models: the retrain reference never saw a purple caption, and its "purple" passes the
    probe gate; words the parent did learn (red, blue: every client holds them) outrank nearly every
    untrained word, and the best known of them fails it. (This small parent barely learnt purple: 17.9%
    multiple choice. How far each known word outranks the untrained ones depends on floating point: on one
    CPU both fail the gate, on another "blue" outscores 193 of the 199 untrained words, under the gate's
    ceiling of 195.)"""
    from ease_engine.evaluation.evaluate import concept_probe
    from ease_engine.verification.report import _probe_gate

    context = UnlearningContext.load(gate_versions[0])
    train, config = context.setup.train, GateConfig()
    purple = train.subset(context.setup.client_items(0))
    retrain = concept_probe(load_version(gate_versions[1])[0], purple, "colour", "purple")
    assert _probe_gate(retrain, retrain, config).passed, retrain
    parent = load_version(gate_versions[0])[0]
    known = {colour: concept_probe(parent, train.subset(context.setup.client_items(1)), "colour", colour)
             for colour in ("red", "blue")}
    assert all(probe["beats_untrained"] >= 90.0 for probe in known.values()), known
    assert not all(_probe_gate(probe, probe, config).passed for probe in known.values()), known
    assert retrain["beats_untrained"] < min(probe["beats_untrained"] for probe in known.values()), (retrain, known)
