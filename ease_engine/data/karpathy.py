"""Loader for Flickr30K / COCO captions in the Karpathy split format.

The JSON file (``dataset_flickr30k.json``, ``dataset_coco.json``) looks like::

    {"dataset": "flickr30k",
     "images": [{"filename": "1000092795.jpg", "split": "train",
                 "sentences": [{"raw": "Two young guys ..."}, ...], "imgid": 0, ...}, ...]}

COCO entries also carry ``"filepath"`` (``train2014`` / ``val2014``), the sub-folder of the
image under the image root. Split ``"train"`` includes ``"restval"``. Pair ids are the data
set name and the file stem, e.g. ``flickr30k-1000092795``.

Every image file is checked at load time (existence, and with ``verify_images`` a PIL
``verify()``), so a bad file fails the load, not a training run hours later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ease_engine.data._checks import OnError, ProblemPolicy, check_image, logger, require_nonempty
from ease_engine.data.dataset import CaptionDataset
from ease_engine.data.errors import DataError

KARPATHY_SPLITS = ("train", "val", "test", "restval")
_SKIP_HINT = "fix or remove the entry, or load with on_error='skip' to leave bad items out"


@dataclass(frozen=True)
class _Item:
    pair_id: str
    image_path: Path
    captions: list[str]


def _read_json(json_path: Path) -> object:
    try:
        text = json_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"Karpathy split file not found: {json_path}; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read Karpathy split file {json_path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{json_path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; "
            "the file is damaged, download or extract it again"
        ) from None


def _image_entries(document: object, json_path: Path) -> list[object]:
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DataError(
            f"{json_path}: expected a JSON object with an 'images' list (Karpathy split format); "
            "is this the right file?"
        )
    return document["images"]


def _dataset_prefix(document: dict, json_path: Path) -> str:
    """``"flickr30k"`` from the file's ``dataset`` key, else from ``dataset_flickr30k.json``."""
    name = document.get("dataset")
    if isinstance(name, str) and name.strip():
        return name.strip()
    return json_path.stem.removeprefix("dataset_")


def _field(entry: dict, key: str, kind: type, where: str) -> object:
    if key not in entry:
        raise DataError(f"{where}: missing key {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or (kind is str and not value):
        raise DataError(f"{where}: {key!r} must be a non-empty {kind.__name__}, got {value!r}")
    return value


def _entry_split(entry: object, where: str) -> str:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    split = _field(entry, "split", str, where)
    if split not in KARPATHY_SPLITS:
        raise DataError(f"{where}: unknown split {split!r} (expected one of {', '.join(KARPATHY_SPLITS)})")
    return split


def _parse_entry(entry: dict, where: str, prefix: str, image_root: Path, verify: bool) -> _Item:
    filename = _field(entry, "filename", str, where)
    where = f"{where} ({filename})"
    subfolder = entry.get("filepath", "")
    if not isinstance(subfolder, str):
        raise DataError(f"{where}: 'filepath' must be a string, got {subfolder!r}")
    sentences = _field(entry, "sentences", list, where)
    raw = []
    for k, sentence in enumerate(sentences):
        if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
            raise DataError(f"{where}: sentences[{k}] needs a string 'raw'")
        raw.append(sentence["raw"])
    captions = require_nonempty(raw, where)
    image_path = image_root / subfolder / filename
    try:
        check_image(image_path, verify)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    return _Item(f"{prefix}-{Path(filename).stem}", image_path, captions)


def load_karpathy(
    json_path: str | Path,
    image_root: str | Path,
    split: str,
    on_error: OnError = "raise",
    limit: int | None = None,
    verify_images: bool = True,
) -> CaptionDataset:
    """Load one split ("train" = train + restval, "val", "test") of a Karpathy split file.

    ``on_error="raise"`` raises :class:`DataError` at the first bad entry, naming the file,
    the entry index and the problem; ``"skip"`` leaves bad entries out, counts them in
    ``dataset.skipped`` and logs a warning. Only entries of the requested split are
    checked. ``limit`` stops after that many good items. A file that is not JSON, or has no
    ``images`` list, always raises.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    policy = ProblemPolicy(on_error, _SKIP_HINT)
    document = _read_json(json_path)
    entries = _image_entries(document, json_path)
    if not image_root.is_dir():
        raise DataError(f"image folder not found: {image_root} (images of {json_path}); check image_root")
    prefix = _dataset_prefix(document, json_path)
    wanted = {"train", "restval"} if split == "train" else {split}
    items: list[_Item] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if limit is not None and len(items) >= limit:
            break
        where = f"{json_path}: images[{index}]"
        try:
            if _entry_split(entry, where) not in wanted:
                continue
            item = _parse_entry(entry, where, prefix, image_root, verify_images)
            if item.pair_id in first_index:
                raise DataError(
                    f"{where}: duplicate pair id {item.pair_id!r} (also images[{first_index[item.pair_id]}])"
                )
        except DataError as problem:
            policy.report(problem)
            continue
        first_index[item.pair_id] = index
        items.append(item)
    policy.warn_if_skipped(json_path, len(items))
    if not items:
        raise DataError(f"{json_path}: no usable images in split {split!r} ({policy.skipped} skipped)")
    logger.info("loaded %d %s pairs from %s", len(items), split, json_path)
    return CaptionDataset(
        name=f"{prefix}-{split}",
        pair_ids=[item.pair_id for item in items],
        captions=[item.captions for item in items],
        image_paths=[item.image_path for item in items],
        skipped=policy.skipped,
    )
