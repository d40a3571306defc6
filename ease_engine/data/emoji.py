"""``emoji``: real images with human-written names, from files that Debian packages install.

Every fully-qualified emoji of Unicode's ``emoji-test.txt`` becomes one pair:

- the image is the emoji's glyph in a colour emoji font (Noto Color Emoji, drawn by Google
  and published under the SIL Open Font License), rendered with Pillow on white and scaled
  to ``image_size``;
- the captions are the emoji's Unicode name ("grinning face", "flag: Germany") and, where
  the Unicode CLDR English annotations list keywords for it, the name followed by those
  keywords ("grinning face: face, grin"). Names and keywords are written by the Unicode
  Emoji Subcommittee and CLDR contributors, not generated;
- ``concepts`` carries the emoji's real category: ``{"category": {group}, "subgroup":
  {subgroup}}`` with Unicode's nine groups ("Smileys & Emotion", "Animals & Nature",
  "Flags", ...). A ``category`` partition
  (:class:`~ease_engine.data.partition.PartitionConfig`) makes each group one client.

A seeded share of every group is held out (``held_out_fraction``), so the held-out set has
non-member pairs from each client's own category. Skin-tone variants are left out by
default: they repeat a glyph with another hue and a caption that differs in one phrase.

The files (Debian 12 package names; ``scripts/install_real_images.sh`` installs them):
``fonts-noto-color-emoji`` (the font), ``unicode-data`` (``emoji-test.txt``) and
``unicode-cldr-core`` (the annotations). Nothing is downloaded at run time.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field

from ease_engine.data._checks import OnError, ProblemPolicy, logger
from ease_engine.data.dataset import CaptionDataset
from ease_engine.data.errors import DataError

INSTALL_HINT = (
    "install the emoji data with scripts/install_real_images.sh "
    "(as root: apt-get install fonts-noto-color-emoji unicode-data unicode-cldr-core)"
)
DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEFAULT_EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
DEFAULT_ANNOTATIONS = (
    Path("/usr/share/unicode/cldr/common/annotations/en.xml"),
    Path("/usr/share/unicode/cldr/common/annotationsDerived/en.xml"),
)
CATEGORY = "category"  # the concepts key of the Unicode group
SUBGROUP = "subgroup"
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
VARIATION_SELECTOR = "\ufe0f"
_LINE = re.compile(
    r"^(?P<cps>[0-9A-Fa-f]+(?: [0-9A-Fa-f]+)*)\s*;\s*(?P<status>[a-z-]+)\s*"
    r"#\s*\S+\s+E(?P<version>\d+\.\d+)\s+(?P<name>.+?)\s*$"
)
_SKIP_HINT = "is the font older than the emoji list? set on_error = 'skip' to leave such emoji out"


class EmojiConfig(BaseModel):
    """Which files to read and how to turn them into pairs; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    font: Path = DEFAULT_FONT
    font_size: int = Field(109, ge=1, description="Noto Color Emoji is a bitmap font with the one size 109")
    emoji_test: Path = DEFAULT_EMOJI_TEST
    annotations: list[Path] = Field(
        default_factory=lambda: list(DEFAULT_ANNOTATIONS), description="CLDR keyword files; [] for names only"
    )
    image_size: int = Field(48, ge=8, le=512)
    skin_tones: bool = False
    max_version: float | None = Field(
        15.0, description="leave out emoji newer than this Emoji version (the same set on newer distributions)"
    )
    groups: list[str] | None = Field(None, description="keep only these Unicode groups (default: all)")
    held_out_fraction: float = Field(0.1, ge=0, lt=1, description="share of every group held out as the test split")
    seed: int = 0


@dataclass(frozen=True)
class EmojiEntry:
    """One fully-qualified emoji of ``emoji-test.txt``."""

    text: str
    name: str
    group: str
    subgroup: str
    version: float

    @property
    def pair_id(self) -> str:
        return "emoji-" + "-".join(f"{ord(c):x}" for c in self.text)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}; {INSTALL_HINT}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}; reinstall it ({INSTALL_HINT})") from None


def parse_emoji_test(path: str | Path) -> list[EmojiEntry]:
    """Every fully-qualified emoji of an ``emoji-test.txt`` file with its group and subgroup.

    Raises :class:`DataError` naming the file and line for a data line that does not parse
    or comes before any ``# group:`` line, and for a file without any emoji.
    """
    path = Path(path)
    entries: list[EmojiEntry] = []
    group = subgroup = None
    for line_no, line in enumerate(_read_text(path, "emoji test file").splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("# group:"):
            group, subgroup = stripped.split(":", 1)[1].strip(), None
            continue
        if stripped.startswith("# subgroup:"):
            subgroup = stripped.split(":", 1)[1].strip()
            continue
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if match is None:
            raise DataError(
                f"{path}, line {line_no}: not an emoji-test line ('CODEPOINTS ; status # emoji Eversion name')"
            )
        if group is None or subgroup is None:
            raise DataError(f"{path}, line {line_no}: emoji before any '# group:' and '# subgroup:' line")
        if match["status"] != "fully-qualified":
            continue
        try:
            text = "".join(chr(int(cp, 16)) for cp in match["cps"].split())
        except ValueError:
            raise DataError(f"{path}, line {line_no}: code point out of range: {match['cps']}") from None
        entries.append(EmojiEntry(text, match["name"], group, subgroup, float(match["version"])))
    if not entries:
        raise DataError(f"{path}: no fully-qualified emoji; is this Unicode's emoji-test.txt? {INSTALL_HINT}")
    return entries


def parse_annotations(paths: list[Path]) -> dict[str, list[str]]:
    """CLDR keywords per emoji (variation selectors removed from the key), merged over ``paths``.

    A later file adds keywords of emoji the earlier ones lack (``annotationsDerived`` covers
    flags and sequences). Raises :class:`DataError` for a missing or malformed file.
    """
    keywords: dict[str, list[str]] = {}
    for path in paths:
        try:
            root = ET.fromstring(_read_text(Path(path), "CLDR annotation file"))
        except ET.ParseError as exc:
            raise DataError(f"{path}: not valid XML ({exc}); reinstall it ({INSTALL_HINT})") from None
        if root.find("annotations") is None:
            raise DataError(f"{path}: no <annotations> element; is this a CLDR annotation file?")
        for node in root.iter("annotation"):
            cp = node.get("cp")
            if not cp or node.get("type") == "tts" or not node.text:
                continue
            key = cp.replace(VARIATION_SELECTOR, "")
            words = [w.strip() for w in node.text.split("|") if w.strip()]
            if key not in keywords and words:
                keywords[key] = words
    return keywords


def captions_for(entry: EmojiEntry, keywords: dict[str, list[str]]) -> list[str]:
    """The name, and the name followed by the CLDR keywords that add a word to it.

    A keyword all of whose words are words of the name ("face" for "grinning face") adds
    nothing and is dropped; an emoji with no keyword left has its name as only caption.
    """
    name_words = set(re.findall(r"\w+", entry.name.lower()))
    extra = [
        w
        for w in keywords.get(entry.text.replace(VARIATION_SELECTOR, ""), [])
        if not set(re.findall(r"\w+", w.lower())) <= name_words
    ]
    return [entry.name, f"{entry.name}: {', '.join(extra)}"] if extra else [entry.name]


class GlyphRenderer:
    """Draws emoji with one font; :meth:`render` raises :class:`DataError` for a missing glyph."""

    def __init__(self, font_path: Path, font_size: int, image_size: int) -> None:
        if not Path(font_path).is_file():
            raise DataError(f"emoji font not found: {font_path}; {INSTALL_HINT}")
        try:
            self.font = ImageFont.truetype(str(font_path), font_size, layout_engine=ImageFont.Layout.RAQM)
        except OSError as exc:
            raise DataError(
                f"cannot load font {font_path} at size {font_size}: {exc} "
                "(Noto Color Emoji is a bitmap font whose only size is 109)"
            ) from None
        self.image_size = image_size
        self._missing = self._draw("\U0010fffd")  # a private-use code point: the font's .notdef glyph

    def _draw(self, text: str) -> Image.Image:
        left, top, right, bottom = self.font.getbbox(text)
        width, height = max(right - left, 1), max(bottom - top, 1)
        canvas = Image.new("RGBA", (width, height), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((-left, -top), text, font=self.font, embedded_color=True, fill=(0, 0, 0, 255))
        side = max(width, height)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(canvas, ((side - width) // 2, (side - height) // 2), canvas)
        return square

    def render(self, entry: EmojiEntry) -> np.ndarray:
        """(image_size, image_size, 3) uint8 of ``entry``'s glyph, centred on white."""
        advance = self.font.getlength(entry.text)
        single = self.font.getlength(entry.text[0]) or advance
        if advance > 1.5 * single:
            raise DataError(
                f"the font has no single glyph for {entry.name!r} ({entry.pair_id}): it draws the sequence glyph by "
                "glyph (an older font, or Pillow without libraqm)"
            )
        image = self._draw(entry.text)
        if image.getextrema() == ((255, 255),) * 3 or (
            image.size == self._missing.size and image.tobytes() == self._missing.tobytes()
        ):
            raise DataError(f"the font has no glyph for {entry.name!r} ({entry.pair_id})")
        image = image.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8)


def select_entries(entries: list[EmojiEntry], config: EmojiConfig) -> list[EmojiEntry]:
    """The entries ``config`` keeps (version, skin tones, groups); :class:`DataError` if none."""
    if config.groups is not None:
        known = {e.group for e in entries}
        unknown = sorted(set(config.groups) - known)
        if unknown:
            raise DataError(f"unknown emoji group(s) {unknown}; the groups are {sorted(known)}")
    kept = [
        e
        for e in entries
        if (config.max_version is None or e.version <= config.max_version)
        and (config.skin_tones or not SKIN_TONES.intersection(map(ord, e.text)))
        and (config.groups is None or e.group in config.groups)
    ]
    if not kept:
        raise DataError(f"{config.emoji_test}: no emoji left after the version, skin-tone and group filters")
    return kept


def held_out_mask(groups: list[str], fraction: float, seed: int) -> np.ndarray:
    """Seeded per-group hold-out: round(fraction * n) of every group (at least one of a group of two or more)."""
    mask = np.zeros(len(groups), dtype=bool)
    if fraction == 0:
        return mask
    rng = np.random.default_rng(seed)
    labels = np.asarray(groups, dtype=object)
    for group in dict.fromkeys(groups):  # first-appearance order: deterministic
        members = np.flatnonzero(labels == group)
        n = len(members)
        take = min(max(round(fraction * n), 1 if n >= 2 else 0), n - 1)
        mask[rng.permutation(members)[:take]] = True
    return mask


def load_emoji(config: EmojiConfig | None = None, on_error: OnError = "raise") -> tuple[CaptionDataset, CaptionDataset]:
    """(train, held-out) emoji pairs, images as pixels; both carry ``concepts["category"]``.

    Missing or unreadable files raise :class:`DataError` naming the file and the install
    command. An emoji the font cannot draw raises too (``on_error="skip"`` leaves it out and
    counts it in ``skipped``).
    """
    config = config or EmojiConfig()
    entries = select_entries(parse_emoji_test(config.emoji_test), config)
    keywords = parse_annotations(config.annotations)
    renderer = GlyphRenderer(config.font, config.font_size, config.image_size)
    policy = ProblemPolicy(on_error, _SKIP_HINT)
    kept: list[EmojiEntry] = []
    pixels: list[np.ndarray] = []
    for entry in entries:
        try:
            pixels.append(renderer.render(entry))
        except DataError as problem:
            policy.report(problem)
            continue
        kept.append(entry)
    policy.warn_if_skipped(config.font, len(kept))
    if not kept:
        raise DataError(f"the font {config.font} draws none of the emoji ({policy.skipped} skipped)")
    held_out = held_out_mask([e.group for e in kept], config.held_out_fraction, config.seed)
    dataset = CaptionDataset(
        name="emoji",
        pair_ids=[e.pair_id for e in kept],
        captions=[captions_for(e, keywords) for e in kept],
        pixels=np.stack(pixels),
        concepts=[{CATEGORY: frozenset({e.group}), SUBGROUP: frozenset({e.subgroup})} for e in kept],
        skipped=policy.skipped,
    )
    logger.info("emoji: %d pairs (%d held out, %d skipped)", len(kept), int(held_out.sum()), policy.skipped)
    train = dataset.subset(np.flatnonzero(~held_out), name="emoji-train")
    test = dataset.subset(np.flatnonzero(held_out), name="emoji-test")
    train.skipped = test.skipped = policy.skipped
    return train, test
