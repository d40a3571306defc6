"""Karpathy-JSON and JSONL-manifest loaders: good input loads, bad input is named precisely."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ease_engine.data import (
    NO_CLIENT,
    DataError,
    ScenesConfig,
    load_karpathy,
    load_manifest,
    make_scenes,
    write_manifest,
)


def write_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_truncated_png(path: Path) -> Path:
    write_png(path)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    return path


def entry(filename: str, split: str, *captions: str, **extra) -> dict:
    return {"filename": filename, "split": split, "sentences": [{"raw": c} for c in captions], **extra}


# --------------------------------------------------------------------------- Karpathy
@pytest.fixture
def flickr(tmp_path: Path):
    """A tiny Flickr30K-style split file with one image per split, and its image folder."""
    images = tmp_path / "flickr30k-images"
    entries = [
        entry("1000.jpg", "train", "a dog runs .", " a brown dog "),
        entry("1001.jpg", "restval", "a cat sleeps"),
        entry("1002.jpg", "val", "two people walk"),
        entry("1003.jpg", "test", "a red car"),
    ]
    for k, e in enumerate(entries):
        write_png(images / e["filename"], seed=k)  # PNG content behind a .jpg name is fine for PIL
    json_path = tmp_path / "dataset_flickr30k.json"
    write_karpathy(json_path, entries)
    return json_path, images, entries


def write_karpathy(json_path: Path, entries: list[dict], dataset: str | None = "flickr30k") -> None:
    document = {"images": entries} | ({"dataset": dataset} if dataset else {})
    json_path.write_text(json.dumps(document, indent=1))


def test_karpathy_train_includes_restval(flickr):
    json_path, images, _ = flickr
    train = load_karpathy(json_path, images, "train")
    assert train.pair_ids == ["flickr30k-1000", "flickr30k-1001"]
    assert train.captions == [["a dog runs .", "a brown dog"], ["a cat sleeps"]]
    assert train.image_paths == [images / "1000.jpg", images / "1001.jpg"]
    assert train.skipped == 0 and train.load_image(0).size == (16, 16)
    assert load_karpathy(json_path, images, "val").pair_ids == ["flickr30k-1002"]
    assert load_karpathy(json_path, images, "test").captions == [["a red car"]]


def test_karpathy_limit_and_name_from_file(tmp_path, flickr):
    json_path, images, entries = flickr
    assert len(load_karpathy(json_path, images, "train", limit=1)) == 1
    unnamed = tmp_path / "dataset_coco.json"
    write_karpathy(unnamed, entries, dataset=None)
    assert load_karpathy(unnamed, images, "val").pair_ids == ["coco-1002"]


def test_karpathy_coco_filepath_is_a_subfolder(tmp_path):
    write_png(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg")
    json_path = tmp_path / "dataset_coco.json"
    write_karpathy(
        json_path, [entry("COCO_val2014_000000000042.jpg", "test", "a man", filepath="val2014")], "coco"
    )
    test = load_karpathy(json_path, tmp_path / "coco", "test")
    assert test.pair_ids == ["coco-COCO_val2014_000000000042"]
    assert test.image_paths == [tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg"]


def test_karpathy_bad_json_names_file_line_and_column(tmp_path):
    json_path = tmp_path / "dataset_flickr30k.json"
    json_path.write_text('{"images": [\n  {"filename": "a.jpg",\n   "split": "train" "sentences": []}\n]}')
    with pytest.raises(DataError, match=r"dataset_flickr30k\.json: not valid JSON at line 3, column 21"):
        load_karpathy(json_path, tmp_path, "train", on_error="skip")  # not skippable


def test_karpathy_missing_file_or_folder_or_images_list(tmp_path, flickr):
    json_path, images, _ = flickr
    with pytest.raises(DataError, match="not found: .*nope.json"):
        load_karpathy(tmp_path / "nope.json", images, "train")
    with pytest.raises(DataError, match="image folder not found"):
        load_karpathy(json_path, tmp_path / "no-images", "train")
    other = tmp_path / "other.json"
    other.write_text('{"annotations": []}')
    with pytest.raises(DataError, match="other.json: expected a JSON object with an 'images' list"):
        load_karpathy(other, images, "train")
    with pytest.raises(ValueError, match="split"):
        load_karpathy(json_path, images, "restval")


def broken_entries(images: Path) -> dict[str, tuple[dict, str]]:
    """Name -> (bad train entry, text the error message must contain)."""
    write_png(images / "ok.jpg")
    (images / "garbage.jpg").write_bytes(b"not an image at all")
    write_truncated_png(images / "truncated.png")
    return {
        "missing key": ({"filename": "ok.jpg", "split": "train"}, "missing key 'sentences'"),
        "missing split": ({"filename": "ok.jpg", "sentences": [{"raw": "x"}]}, "missing key 'split'"),
        "bad split": (entry("ok.jpg", "training", "x"), "unknown split 'training'"),
        "not an object": ("ok.jpg", "expected an object"),
        "no raw": (
            {"filename": "ok.jpg", "split": "train", "sentences": [{"tokens": []}]},
            "needs a string 'raw'",
        ),
        "no captions": (entry("ok.jpg", "train"), r"\(ok.jpg\): no captions"),
        "empty caption": (entry("ok.jpg", "train", "fine", "  "), r"\(ok.jpg\): caption 1 is empty"),
        "missing image": (entry("missing.jpg", "train", "x"), "image file not found: .*missing.jpg"),
        "unreadable image": (entry("garbage.jpg", "train", "x"), "cannot read image .*garbage.jpg"),
        "truncated image": (entry("truncated.png", "train", "x"), "cannot read image .*truncated.png"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing key", "missing split", "bad split", "not an object", "no raw", "no captions", "empty caption",
     "missing image", "unreadable image", "truncated image"],
)  # fmt: skip
def test_karpathy_bad_entry_names_file_and_entry_index(tmp_path, flickr, case):
    json_path, images, entries = flickr
    bad, expected = broken_entries(images)[case]
    write_karpathy(json_path, [*entries, bad])
    pattern = rf"dataset_flickr30k\.json: images\[4\].*{expected}.*on_error='skip'"
    with pytest.raises(DataError, match=pattern):
        load_karpathy(json_path, images, "train")


def test_karpathy_duplicate_file_names_both_entries(flickr):
    json_path, images, entries = flickr
    write_karpathy(json_path, [*entries, entry("1000.jpg", "restval", "again")])
    with pytest.raises(
        DataError, match=r"images\[4\].*duplicate pair id 'flickr30k-1000' \(also images\[0\]\)"
    ):
        load_karpathy(json_path, images, "train")
    assert load_karpathy(json_path, images, "train", on_error="skip").skipped == 1


def test_karpathy_skip_mode_counts_and_warns(flickr, caplog):
    json_path, images, entries = flickr
    cases = broken_entries(images)
    write_karpathy(json_path, [*entries, *(bad for bad, _ in cases.values())])
    with caplog.at_level(logging.WARNING, logger="ease_engine.data"):
        train = load_karpathy(json_path, images, "train", on_error="skip")
    assert train.skipped == len(cases)
    assert train.pair_ids == ["flickr30k-1000", "flickr30k-1001"]
    assert f"skipped {len(cases)} bad item(s)" in caplog.text


def test_karpathy_can_skip_image_verification(flickr):
    json_path, images, entries = flickr
    (images / "garbage.jpg").write_bytes(b"not an image")
    write_karpathy(json_path, [*entries, entry("garbage.jpg", "test", "x")])
    assert len(load_karpathy(json_path, images, "test", verify_images=False)) == 2
    with pytest.raises(DataError, match="garbage.jpg"):
        load_karpathy(json_path, images, "test")


def test_karpathy_only_bad_items_is_an_error(flickr):
    json_path, images, _ = flickr
    write_karpathy(json_path, [entry("missing.jpg", "val", "x")])
    with pytest.raises(DataError, match=r"no usable images in split 'val' \(1 skipped\)"):
        load_karpathy(json_path, images, "val", on_error="skip")


def test_on_error_must_be_raise_or_skip(flickr):
    json_path, images, _ = flickr
    with pytest.raises(ValueError, match="on_error"):
        load_karpathy(json_path, images, "train", on_error="ignore")


# --------------------------------------------------------------------------- manifest
def good_line(pair_id: str, image: str = "img/a.png", client_id: int | None = 1) -> str:
    return json.dumps(
        {"image": image, "captions": ["a cat", "a small cat"], "client_id": client_id, "pair_id": pair_id}
    )


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    write_png(tmp_path / "img" / "a.png", seed=1)
    write_png(tmp_path / "img" / "b.png", seed=2)
    (tmp_path / "img" / "garbage.png").write_bytes(b"\x89PNG broken")
    write_truncated_png(tmp_path / "img" / "truncated.png")
    return tmp_path


def test_manifest_loads_relative_and_absolute_paths(manifest_dir):
    absolute = str(manifest_dir / "img" / "b.png")
    lines = [good_line("p1"), "", "   ", good_line("p2", image=absolute, client_id=None)]
    path = manifest_dir / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = load_manifest(path)
    assert data.name == "pairs" and data.pair_ids == ["p1", "p2"]
    assert data.captions == [["a cat", "a small cat"]] * 2
    assert data.image_paths == [manifest_dir / "img" / "a.png", manifest_dir / "img" / "b.png"]
    assert data.client_ids.tolist() == [1, NO_CLIENT] and data.clients == [1]
    assert data.skipped == 0


MANIFEST_ERRORS = {
    "not json": ('{"image": "img/a.png", "captions": [', "not valid JSON"),
    "not an object": ('["img/a.png"]', "expected a JSON object"),
    "missing field": ('{"image": "img/a.png", "captions": ["x"]}', "missing field.*pair_id"),
    "unknown field": (
        '{"image": "img/a.png", "caption": ["x"], "captions": ["x"], "pair_id": "q"}',
        "unknown field.*caption",
    ),
    "captions not a list": ('{"image": "img/a.png", "captions": "a cat", "pair_id": "q"}', "list of strings"),
    "caption not a string": ('{"image": "img/a.png", "captions": [3], "pair_id": "q"}', "list of strings"),
    "no captions": ('{"image": "img/a.png", "captions": [], "pair_id": "q"}', "no captions"),
    "empty caption": ('{"image": "img/a.png", "captions": ["x", ""], "pair_id": "q"}', "caption 1 is empty"),
    "empty pair id": ('{"image": "img/a.png", "captions": ["x"], "pair_id": ""}', "'pair_id' must be"),
    "image not a string": ('{"image": 7, "captions": ["x"], "pair_id": "q"}', "'image' must be"),
    "client id string": (
        '{"image": "img/a.png", "captions": ["x"], "pair_id": "q", "client_id": "3"}',
        "'client_id' must be",
    ),
    "client id bool": (
        '{"image": "img/a.png", "captions": ["x"], "pair_id": "q", "client_id": true}',
        "'client_id' must be",
    ),
    "client id negative": (
        '{"image": "img/a.png", "captions": ["x"], "pair_id": "q", "client_id": -1}',
        "'client_id' must be",
    ),
    "missing image": ('{"image": "img/none.png", "captions": ["x"], "pair_id": "q"}', "not found.*none.png"),
    "unreadable image": (
        '{"image": "img/garbage.png", "captions": ["x"], "pair_id": "q"}',
        "cannot read image",
    ),
    "truncated image": (
        '{"image": "img/truncated.png", "captions": ["x"], "pair_id": "q"}',
        "cannot read image",
    ),
    "duplicate pair id": (good_line("p1"), r"duplicate pair id 'p1' \(first on line 1\)"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_ERRORS))
def test_manifest_bad_line_names_file_and_line(manifest_dir, case):
    bad, expected = MANIFEST_ERRORS[case]
    path = manifest_dir / "pairs.jsonl"
    path.write_text("\n".join([good_line("p1"), "", bad, good_line("p2")]) + "\n")
    with pytest.raises(DataError, match=rf"pairs\.jsonl, line 3: .*{expected}"):
        load_manifest(path)


def test_manifest_skip_mode_counts_bad_lines_and_keeps_first_duplicate(manifest_dir, caplog):
    bad_lines = [bad for bad, _ in MANIFEST_ERRORS.values()]
    path = manifest_dir / "pairs.jsonl"
    path.write_text("\n".join([good_line("p1"), *bad_lines, good_line("p2", image="img/b.png")]) + "\n")
    with caplog.at_level(logging.WARNING, logger="ease_engine.data"):
        data = load_manifest(path, on_error="skip")
    assert data.skipped == len(MANIFEST_ERRORS)
    assert data.pair_ids == ["p1", "p2"]
    assert data.image_paths[0] == manifest_dir / "img" / "a.png"  # the first p1 was kept
    assert f"skipped {len(MANIFEST_ERRORS)} bad item(s)" in caplog.text


def test_manifest_missing_or_empty_file(tmp_path):
    with pytest.raises(DataError, match="manifest not found: .*none.jsonl"):
        load_manifest(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: manifest has no usable lines"):
        load_manifest(tmp_path / "empty.jsonl")


def test_manifest_round_trip_of_file_backed_data(manifest_dir):
    path = manifest_dir / "pairs.jsonl"
    path.write_text("\n".join([good_line("p1"), good_line("p2", image="img/b.png", client_id=None)]))
    original = load_manifest(path)
    copy_path = write_manifest(original, manifest_dir / "out" / "copy.jsonl")
    copy = load_manifest(copy_path)
    assert copy.pair_ids == original.pair_ids and copy.captions == original.captions
    assert copy.client_ids.tolist() == original.client_ids.tolist()
    assert [p.resolve() for p in copy.image_paths] == [p.resolve() for p in original.image_paths]
    assert [p.name for p in copy_path.parent.iterdir()] == ["copy.jsonl"]  # no temporary file left


def test_manifest_round_trip_of_pixel_data_saves_images(tmp_path):
    scenes, _ = make_scenes(ScenesConfig(n_train=5, n_test=0, image_size=16))
    scenes.client_ids = np.array([0, 1, 2, -1, 1])
    with pytest.raises(DataError, match="image_dir"):
        write_manifest(scenes, tmp_path / "scenes.jsonl")
    path = write_manifest(scenes, tmp_path / "scenes.jsonl", image_dir=tmp_path / "images")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["image"].startswith("images/") and first["client_id"] == 0
    loaded = load_manifest(path)
    assert loaded.pair_ids == scenes.pair_ids and loaded.captions == scenes.captions
    assert loaded.client_ids.tolist() == [0, 1, 2, NO_CLIENT, 1]
    for i in range(5):
        assert np.array_equal(np.asarray(loaded.load_image(i)), scenes.pixels[i])


def test_write_manifest_replaces_an_existing_file(manifest_dir):
    path = manifest_dir / "pairs.jsonl"
    path.write_text(good_line("p1"))
    data = load_manifest(path)
    path.write_text("stale content that must disappear\n")
    write_manifest(data, path)
    assert load_manifest(path).pair_ids == ["p1"]
    assert not list(manifest_dir.glob("*.tmp"))
