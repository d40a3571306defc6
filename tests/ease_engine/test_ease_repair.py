"""When EASE's repair stops (``EaseParams.repair_until``): after ``steps``, or once the retained clients' held-out
utility is back at the parent's (``ease_repair``)."""

import numpy as np
import pytest

from ease_engine.data.dataset import NO_CLIENT
from ease_engine.models.blocks import read_blocks
from ease_engine.unlearning import ErasureTarget, UnlearningContext, ease, ease_repair
from ease_engine.unlearning.ease import EaseParams
from ease_engine.unlearning.ease_repair import RepairCriterionError, UtilityCriterion, retained_calibration

FAST = {"batch_size": 8, "retain_proxy_size": 16, "steps": 10, "utility_check_every": 10, "max_steps": 40}


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


def test_too_few_held_out_pairs_are_refused_with_what_to_do(context):
    data = context.setup.calibration.subset(np.arange(ease_repair.MIN_PAIRS - 1), name="few")
    with pytest.raises(RepairCriterionError, match="client_fraction or use repair_until = 'steps'"):
        UtilityCriterion.at_parent(context.fresh_bundle(), data, tolerance=0, every=5)


def _scripted(monkeypatch, values: list[float]) -> list[int]:
    """``mean_recall`` answers ``values`` in turn (the parent's first); returns the number of calls made."""
    calls: list[int] = []

    def fake(bundle, data, device):
        calls.append(1)
        return values[min(len(calls), len(values)) - 1]

    monkeypatch.setattr(ease_repair, "mean_recall", fake)
    return calls


def _excised_and_final(context, monkeypatch, **params):
    seen = {}
    displace = ease.displace

    def capture(bundle, anchor, setup, plan, *args):
        seen["start"] = read_blocks(bundle.model, plan.blocks)
        seen["plan"] = plan
        return displace(bundle, anchor, setup, plan, *args)

    monkeypatch.setattr(ease, "displace", capture)
    outcome = ease.unlearn(context, ErasureTarget(0), EaseParams(**(FAST | params)))
    return outcome, seen["start"], read_blocks(outcome.bundle.model, seen["plan"].blocks)


def test_after_its_steps_the_repair_stops_at_the_first_measure_that_reaches_the_parent(context, monkeypatch):
    # parent 50; measured after step 10, 20, 30: 20, 49.9, 50 -> stops after 30 steps
    _scripted(monkeypatch, [50.0, 20.0, 49.9, 50.0, 0.0])
    outcome, _, _ = _excised_and_final(context, monkeypatch, repair_until="parent_utility")
    displacement = outcome.details["displacement"]
    assert displacement["steps"] == 30
    record = displacement["repair_criterion"]
    assert record["reached"] and record["target_mean_recall"] == 50.0
    assert [m["step"] for m in record["measures"]] == [10, 20, 30]


def test_a_repair_that_never_gets_there_stops_at_max_steps(context, monkeypatch):
    _scripted(monkeypatch, [50.0, 10.0])  # never back
    outcome, _, _ = _excised_and_final(context, monkeypatch, repair_until="parent_utility")
    record = outcome.details["displacement"]["repair_criterion"]
    assert outcome.details["displacement"]["steps"] == FAST["max_steps"]
    assert not record["reached"]
    assert [m["step"] for m in record["measures"]] == [10, 20, 30, 40]  # where it ended is on record


def test_the_criterion_never_cuts_the_tuned_steps_short(context, monkeypatch):
    """A model the measure finds at the parent's level before any repair (held-out retrieval near chance for
    every model) still gets the tuned steps: the criterion only extends the repair."""
    calls = _scripted(monkeypatch, [50.0, 50.0])
    outcome, start, after = _excised_and_final(context, monkeypatch, repair_until="parent_utility")
    assert outcome.details["displacement"]["steps"] == FAST["steps"]
    assert len(calls) == 2  # the parent, then once after the tuned steps
    assert any(not np.array_equal(start[name].numpy(), after[name].numpy()) for name in start)


def test_fixed_steps_ignore_the_criterion(context, monkeypatch):
    calls = _scripted(monkeypatch, [0.0, 0.0])
    outcome, start, after = _excised_and_final(context, monkeypatch, steps=3)
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
