"""The synthetic ``scenes`` data set: determinism, unique scenes, faithful captions and pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydantic import ValidationError

from ease_engine.data import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    VOCABULARIES,
    SceneObject,
    ScenesConfig,
    canonical_key,
    make_scenes,
    probe_captions,
    scene_caption,
)
from ease_engine.data.scenes import (
    PALETTE,
    _Renderer,
    caption_naming,
    grammar_captions,
    quadrant_slices,
    scene_capacity,
)

SMALL = ScenesConfig(n_train=200, n_test=50, seed=3)
COLOUR_MATCH_DISTANCE = 60.0
PHRASE = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")
POSITION = re.compile("|".join(POSITIONS))


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(SMALL)


def all_items(scenes):
    train, test = scenes
    return list(zip(train.structure + test.structure, train.captions + test.captions, strict=True))


def parse_caption(caption: str) -> set[tuple[str, str, str, str]]:
    """(position, size, colour, shape) of each object, pairing the i-th phrase with the i-th position.

    All templates name an object's phrase and its position next to each other, so pairing
    by order of appearance recovers the binding independently of the generator.
    """
    phrases = PHRASE.findall(caption)
    positions = POSITION.findall(caption)
    assert len(phrases) == len(positions), caption
    return {(pos, size, colour, shape) for (size, colour, shape), pos in zip(phrases, positions, strict=True)}


def estimated_tokens(caption: str) -> int:
    """Words and punctuation marks, plus start and end token (the vocabulary is all common words)."""
    return len(re.findall(r"[a-z]+|[^\sa-z]", caption)) + 2


def colour_pixel_counts(quadrant: np.ndarray) -> dict[str, int]:
    pixels = quadrant.reshape(-1, 3).astype(np.float64)
    return {
        name: int((np.linalg.norm(pixels - np.array(rgb), axis=1) < COLOUR_MATCH_DISTANCE).sum())
        for name, rgb in PALETTE.items()
    }


# --------------------------------------------------------------------------- build
def test_sizes_ids_and_shapes(scenes):
    train, test = scenes
    assert len(train) == 200 and len(test) == 50
    assert train.pixels.shape == (200, 48, 48, 3) and train.pixels.dtype == np.uint8
    assert train.pair_ids[123] == "scenes-train-000123"
    assert test.pair_ids[42] == "scenes-test-000042"
    assert all(len(caps) == 6 for caps in train.captions + test.captions)


def test_same_seed_gives_identical_data(scenes):
    train, test = scenes
    train2, test2 = make_scenes(SMALL)
    assert np.array_equal(train.pixels, train2.pixels) and np.array_equal(test.pixels, test2.pixels)
    assert train.captions == train2.captions and test.captions == test2.captions
    assert train.structure == train2.structure


def test_other_seed_gives_different_data(scenes):
    train, _ = scenes
    other, _ = make_scenes(SMALL.model_copy(update={"seed": 4}))
    assert not np.array_equal(train.pixels, other.pixels)
    assert train.captions != other.captions


def test_no_two_images_share_a_scene(scenes):
    keys = [canonical_key(objects) for objects, _ in all_items(scenes)]
    assert len(set(keys)) == len(keys)


def test_uniqueness_holds_when_every_possible_scene_is_used():
    capacity = scene_capacity(1)  # 4 positions x 96 objects
    config = ScenesConfig(n_train=capacity - 4, n_test=4, object_count_weights={1: 1.0}, image_size=16)
    train, test = make_scenes(config)
    keys = {canonical_key(objects) for objects in train.structure + test.structure}
    assert len(keys) == capacity


def test_too_many_images_for_the_distinct_scenes_is_rejected():
    with pytest.raises(ValidationError, match="distinct"):
        ScenesConfig(n_train=scene_capacity(1) + 1, n_test=0, object_count_weights={1: 1.0})


def test_unknown_config_key_is_rejected_by_name():
    with pytest.raises(ValidationError, match="n_trian"):
        ScenesConfig(n_trian=10)


def test_odd_image_size_is_rejected():
    with pytest.raises(ValidationError, match="even"):
        ScenesConfig(image_size=47)


def test_objects_occupy_distinct_quadrants_and_counts_follow_weights(scenes):
    counts = {1: 0, 2: 0, 3: 0}
    for objects, _ in all_items(scenes):
        positions = [o.position for o in objects]
        assert len(set(positions)) == len(positions)
        counts[len(objects)] += 1
    for count, weight in SMALL.object_count_weights.items():
        assert abs(counts[count] - weight * 250) <= 1  # exact shares, rounded


def test_concepts_list_the_values_present(scenes):
    train, _ = scenes
    for objects, concepts in zip(train.structure, train.concepts, strict=True):
        assert concepts["colour"] == frozenset(o.colour for o in objects)
        assert concepts["shape"] == frozenset(o.shape for o in objects)
        assert concepts["size"] == frozenset(o.size for o in objects)
        assert concepts["position"] == frozenset(o.position for o in objects)


# --------------------------------------------------------------------------- captions
def test_every_caption_binds_every_attribute_of_every_object(scenes):
    for objects, captions in all_items(scenes):
        for caption in captions:
            assert parse_caption(caption) == set(canonical_key(objects)), caption


def test_captions_use_three_templates_and_two_orders(scenes):
    for objects, captions in all_items(scenes):
        expected_distinct = 6 if len(objects) > 1 else 3
        assert len(set(captions)) == expected_distinct
        assert captions[2].startswith(tuple(POSITIONS))  # "top left: a large ..."
        assert captions[4].startswith("there is ")


def test_captions_fit_a_32_token_context(scenes):
    longest = [
        SceneObject("triangle", "yellow", "large", "bottom right"),
        SceneObject("diamond", "orange", "small", "bottom left"),
        SceneObject("triangle", "purple", "large", "top right"),
    ]
    worst = [scene_caption(longest, t, (0, 1, 2)) for t in range(3)]
    for caption in worst + [c for _, caps in all_items(scenes) for c in caps]:
        assert estimated_tokens(caption) <= 32, caption


def test_swapping_colours_changes_the_caption():
    a = [
        SceneObject("circle", "red", "large", "top left"),
        SceneObject("square", "blue", "small", "bottom right"),
    ]
    b = [
        SceneObject("circle", "blue", "large", "top left"),
        SceneObject("square", "red", "small", "bottom right"),
    ]
    assert scene_caption(a, 0, (0, 1)) == (
        "a large red circle in the top left and a small blue square in the bottom right"
    )
    for template in range(3):
        assert scene_caption(a, template, (0, 1)) != scene_caption(b, template, (0, 1))


def test_scene_caption_rejects_bad_arguments():
    objects = [SceneObject("circle", "red", "large", "top left")]
    with pytest.raises(ValueError, match="template"):
        scene_caption(objects, 3, (0,))
    with pytest.raises(ValueError, match="permutation"):
        scene_caption(objects, 0, (1,))


# --------------------------------------------------------------------------- pixels
def test_pixels_show_the_named_colour_in_the_named_quadrant(scenes):
    _, test = scenes
    for image, objects in zip(test.pixels, test.structure, strict=True):
        occupied = {o.position: o for o in objects}
        for position in POSITIONS:
            rows, cols = quadrant_slices(position, 48)
            counts = colour_pixel_counts(image[rows, cols])
            if position in occupied:
                colour = occupied[position].colour
                assert max(counts, key=counts.get) == colour
                assert counts[colour] >= 10
            else:
                assert sum(counts.values()) <= 2, (position, counts)


def test_large_objects_cover_more_pixels_than_small_ones(scenes):
    train, _ = scenes
    areas: dict[tuple[str, str], list[int]] = {}
    for image, objects in zip(train.pixels, train.structure, strict=True):
        for obj in objects:
            rows, cols = quadrant_slices(obj.position, 48)
            area = colour_pixel_counts(image[rows, cols])[obj.colour]
            areas.setdefault((obj.shape, obj.size), []).append(area)
    for shape in SHAPES:
        assert min(areas[(shape, "large")]) > 1.5 * max(areas[(shape, "small")]), shape


def test_backgrounds_and_object_placement_vary(scenes):
    train, _ = scenes
    assert train.pixels[:, 0, 0].astype(np.float64).std() > 10  # grey level of the background
    first_rows = set()
    for image, objects in zip(train.pixels, train.structure, strict=True):
        for obj in objects:
            if (obj.shape, obj.size, obj.position) == ("square", "small", "top left"):
                rows, cols = quadrant_slices(obj.position, 48)
                distance = np.linalg.norm(image[rows, cols].astype(np.float64) - PALETTE[obj.colour], axis=-1)
                first_rows.add(int(np.flatnonzero((distance < COLOUR_MATCH_DISTANCE).any(axis=1))[0]))
    assert len(first_rows) >= 3  # jitter inside the quadrant


def test_shapes_render_differently():
    def red_mask(shape: str) -> np.ndarray:
        scene = (SceneObject(shape, "red", "large", "top left"),)
        image = _Renderer(48).render(scene, np.random.default_rng(0)).astype(np.float64)
        return np.linalg.norm(image - np.array(PALETTE["red"]), axis=-1) < COLOUR_MATCH_DISTANCE

    masks = {shape: red_mask(shape) for shape in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (masks[a] != masks[b]).sum() >= 15, (a, b)


# --------------------------------------------------------------------------- probe
@pytest.mark.parametrize("attribute", ["colour", "shape", "size", "position"])
def test_probe_captions_differ_only_in_the_attribute(scenes, attribute):
    train, _ = scenes
    objects = next(s for s in train.structure if len(s) == 3)
    value = getattr(objects[1], attribute)
    captions, true_index = probe_captions(objects, attribute, value)
    vocabulary = VOCABULARIES[attribute]
    assert len(captions) == len(vocabulary) and len(set(captions)) == len(vocabulary)
    assert vocabulary[true_index] == value
    assert captions[true_index] == scene_caption(objects, 0, (0, 1, 2))  # structure is canonical order
    attribute_words = {word for v in vocabulary for word in v.split()}
    true_words = captions[true_index].split()
    for caption in captions:
        words = caption.split()
        assert len(words) == len(true_words)
        changed = {w for w, t in zip(words, true_words, strict=True) if w != t}
        assert changed <= attribute_words


def test_probe_replaces_every_object_with_the_value_and_only_those():
    objects = [
        SceneObject("circle", "red", "large", "top left"),
        SceneObject("ring", "red", "small", "top right"),
        SceneObject("square", "blue", "small", "bottom left"),
    ]
    captions, true_index = probe_captions(objects, "colour", "red")
    assert true_index == COLOURS.index("red")
    green = captions[COLOURS.index("green")]
    assert "red" not in green and green.count("green") == 2 and green.count("blue") == 1
    assert green == (
        "a large green circle in the top left, a small green ring in the top right"
        " and a small blue square in the bottom left"
    )


def test_probe_rejects_values_not_in_the_scene():
    objects = [SceneObject("circle", "red", "large", "top left")]
    with pytest.raises(ValueError, match="no object"):
        probe_captions(objects, "colour", "blue")
    with pytest.raises(ValueError, match="unknown attribute"):
        probe_captions(objects, "texture", "red")
    with pytest.raises(ValueError, match="not a colour"):
        probe_captions(objects, "colour", "mauve")


def test_caption_naming_puts_any_word_where_the_value_was():
    objects = [SceneObject("circle", "purple", "large", "top left"), SceneObject("ring", "red", "small", "top right")]
    captions, true_index = probe_captions(objects, "colour", "purple")
    assert caption_naming(objects, "colour", "purple", "purple") == captions[true_index]
    assert caption_naming(objects, "colour", "purple", "teal") == captions[true_index].replace("purple", "teal")
    with pytest.raises(ValueError, match="no object"):
        caption_naming(objects, "colour", "blue", "teal")


def test_grammar_captions_contain_every_word_a_caption_can():
    words = {w.strip(",.:") for caption in grammar_captions() for w in caption.split()}
    for vocabulary in VOCABULARIES.values():
        assert {w for value in vocabulary for w in value.split()} <= words
    objects = (SceneObject("cross", "cyan", "small", "bottom right"), SceneObject("ring", "white", "large", "top left"))
    for template in range(3):
        assert {w.strip(",.:") for w in scene_caption(objects, template, (1, 0)).split()} <= words
