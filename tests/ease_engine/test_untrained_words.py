"""The concept probe's null: words no scenes caption contains, and the permutation test that ranks the
concept's word among them (checked against brute force and simulation)."""

from __future__ import annotations

import numpy as np
import pytest

from ease_engine.data.scenes import grammar_captions
from ease_engine.evaluation.untrained_words import (
    N_STAND_INS,
    beaten_share,
    most_beaten_share,
    stand_in_words,
    untrained_word_p_value,
)
from ease_engine.models.config import ModelConfig
from ease_engine.models.factory import build_model


@pytest.fixture(scope="module")
def tokenizer():
    return build_model(ModelConfig(architecture="lethe-tiny")).tokenizer


def test_stand_ins_are_single_tokens_no_scenes_caption_contains(tokenizer):
    words = stand_in_words(tokenizer)
    assert len(words) == len(set(words)) == N_STAND_INS and words == stand_in_words(tokenizer)  # seeded
    special = {int(t) for t in tokenizer([""]).flatten()}  # start, end, padding
    grammar = {int(t) for t in tokenizer(grammar_captions()).flatten()} - special
    assert len(grammar) > 30
    for word in words:
        tokens = [int(t) for t in tokenizer([word]).flatten() if int(t) not in special]
        assert len(tokens) == 1 and tokens[0] not in grammar, word
    assert not {"purple", "red", "circle", "large", "left"} & set(words)


def test_a_tokenizer_without_a_vocabulary_has_no_stand_ins():
    assert stand_in_words(lambda texts: None) == []


def test_p_value_is_the_rank_of_an_exchangeable_word():
    assert untrained_word_p_value(199, 199) == pytest.approx(1 / 200)
    assert untrained_word_p_value(0, 199) == 1.0
    with pytest.raises(ValueError):
        untrained_word_p_value(200, 199)


@pytest.mark.parametrize("count", [19, 99, 199])
def test_an_untrained_word_fails_at_the_nominal_rate_and_a_learnt_one_always(count):
    """Simulation: when the concept's word is one more untrained word (all scores i.i.d.), it outscores more
    than the allowed share in at most Phi(-z) = 2.3% of draws; a word that outscores all fails whenever the
    test can reject at all (count >= 43)."""
    ceiling = most_beaten_share(count, 2.0)
    brute = max(b for b in range(count + 1) if (1 + count - b) / (count + 1) >= 0.02275)
    assert ceiling == pytest.approx(100 * brute / count)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20000, count + 1))
    beaten = 100 * (scores[:, 1:] < scores[:, :1]).mean(axis=1)
    false_fail = float((beaten > ceiling).mean())
    assert false_fail <= 0.0228 + 0.003
    assert false_fail >= (0.015 if count >= 43 else 0.0)
    assert (ceiling < 100.0) == (count >= 43)


def test_a_word_that_beats_exactly_the_allowed_count_passes_the_gate_and_one_more_fails():
    """The gate compares counts: a share computed another way (a mean of booleans times 100, as the probe once
    did) lands one ulp above the ceiling for the largest allowed count of 199 words, and must still pass."""
    import torch

    from ease_engine.verification.gates import GateConfig
    from ease_engine.verification.report import _probe_gate

    config = GateConfig()
    count = 199
    ceiling = most_beaten_share(count, config.z)
    largest = round(ceiling * count / 100)
    as_mean = 100.0 * float((torch.arange(count) < largest).double().mean())
    assert as_mean > ceiling  # the float trap this test is about
    parent = {"beats_untrained": 100.0, "n_untrained": count}
    for value, passes in [(as_mean, True), (beaten_share(largest, count), True),
                          (beaten_share(largest + 1, count), False), (beaten_share(0, count), True)]:
        gate = _probe_gate({"beats_untrained": value, "n_untrained": count}, parent, config)
        assert gate.passed is passes, value
        assert gate.control_passed is False  # the parent that outscores every untrained word fails
