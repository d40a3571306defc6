"""The data layer: every source (synthetic ``scenes``, Karpathy JSON, JSONL manifests, ``emoji``) becomes
a :class:`CaptionDataset`; :mod:`~ease_engine.data.partition` assigns pairs to clients."""

from ease_engine.data.dataset import NO_CLIENT, CaptionDataset
from ease_engine.data.emoji import EmojiConfig, load_emoji
from ease_engine.data.errors import DataError
from ease_engine.data.karpathy import load_karpathy
from ease_engine.data.manifest import load_manifest, write_manifest
from ease_engine.data.partition import (
    PartitionConfig,
    apply_partition,
    by_category,
    category_of_items,
    dirichlet,
    exclusive_concepts,
    first_object_labels,
    iid,
    partition_ids,
)
from ease_engine.data.scenes import (
    ATTRIBUTES,
    CAPTIONS_PER_IMAGE,
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

__all__ = [
    "ATTRIBUTES",
    "CAPTIONS_PER_IMAGE",
    "COLOURS",
    "NO_CLIENT",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "VOCABULARIES",
    "CaptionDataset",
    "DataError",
    "EmojiConfig",
    "PartitionConfig",
    "SceneObject",
    "ScenesConfig",
    "apply_partition",
    "by_category",
    "canonical_key",
    "category_of_items",
    "dirichlet",
    "exclusive_concepts",
    "first_object_labels",
    "iid",
    "load_karpathy",
    "load_emoji",
    "load_manifest",
    "make_scenes",
    "partition_ids",
    "probe_captions",
    "scene_caption",
    "write_manifest",
]
