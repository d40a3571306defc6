"""Small emoji source files for tests: a TrueType font made with fontTools (one distinct shape
per code point), an emoji-test.txt and a CLDR annotation file. No Debian package needed."""

from __future__ import annotations

from pathlib import Path

from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen

# code point -> polygons (font units, 1000 per em): each glyph a distinct shape
SHAPES = {
    0x1F600: [[(100, 100), (900, 100), (900, 900), (100, 900)]],  # square
    0x1F603: [[(100, 100), (900, 100), (500, 900)]],  # triangle
    0x1F431: [[(500, 50), (950, 500), (500, 950), (50, 500)]],  # diamond
    0x1F436: [[(100, 400), (900, 400), (900, 600), (100, 600)]],  # bar
    0x1F355: [[(400, 100), (600, 100), (600, 900), (400, 900)]],  # pillar
    0x1F354: [[(100, 100), (900, 100), (900, 300), (300, 300), (300, 900), (100, 900)]],  # L
    0x26BD: [[(100, 100), (400, 100), (400, 400), (100, 400)], [(600, 600), (900, 600), (900, 900), (600, 900)]],
}
NOTDEF = [[(50, 50), (950, 50), (950, 950), (50, 950)], [(150, 150), (150, 850), (850, 850), (850, 150)]]

EMOJI_TEST = """\
# emoji-test.txt (a small test copy)

# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
1F603                                                  ; fully-qualified     # 😃 E0.6 grinning face with big eyes
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face

# subgroup: hand-fingers-open
1F44B 1F3FB                                            ; fully-qualified     # 👋🏻 E1.0 waving hand: light skin tone

# group: Component

# subgroup: skin-tone
1F3FB                                                  ; component           # 🏻 E1.0 light skin tone

# group: Animals & Nature

# subgroup: animal-mammal
1F431                                                  ; fully-qualified     # 🐱 E0.6 cat face
1F436                                                  ; fully-qualified     # 🐶 E0.6 dog face
1FACE                                                  ; fully-qualified     # 🫎 E15.1 moose

# group: Food & Drink

# subgroup: food-prepared
1F355                                                  ; fully-qualified     # 🍕 E0.6 pizza
1F354                                                  ; fully-qualified     # 🍔 E0.6 hamburger

# group: Activities

# subgroup: sport
26BD                                                   ; fully-qualified     # ⚽ E0.6 soccer ball
"""

ANNOTATIONS = """\
<?xml version="1.0" encoding="UTF-8" ?>
<ldml>
  <identity><language type="en"/></identity>
  <annotations>
    <annotation cp="😀">face | grin | grinning face</annotation>
    <annotation cp="😀" type="tts">grinning face</annotation>
    <annotation cp="🐱">cat | face | pet</annotation>
    <annotation cp="🐱" type="tts">cat face</annotation>
    <annotation cp="🍕">cheese | pizza | slice</annotation>
    <annotation cp="⚽">ball | football | soccer</annotation>
  </annotations>
</ldml>
"""

KEPT = ["emoji-1f600", "emoji-1f603", "emoji-263a-fe0f", "emoji-1f431", "emoji-1f436", "emoji-1f355", "emoji-1f354",
        "emoji-26bd"]  # fully qualified, no skin tone, not newer than 15.0


def write_font(path: Path, shapes: dict[int, list] = SHAPES) -> Path:
    names = [".notdef"] + [f"g{cp:x}" for cp in shapes]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(names)
    builder.setupCharacterMap({cp: f"g{cp:x}" for cp in shapes})
    glyphs = {}
    for name, polygons in zip(names, [NOTDEF, *shapes.values()], strict=True):
        pen = TTGlyphPen(None)
        for polygon in polygons:
            pen.moveTo(polygon[0])
            for point in polygon[1:]:
                pen.lineTo(point)
            pen.closePath()
        glyphs[name] = pen.glyph()
    builder.setupGlyf(glyphs)
    builder.setupHorizontalMetrics({name: (1000, 0) for name in names})
    builder.setupHorizontalHeader(ascent=1000, descent=0)
    builder.setupNameTable({"familyName": "LetheTest", "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=1000, usWinAscent=1000, usWinDescent=0)
    builder.setupPost()
    builder.save(str(path))
    return path


def write_emoji_files(root: Path) -> dict[str, Path]:
    """The three files in ``root``: ``font`` (U+263A added), ``emoji_test`` and ``xml``."""
    (root / "emoji-test.txt").write_text(EMOJI_TEST, encoding="utf-8")
    (root / "en.xml").write_text(ANNOTATIONS, encoding="utf-8")
    font = write_font(root / "test.ttf", {**SHAPES, 0x263A: [[(200, 200), (800, 200), (800, 800)]]})
    return {"font": font, "emoji_test": root / "emoji-test.txt", "xml": root / "en.xml"}
