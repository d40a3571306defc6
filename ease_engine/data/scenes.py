"""``scenes``: the built-in synthetic data set, deterministic from a seed, no download needed.

Each image shows 1 to 4 (by default 1 to 3) objects on a plain, slightly noisy grey
background. An object has a shape, a colour, a size and a position (one of the four
quadrants; the objects of one image sit in distinct quadrants, jittered a little inside
them). Every image gets six captions: three templates times two object orders. Every
caption names the size, colour, shape and position of *every* object, so a caption
determines its scene exactly and attribute binding and word order matter: "a large red
circle in the top left and a small blue square in the bottom right" is a different scene
from the one with the colours swapped.

No two images of one build (train and test together) show the same scene. Scenes are drawn
as distinct integers of a mixed-radix code (one code per scene), which is the same as
drawing scenes uniformly and resampling on collision, but never loops.

Public API: :class:`ScenesConfig`, :func:`make_scenes`, :func:`scene_caption`,
:func:`probe_captions`, :func:`canonical_key`, :class:`SceneObject` and the vocabularies
``SHAPES``, ``COLOURS``, ``SIZES``, ``POSITIONS`` (and ``ATTRIBUTES``/``VOCABULARIES``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ease_engine.data.dataset import CaptionDataset

# --------------------------------------------------------------------------- vocabularies
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "position")
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "size": SIZES,
    "position": POSITIONS,
}

#: RGB value of each colour name; pairwise distances are all above 85.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 225, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
}

N_TEMPLATES = 3
N_ORDERS = 2
CAPTIONS_PER_IMAGE = N_TEMPLATES * N_ORDERS
MAX_OBJECTS = len(POSITIONS)

# rendering constants (fractions of the quadrant side)
_RADIUS = {"small": 0.21, "large": 0.38}
_RADIUS_JITTER = 0.08  # relative
_BACKGROUND_GREY = (80, 160)  # uniform range of the background level
_NOISE_STD = 5.0
_COLOUR_JITTER = 12  # per channel, uniform in [-j, j]

# independent random streams, so that e.g. a rendering change leaves the scenes unchanged
_STREAM_SCENES, _STREAM_ORDER, _STREAM_RENDER, _STREAM_CAPTIONS = range(4)


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene."""

    shape: str
    colour: str
    size: str
    position: str

    def phrase(self) -> str:
        """``"a large red circle"`` (size first, so the article is always "a")."""
        return f"a {self.size} {self.colour} {self.shape}"


# --------------------------------------------------------------------------- config
class ScenesConfig(BaseModel):
    """Settings of the ``scenes`` data set; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(6000, ge=1, description="number of training images")
    n_test: int = Field(500, ge=0, description="number of test images")
    image_size: int = Field(48, ge=16, le=1024, description="side of the square images, even")
    object_count_weights: dict[int, float] = Field(
        default_factory=lambda: {1: 0.05, 2: 0.45, 3: 0.5},
        description="relative share of images with 1, 2, 3 (or 4) objects",
    )
    seed: int = 0

    @field_validator("image_size")
    @classmethod
    def _even_size(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"image_size must be even (four equal quadrants), got {value}")
        return value

    @field_validator("object_count_weights")
    @classmethod
    def _valid_weights(cls, weights: dict[int, float]) -> dict[int, float]:
        for count, weight in weights.items():
            if not 1 <= count <= MAX_OBJECTS:
                raise ValueError(f"object counts must be 1 to {MAX_OBJECTS}, got {count}")
            if weight < 0 or not math.isfinite(weight):
                raise ValueError(f"weight of object count {count} must be >= 0, got {weight}")
        if sum(weights.values()) <= 0:
            raise ValueError("object_count_weights must have a positive weight")
        return weights

    @model_validator(mode="after")
    def _enough_distinct_scenes(self) -> ScenesConfig:
        for count, wanted in scene_counts(self).items():
            available = scene_capacity(count)
            if wanted > available:
                raise ValueError(
                    f"object_count_weights ask for {wanted} images with {count} object(s), but only "
                    f"{available} distinct such scenes exist; lower the weight of {count} "
                    "or the number of images"
                )
        return self


def scene_counts(config: ScenesConfig) -> dict[int, int]:
    """How many images of each object count a build makes (largest-remainder rounding)."""
    total = config.n_train + config.n_test
    counts = sorted(config.object_count_weights)
    weights = np.array([config.object_count_weights[c] for c in counts], dtype=np.float64)
    exact = weights / weights.sum() * total
    floors = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - floors), kind="stable")
    floors[remainder_order[: total - int(floors.sum())]] += 1
    return {c: int(n) for c, n in zip(counts, floors, strict=True) if n > 0}


# --------------------------------------------------------------------------- scene codes
_KINDS_PER_OBJECT = len(SHAPES) * len(COLOURS) * len(SIZES)


def _position_sets(count: int) -> list[tuple[int, ...]]:
    return list(itertools.combinations(range(len(POSITIONS)), count))


def scene_capacity(count: int) -> int:
    """Number of distinct scenes with ``count`` objects."""
    return len(_position_sets(count)) * _KINDS_PER_OBJECT**count


def _decode_scene(code: int, count: int) -> tuple[SceneObject, ...]:
    """The scene with mixed-radix ``code`` (0 <= code < scene_capacity(count)), canonical order."""
    kinds = []
    for _ in range(count):
        code, kind = divmod(code, _KINDS_PER_OBJECT)
        kinds.append(kind)
    positions = _position_sets(count)[code]
    objects = []
    for kind, position in zip(kinds, positions, strict=True):
        kind, shape = divmod(kind, len(SHAPES))
        size, colour = divmod(kind, len(COLOURS))
        objects.append(SceneObject(SHAPES[shape], COLOURS[colour], SIZES[size], POSITIONS[position]))
    return tuple(objects)


def canonical_key(objects: Sequence[SceneObject]) -> tuple[tuple[str, str, str, str], ...]:
    """The identity of a scene: sorted (position, size, colour, shape) of its objects."""
    return tuple(sorted((o.position, o.size, o.colour, o.shape) for o in objects))


def canonical_order(objects: Sequence[SceneObject]) -> tuple[SceneObject, ...]:
    """Objects sorted by position (top left, top right, bottom left, bottom right)."""
    return tuple(sorted(objects, key=lambda o: POSITIONS.index(o.position)))


def _sample_scenes(config: ScenesConfig) -> list[tuple[SceneObject, ...]]:
    """``n_train + n_test`` distinct scenes in random order."""
    scenes_rng = np.random.default_rng([config.seed, _STREAM_SCENES])
    scenes: list[tuple[SceneObject, ...]] = []
    for count, wanted in scene_counts(config).items():
        codes = scenes_rng.choice(scene_capacity(count), size=wanted, replace=False)
        scenes.extend(_decode_scene(int(code), count) for code in codes)
    order = np.random.default_rng([config.seed, _STREAM_ORDER]).permutation(len(scenes))
    return [scenes[i] for i in order]


# --------------------------------------------------------------------------- captions
def _join(items: Sequence[str], sep: str, last_sep: str) -> str:
    if len(items) == 1:
        return items[0]
    return sep.join(items[:-1]) + last_sep + items[-1]


def _template_inline(objects: Sequence[SceneObject]) -> str:
    # "a large red circle in the top left and a small blue square in the bottom right"
    return _join([f"{o.phrase()} in the {o.position}" for o in objects], ", ", " and ")


def _template_listing(objects: Sequence[SceneObject]) -> str:
    # "top left: a large red circle. bottom right: a small blue square."
    return " ".join(f"{o.position}: {o.phrase()}." for o in objects)


def _template_there_is(objects: Sequence[SceneObject]) -> str:
    # "there is a small blue square at the bottom right, and a large red circle at the top left"
    return "there is " + _join([f"{o.phrase()} at the {o.position}" for o in objects], ", ", ", and ")


_TEMPLATES = (_template_inline, _template_listing, _template_there_is)


def scene_caption(objects: Sequence[SceneObject], template: int, order: Sequence[int]) -> str:
    """Caption of a scene with template ``template`` (0-2), naming objects in ``order``.

    ``order`` is a permutation of ``range(len(objects))``.
    """
    if not 0 <= template < N_TEMPLATES:
        raise ValueError(f"template must be 0 to {N_TEMPLATES - 1}, got {template}")
    if sorted(order) != list(range(len(objects))) or not objects:
        raise ValueError(f"order {list(order)} is not a permutation of the {len(objects)} objects")
    return _TEMPLATES[template]([objects[i] for i in order])


def _two_orders(n_objects: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Two object orders, distinct whenever there is more than one object."""
    first = tuple(int(i) for i in rng.permutation(n_objects))
    if n_objects == 1:
        return [first, first]
    while True:
        second = tuple(int(i) for i in rng.permutation(n_objects))
        if second != first:
            return [first, second]


def scene_captions(objects: Sequence[SceneObject], rng: np.random.Generator) -> list[str]:
    """The six captions of a scene: each template with two random object orders."""
    orders = _two_orders(len(objects), rng)
    return [scene_caption(objects, t, order) for t in range(N_TEMPLATES) for order in orders]


def _with_value(obj: SceneObject, attribute: str, old: str, new: str) -> SceneObject:
    """``obj`` with ``attribute`` set to ``new`` if it currently is ``old``."""
    return replace(obj, **{attribute: new}) if getattr(obj, attribute) == old else obj


def probe_captions(objects: Sequence[SceneObject], attribute: str, value: str) -> tuple[list[str], int]:
    """Captions for the concept probe: one per possible value of ``attribute``.

    In caption j every object whose ``attribute`` equals ``value`` gets the j-th value of the
    vocabulary instead; everything else stays fixed (template 0, objects in canonical
    order of the true scene). Returns the captions and the index of the true one (the
    index of ``value`` in the vocabulary). For ``attribute="position"`` an alternative may
    place two objects in one quadrant; the caption is still well formed.
    """
    vocabulary = _vocabulary(attribute, value)
    captions = [caption_naming(objects, attribute, value, alternative) for alternative in vocabulary]
    return captions, vocabulary.index(value)


def caption_naming(objects: Sequence[SceneObject], attribute: str, value: str, word: str) -> str:
    """The scene's probe caption (template 0, canonical order) with every ``value`` of ``attribute`` named
    ``word`` instead: any word, e.g. one no caption contains (the concept probe's untrained-word null)."""
    _vocabulary(attribute, value)
    objects = canonical_order(objects)
    if not any(getattr(o, attribute) == value for o in objects):
        raise ValueError(f"no object of this scene has {attribute} {value!r}")
    return scene_caption([_with_value(o, attribute, value, word) for o in objects], 0, range(len(objects)))


def _vocabulary(attribute: str, value: str) -> tuple[str, ...]:
    if attribute not in VOCABULARIES:
        raise ValueError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
    vocabulary = VOCABULARIES[attribute]
    if value not in vocabulary:
        raise ValueError(f"{value!r} is not a {attribute}; choose one of {', '.join(vocabulary)}")
    return vocabulary


def grammar_captions() -> list[str]:
    """Captions that together contain every word a scenes caption can contain: every template over objects
    of every shape, colour, size and position, in groups of one to four."""
    objects = [SceneObject(shape, colour, size, position)
               for shape in SHAPES for colour in COLOURS for size in SIZES for position in POSITIONS]
    groups = [objects[i:i + n] for n in (1, 4) for i in range(0, len(objects), n)]
    return [scene_caption(group, template, range(len(group))) for group in groups for template in range(N_TEMPLATES)]


def scene_concepts(objects: Sequence[SceneObject]) -> dict[str, frozenset[str]]:
    """For each attribute, the set of its values present in the scene."""
    return {attribute: frozenset(getattr(o, attribute) for o in objects) for attribute in ATTRIBUTES}


# --------------------------------------------------------------------------- rendering
def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` with radius ``r`` at offsets (dx, dy) from its centre."""
    adx, ady = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(adx, ady) <= 0.82 * r
    if shape == "triangle":  # apex up, base at 0.75 r
        return (dy <= 0.75 * r) & (adx <= (dy + r) * (0.95 / 1.75))
    if shape == "diamond":
        return adx + ady <= r
    if shape == "cross":
        arm = 0.34 * r
        return ((adx <= arm) & (ady <= r)) | ((ady <= arm) & (adx <= r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


class _Renderer:
    """Draws scenes into ``image_size`` square uint8 images."""

    def __init__(self, image_size: int) -> None:
        self.size = image_size
        self.quadrant = image_size // 2
        centres = np.arange(self.quadrant, dtype=np.float32) + 0.5
        self.grid_y, self.grid_x = np.meshgrid(centres, centres, indexing="ij")
        self.palette = {name: np.array(rgb, dtype=np.float32) for name, rgb in PALETTE.items()}

    def render(self, objects: Sequence[SceneObject], rng: np.random.Generator) -> np.ndarray:
        canvas = np.full((self.size, self.size, 3), rng.uniform(*_BACKGROUND_GREY), dtype=np.float32)
        for obj in objects:
            self._draw(canvas, obj, rng)
        canvas += rng.normal(0.0, _NOISE_STD, size=canvas.shape).astype(np.float32)
        return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    def _draw(self, canvas: np.ndarray, obj: SceneObject, rng: np.random.Generator) -> None:
        q = self.quadrant
        radius = _RADIUS[obj.size] * q * (1.0 + rng.uniform(-_RADIUS_JITTER, _RADIUS_JITTER))
        max_shift = max(q / 2 - radius - 1.0, 0.0)
        centre_y, centre_x = q / 2 + rng.uniform(-max_shift, max_shift, size=2)
        mask = _shape_mask(obj.shape, self.grid_x - centre_x, self.grid_y - centre_y, radius)
        colour = self.palette[obj.colour] + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
        row, col = divmod(POSITIONS.index(obj.position), 2)
        canvas[row * q : (row + 1) * q, col * q : (col + 1) * q][mask] = colour


def quadrant_slices(position: str, image_size: int) -> tuple[slice, slice]:
    """Row and column slices of the quadrant ``position`` in an image of side ``image_size``."""
    q = image_size // 2
    row, col = divmod(POSITIONS.index(position), 2)
    return slice(row * q, (row + 1) * q), slice(col * q, (col + 1) * q)


# --------------------------------------------------------------------------- build
def _build_split(
    split: str, scenes: list[tuple[SceneObject, ...]], pixels: np.ndarray, captions: list[list[str]]
) -> CaptionDataset:
    return CaptionDataset(
        name=f"scenes-{split}",
        pair_ids=[f"scenes-{split}-{i:06d}" for i in range(len(scenes))],
        captions=captions,
        pixels=pixels,
        concepts=[scene_concepts(s) for s in scenes],
        structure=list(scenes),
    )


def make_scenes(config: ScenesConfig | None = None) -> tuple[CaptionDataset, CaptionDataset]:
    """Build the ``scenes`` data set: (train, test), deterministic from ``config.seed``.

    ``structure[i]`` is the tuple of :class:`SceneObject` of image i in canonical order;
    ``concepts[i]`` maps each attribute to the set of its values in image i; pair ids are
    ``scenes-train-000123`` / ``scenes-test-000042``.
    """
    config = config or ScenesConfig()
    scenes = _sample_scenes(config)
    render_rng = np.random.default_rng([config.seed, _STREAM_RENDER])
    caption_rng = np.random.default_rng([config.seed, _STREAM_CAPTIONS])
    renderer = _Renderer(config.image_size)
    pixels = np.empty((len(scenes), config.image_size, config.image_size, 3), dtype=np.uint8)
    captions = []
    for i, objects in enumerate(scenes):
        pixels[i] = renderer.render(objects, render_rng)
        captions.append(scene_captions(objects, caption_rng))
    n = config.n_train
    train = _build_split("train", scenes[:n], pixels[:n], captions[:n])
    test = _build_split("test", scenes[n:], pixels[n:], captions[n:])
    return train, test
