"""JSONL manifests: the simplest way to bring your own image-caption data.

One JSON object per line (blank lines are allowed)::

    {"image": "img/0001.png", "captions": ["a dog on a beach", "..."], "client_id": 3, "pair_id": "p-0001"}

``image`` is relative to the manifest's folder, or absolute. ``client_id`` is an int >= 0,
or null / absent for held-out data. ``pair_id`` must be unique in the file. Every problem is
reported with the file name and the line number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ease_engine.atomic import write_bytes
from ease_engine.data._checks import OnError, ProblemPolicy, check_image, logger, require_nonempty
from ease_engine.data.dataset import NO_CLIENT, CaptionDataset
from ease_engine.data.errors import DataError

REQUIRED_FIELDS = ("image", "captions", "pair_id")
OPTIONAL_FIELDS = ("client_id",)
_SKIP_HINT = "fix or remove the line, or load with on_error='skip' to leave bad lines out"


@dataclass(frozen=True)
class _Row:
    pair_id: str
    image_path: Path
    captions: list[str]
    client_id: int


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"manifest not found: {path}; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read manifest {path}: {exc}") from None


def _parse_object(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON (column {exc.colno}): {exc.msg}") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED_FIELDS if key not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        allowed = ", ".join(REQUIRED_FIELDS + OPTIONAL_FIELDS)
        raise DataError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {allowed})")
    return record


def _non_empty_string(record: dict, key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _captions(record: dict, where: str) -> list[str]:
    captions = record["captions"]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise DataError(f"{where}: 'captions' must be a list of strings, got {captions!r}")
    return require_nonempty(captions, where)


def _client_id(record: dict, where: str) -> int:
    value = record.get("client_id")
    if value is None:
        return NO_CLIENT
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{where}: 'client_id' must be an integer >= 0 or null, got {value!r}")
    return value


def _parse_row(line: str, where: str, folder: Path, verify: bool) -> _Row:
    record = _parse_object(line, where)
    pair_id = _non_empty_string(record, "pair_id", where)
    image_path = folder / _non_empty_string(record, "image", where)  # absolute paths stay absolute
    row = _Row(pair_id, image_path, _captions(record, where), _client_id(record, where))
    try:
        check_image(image_path, verify)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    return row


def load_manifest(path: str | Path, on_error: OnError = "raise", verify_images: bool = True) -> CaptionDataset:
    """Load a JSONL manifest into a :class:`CaptionDataset` with image paths.

    ``on_error="raise"`` raises :class:`DataError` at the first bad line, naming the file and
    line; ``"skip"`` leaves bad lines out (for a duplicate pair id: keeps the first line),
    counts them in ``dataset.skipped`` and logs a warning. The data set is named after the
    file stem.
    """
    path = Path(path)
    policy = ProblemPolicy(on_error, _SKIP_HINT)
    rows: list[_Row] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {line_no}"
        try:
            row = _parse_row(line, where, path.parent, verify_images)
            if row.pair_id in first_line:
                first = first_line[row.pair_id]
                raise DataError(f"{where}: duplicate pair id {row.pair_id!r} (first on line {first})")
        except DataError as problem:
            policy.report(problem)
            continue
        first_line[row.pair_id] = line_no
        rows.append(row)
    policy.warn_if_skipped(path, len(rows))
    if not rows:
        raise DataError(f"{path}: manifest has no usable lines ({policy.skipped} skipped)")
    logger.info("loaded %d pairs from manifest %s", len(rows), path)
    return CaptionDataset(
        name=path.stem,
        pair_ids=[row.pair_id for row in rows],
        captions=[row.captions for row in rows],
        image_paths=[row.image_path for row in rows],
        client_ids=np.array([row.client_id for row in rows], dtype=np.int64),
        skipped=policy.skipped,
    )


def _relative_or_absolute(image: Path, folder: Path) -> str:
    image = image.resolve()
    try:
        return image.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(image)


def _save_pixels(dataset: CaptionDataset, image_dir: Path) -> list[Path]:
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pair_id in enumerate(dataset.pair_ids):
        image_path = image_dir / f"{i:06d}-{re.sub(r'[^A-Za-z0-9._-]', '_', pair_id)}.png"
        Image.fromarray(dataset.pixels[i]).save(image_path)
        paths.append(image_path)
    return paths


def write_manifest(dataset: CaptionDataset, path: str | Path, image_dir: str | Path | None = None) -> Path:
    """Write ``dataset`` as a JSONL manifest that :func:`load_manifest` reads back.

    Image paths are written relative to the manifest's folder where possible. A data set
    held as pixels needs ``image_dir``: its images are saved there as PNG files named by
    pair id. The manifest is written atomically (temporary file, then ``os.replace``).
    """
    path = Path(path)
    if dataset.image_paths is not None:
        image_paths = list(dataset.image_paths)
    elif image_dir is not None:
        image_paths = _save_pixels(dataset, Path(image_dir))
    else:
        raise DataError(f"data set {dataset.name!r} holds pixels; pass image_dir to save its images")
    lines = []
    for i, pair_id in enumerate(dataset.pair_ids):
        client = int(dataset.client_ids[i])
        record = {
            "image": _relative_or_absolute(Path(image_paths[i]), path.parent),
            "captions": list(dataset.captions[i]),
            "client_id": None if client == NO_CLIENT else client,
            "pair_id": pair_id,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))
    return path
