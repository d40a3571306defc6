"""The ``emoji`` loader on small files the tests make: a tiny TrueType font (fontTools), an
emoji-test.txt and a CLDR annotation file. Nothing here needs the Debian packages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ease_engine.data import DataError, EmojiConfig, PartitionConfig, apply_partition, load_emoji
from ease_engine.data.emoji import captions_for, parse_annotations, parse_emoji_test
from ease_engine.evaluation.splits import select_split
from ease_engine.federation.config import FederationConfig, load_config, load_federation_data
from tests.emoji_helpers import EMOJI_TEST, KEPT, write_emoji_files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_emoji_files(tmp_path_factory.mktemp("emoji"))


def config(files: dict[str, Path], **overrides) -> EmojiConfig:
    values = {
        "font": files["font"],
        "font_size": 40,
        "emoji_test": files["emoji_test"],
        "annotations": [files["xml"]],
        "image_size": 16,
        "held_out_fraction": 0.25,
    }
    return EmojiConfig(**{**values, **overrides})


def test_loads_every_fully_qualified_emoji_with_names_keywords_categories_and_pixels(files):
    train, test = load_emoji(config(files, held_out_fraction=0.0))
    assert train.pair_ids == KEPT and len(test) == 0 and train.skipped == 0
    assert train.pixels.shape == (8, 16, 16, 3) and train.pixels.dtype == np.uint8
    captions = dict(zip(train.pair_ids, train.captions, strict=True))
    assert captions["emoji-1f600"] == ["grinning face", "grinning face: grin"]  # "face" adds no word
    assert captions["emoji-1f431"] == ["cat face", "cat face: pet"]
    assert captions["emoji-26bd"] == ["soccer ball", "soccer ball: football"]
    assert captions["emoji-1f436"] == ["dog face"]  # no annotation: the name alone
    assert captions["emoji-263a-fe0f"] == ["smiling face"]
    category = {p: next(iter(c["category"])) for p, c in zip(train.pair_ids, train.concepts, strict=True)}
    assert category["emoji-1f600"] == "Smileys & Emotion" and category["emoji-1f355"] == "Food & Drink"
    assert train.concepts[0]["subgroup"] == frozenset({"face-smiling"})


def test_each_glyph_is_drawn_dark_on_white_and_distinct(files):
    train, _ = load_emoji(config(files, held_out_fraction=0.0))
    pixels = train.pixels.astype(int)
    assert (pixels.reshape(8, -1).max(axis=1) == 255).all()  # white around the glyph
    assert (pixels.reshape(8, -1).min(axis=1) < 64).all()  # every image has ink
    flat = pixels.reshape(8, -1)
    distances = np.abs(flat[:, None] - flat[None]).sum(axis=2)
    assert (distances[~np.eye(8, dtype=bool)] > 0).all()  # no two emoji share an image


def test_hold_out_takes_a_share_of_every_group_and_is_deterministic(files):
    train, test = load_emoji(config(files))
    assert sorted(train.pair_ids + test.pair_ids) == sorted(KEPT)
    assert not set(train.pair_ids) & set(test.pair_ids)
    held_groups = sorted(next(iter(c["category"])) for c in test.concepts)
    # round(0.25 * n), at least one of a group of two or more, never a whole group
    assert held_groups == ["Animals & Nature", "Food & Drink", "Smileys & Emotion"]
    again_train, again_test = load_emoji(config(files))
    assert again_test.pair_ids == test.pair_ids and np.array_equal(again_train.pixels, train.pixels)
    other_seeds = {tuple(load_emoji(config(files, seed=s))[1].pair_ids) for s in range(6)}
    assert len(other_seeds) > 1


def test_filters_skin_tones_versions_and_groups(files):
    # the defaults left out the E15.1 moose and the skin-tone variant (the first test loaded without errors)
    animals = config(files, held_out_fraction=0.0, max_version=None, groups=["Animals & Nature"])
    train, _ = load_emoji(animals, on_error="skip")
    assert train.pair_ids == ["emoji-1f431", "emoji-1f436"] and train.skipped == 1  # the moose: not in the font
    with pytest.raises(DataError, match="'waving hand: light skin tone'"):
        load_emoji(config(files, skin_tones=True))
    with pytest.raises(DataError, match="unknown emoji group.*Dinosaurs"):
        load_emoji(config(files, groups=["Dinosaurs"]))


def test_a_glyph_the_font_lacks_raises_or_is_skipped_and_counted(files):
    # E15.1 moose (U+1FACE) is not in the test font
    with pytest.raises(DataError, match="no glyph for 'moose'"):
        load_emoji(config(files, max_version=None, held_out_fraction=0.0))
    train, _ = load_emoji(config(files, max_version=None, held_out_fraction=0.0), on_error="skip")
    assert train.skipped == 1 and "emoji-1face" not in train.pair_ids and len(train) == 8


def test_a_sequence_drawn_glyph_by_glyph_is_refused(files, tmp_path):
    text = EMOJI_TEST.replace("1FACE  ", "1F431 200D 1F436", 1).replace("moose", "cat dog")
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match="no single glyph for 'cat dog'"):
        load_emoji(config(files, emoji_test=tmp_path / "t.txt", max_version=None))


@pytest.mark.parametrize("key", ["font", "emoji_test", "annotations"])
def test_missing_files_name_the_install_command(files, tmp_path, key):
    missing = tmp_path / "absent"
    with pytest.raises(DataError, match="apt-get install fonts-noto-color-emoji unicode-data unicode-cldr-core"):
        load_emoji(config(files, **{key: [missing] if key == "annotations" else missing}))


def test_malformed_emoji_test_lines_are_named_by_line(tmp_path):
    bad = tmp_path / "emoji-test.txt"
    bad.write_text("# group: A\n# subgroup: b\n1F600 ; fully-qualified # 😀 E1.0 grinning face\nnot a line\n")
    with pytest.raises(DataError, match=r"emoji-test.txt, line 4: not an emoji-test line"):
        parse_emoji_test(bad)
    bad.write_text("1F600 ; fully-qualified # 😀 E1.0 grinning face\n")
    with pytest.raises(DataError, match="line 1: emoji before any '# group:'"):
        parse_emoji_test(bad)
    bad.write_text("# just a comment\n")
    with pytest.raises(DataError, match="no fully-qualified emoji"):
        parse_emoji_test(bad)


def test_bad_annotation_files_are_refused(tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<ldml><annotations><annotation cp='x'>a</annotations>")
    with pytest.raises(DataError, match="not valid XML"):
        parse_annotations([broken])
    other = tmp_path / "other.xml"
    other.write_text("<ldml><identity/></ldml>")
    with pytest.raises(DataError, match="no <annotations> element"):
        parse_annotations([other])


def test_annotations_ignore_variation_selectors_and_merge_files(files, tmp_path):
    derived = tmp_path / "derived.xml"
    derived.write_text(
        '<ldml><annotations><annotation cp="☺">smile | outlined</annotation>'
        '<annotation cp="😀">ignored | later</annotation></annotations></ldml>',
        encoding="utf-8",
    )
    keywords = parse_annotations([files["xml"], derived])
    assert keywords["😀"] == ["face", "grin", "grinning face"]  # the first file wins
    entry = next(e for e in parse_emoji_test(files["emoji_test"]) if e.name == "smiling face")
    assert captions_for(entry, keywords) == ["smiling face", "smiling face: smile, outlined"]


def test_a_bitmap_size_the_font_lacks_is_a_data_error(files, tmp_path):
    not_a_font = tmp_path / "font.ttf"
    not_a_font.write_bytes(b"not a font at all")
    with pytest.raises(DataError, match="cannot load font"):
        load_emoji(config(files, font=not_a_font))


def test_emoji_config_rejects_unknown_keys(files):
    with pytest.raises(ValidationError, match="extra"):
        EmojiConfig(fonts="x")


def test_category_partition_makes_each_group_a_client(files):
    train, test = load_emoji(config(files, held_out_fraction=0.0))
    categories = [["Animals & Nature"], ["Smileys & Emotion", "Activities"], ["Food & Drink"]]
    parted = apply_partition(train, PartitionConfig(kind="category", n_clients=3, categories=categories))
    by_client = {k: {next(iter(parted.concepts[i]["category"])) for i in parted.client_indices(k)} for k in range(3)}
    assert by_client == {0: {"Animals & Nature"}, 1: {"Smileys & Emotion", "Activities"}, 2: {"Food & Drink"}}


def test_federation_config_loads_emoji_and_the_shipped_scenario_validates(files):
    raw = {
        "data": {"source": "emoji", "emoji": config(files).model_dump(mode="json")},
        "partition": {"kind": "category", "n_clients": 4},
    }
    data = load_federation_data(FederationConfig.model_validate(raw))
    test = select_split(data, "test")
    assert data.train.clients == [0, 1, 2, 3] and len(test) == 3 and (test.client_ids == -1).all()
    with pytest.raises(ValidationError, match="extra"):
        FederationConfig.model_validate({"data": {"source": "emoji", "emoji": {"colour": "red"}}})
    shipped = load_config(Path(__file__).resolve().parents[2] / "ease_engine" / "configs" / "real-images.toml")
    assert shipped.data.source == "emoji" and shipped.partition.kind == "category"
    assert shipped.partition.categories[0] == ["Animals & Nature"]
