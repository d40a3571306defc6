"""Words no model trained on ``scenes`` ever learnt: the null against which a concept probe is judged.

A model that never learnt "purple" does not score chance on the multiple-choice probe: it rules out the
colours it knows and lands on the one word it cannot place. What ignorance does imply is that its "purple"
is one more untrained token, exchangeable with any other: a word whose embedding row no caption ever moved.
So the gate ranks the concept's word among ``N_STAND_INS`` such words, drawn from the tokenizer's vocabulary
(whole-word tokens no scenes caption contains), by how well the erased images match their caption naming
each word. Under ignorance the concept's rank is uniform, and beating all but a few happens by chance
only at the test's level (a permutation test: ``untrained_word_p_value``).

The premise holds for every model of this project: token embeddings start random and get no weight decay,
so a row no caption uses stays exactly at its start (``ease_engine.federation.training.make_optimizer``),
and the pretrained backbone was trained on scenes captions too (``lethe_bench.pretrain``). A backbone
pretrained on natural language has learnt these words; the probe is then no evidence (docs/verification.md).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ease_engine.data.scenes import grammar_captions

N_STAND_INS = 199  # with z = 2 the concept's word fails when it beats at least 196 of them
_SEED = 20261204


def stand_in_words(tokenizer, count: int = N_STAND_INS) -> list[str]:
    """``count`` words of the tokenizer's vocabulary, each one token (alphabetic, 4 to 10 letters) that no
    scenes caption contains, drawn with a fixed seed. Empty for a tokenizer without a BPE vocabulary."""
    encoder = getattr(tokenizer, "encoder", None)
    if not isinstance(encoder, dict):
        return []
    return list(_stand_ins(tokenizer, count))


@functools.lru_cache(maxsize=4)
def _stand_ins(tokenizer, count: int) -> tuple[str, ...]:
    grammar = {int(t) for t in tokenizer(grammar_captions()).flatten()}
    words = sorted(token[:-4] for token, index in tokenizer.encoder.items()
                   if token.endswith("</w>") and token[:-4].isascii() and token[:-4].isalpha()
                   and 4 <= len(token) - 4 <= 10 and index not in grammar)
    if len(words) < count:
        raise ValueError(f"the tokenizer has only {len(words)} candidate stand-in words, {count} asked")
    chosen = np.random.default_rng(_SEED).choice(len(words), size=count, replace=False)
    return tuple(words[i] for i in sorted(chosen))


def untrained_word_p_value(beaten: int, count: int) -> float:
    """One-sided permutation p-value of a word that outscores ``beaten`` of ``count`` untrained words, under
    the null that it is one more of them (ties broken at random, so its rank is uniform over count + 1)."""
    if not 0 <= beaten <= count or count < 1:
        raise ValueError(f"beaten must be 0 to {count}, got {beaten}")
    return (1 + count - beaten) / (count + 1)


def beaten_share(beaten: int, count: int) -> float:
    """The share (percent) of ``count`` untrained words a word outscores, from the count it beats: the one
    expression both the probe and its gate's ceiling use, so that equal counts give equal floats (a mean of
    booleans times 100 differs from 100 * b / n in the last bit for 46 of the 200 counts of 199 words)."""
    return 100.0 * int(beaten) / int(count)


def most_beaten_share(count: int, z: float) -> float:
    """The largest share (percent) of ``count`` untrained words a word may outscore and still be, at level
    z (one-sided normal tail), one more untrained word."""
    alpha = 0.5 * math.erfc(z / math.sqrt(2))
    largest = max(b for b in range(count + 1) if untrained_word_p_value(b, count) >= alpha)
    return beaten_share(largest, count)


__all__ = ["N_STAND_INS", "beaten_share", "most_beaten_share", "stand_in_words", "untrained_word_p_value"]
