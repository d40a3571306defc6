"""When EASE's repair stops (``EaseParams.repair_until``): after ``steps``, or once the retained clients' held-out
utility is back at the parent's (``ease_repair``)."""

import numpy as np
import pytest
import scipy.stats

from ease_engine.data.dataset import NO_CLIENT
from ease_engine.evaluation.evaluate import retrieval_metrics
from ease_engine.federation.exclusive import ExclusiveContribution
from ease_engine.models.blocks import read_blocks
from ease_engine.unlearning import ErasureTarget, UnlearningContext, ease, ease_repair
from ease_engine.unlearning.base import UnlearningError
from ease_engine.unlearning.ease import EaseParams
from ease_engine.unlearning.ease_repair import RepairCriterionError, UtilityCriterion, retained_calibration

# distinct numbers, so that wiring one where another belongs shows (and the last step is off the measure grid)
FAST = {"batch_size": 8, "retain_proxy_size": 16, "steps": 10, "utility_check_every": 15, "max_steps": 50}


@pytest.fixture(scope="module")
def context(gate_versions):
    """The gate-case federation: its retained clients hold enough calibration pairs to measure recall on."""
    original, _ = gate_versions
    return UnlearningContext.load(original)


def test_the_yardstick_is_the_retained_clients_calibration_pairs_only(context):
    calibration = context.setup.calibration
    retained = context.retained_clients(ErasureTarget(0))
    held_out = retained_calibration(calibration, retained)
    expected = [i for i, owner in enumerate(calibration.client_ids) if owner in retained]  # brute force
    assert len(held_out) == len(expected) > 0
    assert set(held_out.client_ids.tolist()) == set(retained)
    assert 0 not in held_out.client_ids and NO_CLIENT not in held_out.client_ids
    assert NO_CLIENT in calibration.client_ids and 0 in calibration.client_ids  # both were there to leave out


def test_the_target_is_the_parents_measure_less_the_tolerance(context):
    data = retained_calibration(context.setup.calibration, context.retained_clients(ErasureTarget(0)))
    parent = context.fresh_bundle()
    measured = ease_repair.mean_recall(parent, data, "cpu")
    assert 0 < measured <= 100
    assert UtilityCriterion.at_parent(parent, data, tolerance=2.5, every=5).target == pytest.approx(measured - 2.5)


def test_the_criterion_tokenizes_its_captions_once_and_measures_what_a_fresh_evaluation_does(context, monkeypatch):
    data = retained_calibration(context.setup.calibration, context.retained_clients(ErasureTarget(0)))
    parent = context.fresh_bundle()
    expected = ease_repair.mean_recall(parent, data, "cpu")  # tokenizing on its own
    tokenized = []
    tokenize = type(parent).tokenize
    monkeypatch.setattr(type(parent), "tokenize", lambda self, texts: tokenized.append(len(texts)) or tokenize(
        self, texts))
    criterion = UtilityCriterion.at_parent(parent, data, tolerance=0, every=5)
    for step in (0, 5, 10):
        criterion.reached(parent, step)
    # once, each distinct caption, for the parent's measure and three more
    assert tokenized == [len(set(data.caption_owner()[0]))]
    assert criterion.parent_value == expected
    assert [m["mean_recall"] for m in criterion.measures] == [round(expected, 3)] * 3


def test_too_few_held_out_pairs_are_refused_with_what_to_do(context):
    data = context.setup.calibration.subset(np.arange(ease_repair.MIN_PAIRS - 1), name="few")
    with pytest.raises(RepairCriterionError, match="set repair_until = 'steps', or train the federation"):
        UtilityCriterion.at_parent(context.fresh_bundle(), data, tolerance=0, every=5)


def _scripted(monkeypatch, values: list) -> list[np.ndarray]:
    """The measure answers ``values`` in turn (the parent's first): a mean recall, or the images' shares of it;
    returns the owners of the pairs measured, one array per call."""
    calls: list[np.ndarray] = []

    def fake(bundle, data, device, tokens=None):
        calls.append(np.asarray(data.client_ids))
        value = values[min(len(calls), len(values)) - 1]
        return np.asarray([value, value] if np.isscalar(value) else value, dtype=float)

    monkeypatch.setattr(ease_repair, "shares", fake)
    return calls


def _excised_and_final(context, monkeypatch, target=ErasureTarget(0), **params):
    seen = {}
    displace = ease.displace

    def capture(bundle, anchor, setup, plan, *args):
        seen["start"] = read_blocks(bundle.model, plan.blocks)
        seen["plan"] = plan
        return displace(bundle, anchor, setup, plan, *args)

    monkeypatch.setattr(ease, "displace", capture)
    outcome = ease.unlearn(context, target, EaseParams(**(FAST | params)))
    return outcome, seen["start"], read_blocks(outcome.bundle.model, seen["plan"].blocks)


def test_after_its_steps_the_repair_stops_at_the_first_measure_that_reaches_the_parent(context, monkeypatch):
    # parent 50; measured after step 10, 25, 40: 20, 49.9, 50 -> stops after 40 steps
    calls = _scripted(monkeypatch, [50.0, 20.0, 49.9, 50.0, 0.0])
    outcome, _, _ = _excised_and_final(context, monkeypatch, repair_until="parent_utility")
    displacement = outcome.details["displacement"]
    assert displacement["steps"] == 40
    record = displacement["repair_criterion"]
    assert record["reached"] and record["target_mean_recall"] == record["parent_mean_recall"] == 50.0
    assert [m["step"] for m in record["measures"]] == [10, 25, 40]
    assert [m["reached"] for m in record["measures"]] == [False, False, True]
    # every measure (the parent's too) is on the retained clients' calibration pairs, all of them
    retained = retained_calibration(context.setup.calibration, context.retained_clients(ErasureTarget(0)))
    assert record["pairs"] == len(retained) and len(calls) == 4
    assert all(set(owners.tolist()) == set(context.retained_clients(ErasureTarget(0))) for owners in calls)
    # the cost counts the repair's steps and every image the measures encoded
    proxy = min(FAST["batch_size"], FAST["retain_proxy_size"])
    assert outcome.cost.server_samples == 40 * proxy + 4 * len(retained)


def test_the_tolerance_lowers_the_target(context, monkeypatch):
    _scripted(monkeypatch, [50.0, 47.5])
    outcome, _, _ = _excised_and_final(context, monkeypatch, repair_until="parent_utility", utility_tolerance=2.5)
    record = outcome.details["displacement"]["repair_criterion"]
    assert record["target_mean_recall"] == 47.5 and record["reached"]
    assert outcome.details["displacement"]["steps"] == FAST["steps"]


def test_a_tolerance_of_one_standard_error_is_the_parents_own_sampling_error(context):
    data = retained_calibration(context.setup.calibration, context.retained_clients(ErasureTarget(0)))
    parent = context.fresh_bundle()
    shares = ease_repair.shares(parent, data, "cpu")
    assert len(shares) == len(data) and shares.std() > 0
    criterion = UtilityCriterion.at_parent(parent, data, tolerance="standard_error", every=5)
    recalls = retrieval_metrics(parent, data)  # the evaluation's own six recalls: the shares split their mean
    assert criterion.parent_value == pytest.approx(np.mean([v for k, v in recalls.items() if k != "n_images"]))
    assert criterion.tolerance == pytest.approx(scipy.stats.sem(shares)) and criterion.tolerance > 0
    assert criterion.target == pytest.approx(criterion.parent_value - scipy.stats.sem(shares))
    record = criterion.summary()
    assert record["tolerance"]["rule"] == "standard_error"
    assert record["parent_standard_error"] == record["tolerance"]["points"] == round(criterion.tolerance, 3)
    # in points, the error is on record and the target ignores it
    points = UtilityCriterion.at_parent(parent, data, tolerance=0, every=5)
    assert points.target == points.parent_value and points.summary()["tolerance"] == {"rule": "points", "points": 0}
    assert points.summary()["parent_standard_error"] == record["parent_standard_error"]


def test_a_standard_error_needs_two_images_and_a_tolerance_is_a_finite_number_or_the_rule():
    assert ease_repair.standard_error(np.array([40.0, 60.0])) == pytest.approx(10.0)
    with pytest.raises(RepairCriterionError, match="at least 2 images"):
        ease_repair.standard_error(np.array([50.0]))
    for bad in (-1, float("inf"), float("nan"), "sem", None):
        with pytest.raises(ValueError):
            EaseParams(utility_tolerance=bad)
    assert EaseParams(utility_tolerance=1.5).utility_tolerance == 1.5


def test_a_measure_equal_to_the_target_but_for_float_summation_order_reaches_it(context, monkeypatch):
    data = retained_calibration(context.setup.calibration, context.retained_clients(ErasureTarget(0)))
    criterion = UtilityCriterion(data, parent_value=50.0, tolerance=0.0, every=5)
    monkeypatch.setattr(ease_repair, "mean_recall", lambda *args: 50.0 - 1e-12)  # the same counts, other images
    assert criterion.reached(None, 10)
    monkeypatch.setattr(ease_repair, "mean_recall", lambda *args: 50.0 - 1e-6)  # far below any one hit's share
    assert not criterion.reached(None, 20)


def test_the_repair_stops_within_the_parents_standard_error(context, monkeypatch):
    # the parent's images share 40 and 60: mean 50, standard error 10, so 41 is back and 39 is not
    assert EaseParams().utility_tolerance == "standard_error"  # the default
    _scripted(monkeypatch, [[40.0, 60.0], 39.0, 41.0])
    outcome, _, _ = _excised_and_final(context, monkeypatch, repair_until="parent_utility")
    record = outcome.details["displacement"]["repair_criterion"]
    assert record["target_mean_recall"] == 40.0 and record["parent_mean_recall"] == 50.0
    assert [m["reached"] for m in record["measures"]] == [False, True]
    assert outcome.details["displacement"]["steps"] == 25
    _scripted(monkeypatch, [[40.0, 60.0], 39.0, 41.0, 50.0])  # in points (0), the same measures run on to 50
    outcome, _, _ = _excised_and_final(context, monkeypatch, repair_until="parent_utility", utility_tolerance=0)
    assert outcome.details["displacement"]["steps"] == 40


def test_samples_scope_measures_every_clients_calibration_pairs(context, monkeypatch):
    """A data subject's client stays: its held-out pairs (never the subject's, which are training pairs) count."""
    calls = _scripted(monkeypatch, [50.0, 50.0])
    items = context.setup.client_items(0)[:8]
    subject = ErasureTarget(0, pair_ids=tuple(context.setup.train.pair_ids[i] for i in items))
    _excised_and_final(context, monkeypatch, target=subject, repair_until="parent_utility")
    assert set(calls[0].tolist()) == set(context.retained_clients(subject)) and 0 in calls[0]


def test_a_repair_that_never_gets_there_stops_at_max_steps(context, monkeypatch):
    _scripted(monkeypatch, [50.0, 10.0])  # never back
    outcome, _, _ = _excised_and_final(context, monkeypatch, repair_until="parent_utility")
    record = outcome.details["displacement"]["repair_criterion"]
    assert outcome.details["displacement"]["steps"] == FAST["max_steps"]
    assert not record["reached"]
    assert [m["step"] for m in record["measures"]] == [10, 25, 40, 50]  # where it ended is on record


def test_the_criterion_never_cuts_the_tuned_steps_short_nor_changes_them(context, monkeypatch):
    """A model the measure finds at the parent's level before any repair (held-out retrieval near chance for
    every model) still gets the tuned steps, exactly as without the criterion: the measures draw no random numbers
    and leave the model as they found it."""
    calls = _scripted(monkeypatch, [50.0, 50.0])
    outcome, _, measured = _excised_and_final(context, monkeypatch, repair_until="parent_utility")
    assert outcome.details["displacement"]["steps"] == FAST["steps"]
    assert len(calls) == 2  # the parent, then once after the tuned steps
    _, _, fixed = _excised_and_final(context, monkeypatch, repair_until="steps")
    assert all(np.array_equal(measured[name].numpy(), fixed[name].numpy()) for name in fixed)


def test_settings_that_would_cut_the_tuned_steps_are_refused():
    with pytest.raises(ValueError, match="1 <= steps <= max_steps"):
        EaseParams(repair_until="parent_utility", steps=30, max_steps=20)
    with pytest.raises(ValueError, match="1 <= steps <= max_steps"):
        EaseParams(repair_until="parent_utility", steps=0)
    EaseParams(steps=0)  # without the criterion no displacement is a setting of its own (an ablation)


def test_too_few_pairs_are_refused_before_anything_is_computed(context, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("excision ran before the refusal")

    monkeypatch.setattr(ease_repair, "MIN_PAIRS", 10_000)
    monkeypatch.setattr(ease.ExclusiveContribution, "from_ledger", never)
    with pytest.raises(UnlearningError, match="set repair_until = 'steps'"):
        ease.unlearn(context, ErasureTarget(0), EaseParams(**FAST, repair_until="parent_utility"))


def test_fixed_steps_ignore_the_criterion(context, monkeypatch):
    calls = _scripted(monkeypatch, [0.0, 0.0])
    outcome, start, after = _excised_and_final(context, monkeypatch, steps=3, repair_until="steps")
    assert outcome.details["displacement"]["steps"] == 3 and not calls
    assert "repair_criterion" not in outcome.details["displacement"]
    assert any(not np.array_equal(start[name].numpy(), after[name].numpy()) for name in start)


def test_measured_on_the_real_model_the_record_is_consistent(context):
    """No script: the criterion measures the tiny model; whatever it finds, the record is one that holds."""
    outcome = ease.unlearn(context, ErasureTarget(0), EaseParams(**FAST, repair_until="parent_utility"))
    displacement = outcome.details["displacement"]
    record = displacement["repair_criterion"]
    values = [m["mean_recall"] for m in record["measures"]]
    if displacement["steps"] < FAST["max_steps"]:  # stopped early: because the target was reached
        assert values[-1] >= record["target_mean_recall"] and record["reached"]
    assert all(v < record["target_mean_recall"] for v in values[:-1])  # it did not run past a reached target


# ---------------------------------------------------------------- repair_until = "auto": the ledger chooses
def test_auto_goes_on_only_for_a_client_erasure_with_a_wholly_exclusive_block_and_enough_to_measure():
    on, why = ease_repair.auto_stop("client", 1, steps=30, max_steps=120, count_pairs=lambda: 200)
    assert on and "1 block(s) wholly exclusive" in why and "200 retained calibration pairs" in why

    def not_asked() -> int:
        raise AssertionError("the pairs were counted although the rule had decided")

    for args, reason in [(("samples", 3, 30, 120, not_asked), "samples scope"),
                         (("client", 0, 30, 120, not_asked), "no block is wholly exclusive"),
                         (("client", 2, 120, 120, not_asked), "already reach max_steps"),
                         (("client", 2, 0, 120, not_asked), "steps = 0"),
                         (("client", 2, 30, 120, lambda: ease_repair.MIN_PAIRS - 1), "retained calibration pairs")]:
        on, why = ease_repair.auto_stop(*args)
        assert not on and reason in why, args


def _wholly_exclusive(context, client: int) -> frozenset[str]:
    return ExclusiveContribution.from_ledger(context.ledger, client, EaseParams().retained_energy).wholly_exclusive


def test_auto_is_the_default_and_goes_on_where_the_erased_client_alone_moved_a_block(context, monkeypatch):
    assert EaseParams().repair_until == "auto"
    assert _wholly_exclusive(context, 0)  # client 0 alone uses the word "purple": its row no one else moved
    calls = _scripted(monkeypatch, [50.0, 20.0, 50.0])
    outcome, _, auto = _excised_and_final(context, monkeypatch)
    assert outcome.details["repair_stop"]["until"] == "parent_utility"
    assert outcome.details["displacement"]["steps"] == 25 and len(calls) == 3
    _scripted(monkeypatch, [50.0, 20.0, 50.0])
    _, _, explicit = _excised_and_final(context, monkeypatch, repair_until="parent_utility")
    assert all(np.array_equal(auto[name].numpy(), explicit[name].numpy()) for name in explicit)


def test_auto_keeps_the_tuned_steps_where_no_block_is_wholly_exclusive(context, monkeypatch):
    shared = [k for k in context.retained_clients(ErasureTarget(0)) if not _wholly_exclusive(context, k)]
    assert shared  # a client whose every block another client moved too
    target = ErasureTarget(shared[0])
    calls = _scripted(monkeypatch, [50.0, 0.0])  # a criterion would run to max_steps on this script
    outcome, _, auto = _excised_and_final(context, monkeypatch, target=target)
    assert outcome.details["repair_stop"]["until"] == "steps" and "no block is wholly exclusive" in \
        outcome.details["repair_stop"]["why"]
    assert outcome.details["displacement"]["steps"] == FAST["steps"] and not calls
    _, _, fixed = _excised_and_final(context, monkeypatch, target=target, repair_until="steps")
    assert all(np.array_equal(auto[name].numpy(), fixed[name].numpy()) for name in fixed)


def test_auto_keeps_the_tuned_steps_for_a_data_subject(context, monkeypatch):
    calls = _scripted(monkeypatch, [50.0, 0.0])
    items = context.setup.client_items(0)[:8]
    subject = ErasureTarget(0, pair_ids=tuple(context.setup.train.pair_ids[i] for i in items))
    outcome, _, _ = _excised_and_final(context, monkeypatch, target=subject)
    stop = outcome.details["repair_stop"]
    assert stop["until"] == "steps" and "samples scope" in stop["why"]
    assert outcome.details["displacement"]["steps"] == FAST["steps"] and not calls


def test_auto_with_too_few_pairs_falls_back_to_the_steps_instead_of_refusing(context, monkeypatch):
    calls = _scripted(monkeypatch, [50.0, 0.0])
    monkeypatch.setattr(ease_repair, "MIN_PAIRS", 10_000)
    outcome, _, _ = _excised_and_final(context, monkeypatch)
    assert outcome.details["repair_stop"]["until"] == "steps" and not calls
    assert "retained calibration pairs" in outcome.details["repair_stop"]["why"]
    assert outcome.details["displacement"]["steps"] == FAST["steps"]
