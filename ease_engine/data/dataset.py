"""The one in-memory form every data source is turned into.

A *pair* is one image with all of its captions; ``pair_id`` names it (this is the unit a
data subject asks to erase). Images are either held as one uint8 array (synthetic data)
or as file paths (real data sets), so a data set of 100k Flickr images costs no memory
until a batch is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ease_engine.data.errors import DataError

NO_CLIENT = -1


@dataclass
class CaptionDataset:
    """Images with several captions each, optionally assigned to federated clients.

    ``pixels`` (N, H, W, 3) uint8 or ``image_paths`` (N paths) holds the images; exactly one
    of the two is set. ``client_ids[i]`` is the client that holds pair i (``NO_CLIENT`` for
    held-out data). ``concepts[i]`` maps an attribute name ("colour", "shape", ...) to the
    set of values present in image i; synthetic data fills it, real data leaves it empty.
    ``structure[i]`` is data-set specific (for ``scenes``: the objects) and lets a data set
    rewrite captions for the concept probe.
    """

    name: str
    pair_ids: list[str]
    captions: list[list[str]]
    pixels: np.ndarray | None = None
    image_paths: list[Path] | None = None
    client_ids: np.ndarray = field(default=None)  # type: ignore[assignment]
    concepts: list[dict[str, frozenset[str]]] = field(default=None)  # type: ignore[assignment]
    structure: list[object] | None = None
    skipped: int = 0  # items dropped by a loader in skip-and-count mode

    def __post_init__(self) -> None:
        n = len(self.pair_ids)
        if (self.pixels is None) == (self.image_paths is None):
            raise ValueError("CaptionDataset needs exactly one of pixels or image_paths")
        if self.pixels is not None and (self.pixels.dtype != np.uint8 or self.pixels.ndim != 4):
            raise ValueError("pixels must be a uint8 array of shape (N, H, W, 3)")
        n_images = len(self.pixels) if self.pixels is not None else len(self.image_paths)
        if n_images != n or len(self.captions) != n:
            raise ValueError(
                f"pair_ids ({n}), captions ({len(self.captions)}) and images ({n_images}) differ in length"
            )
        if self.client_ids is None:
            self.client_ids = np.full(n, NO_CLIENT, dtype=np.int64)
        self.client_ids = np.asarray(self.client_ids, dtype=np.int64)
        if self.concepts is None:
            self.concepts = [{} for _ in range(n)]
        seen: dict[str, int] = {}
        for i, pid in enumerate(self.pair_ids):
            if pid in seen:
                raise DataError(f"duplicate pair id {pid!r} (items {seen[pid]} and {i})")
            seen[pid] = i
        self._index = seen

    def __len__(self) -> int:
        return len(self.pair_ids)

    # ------------------------------------------------------------------ access
    def index_of(self, pair_id: str) -> int:
        try:
            return self._index[pair_id]
        except KeyError:
            raise DataError(f"unknown pair id {pair_id!r} in data set {self.name!r}") from None

    def load_image(self, i: int) -> Image.Image:
        if self.pixels is not None:
            return Image.fromarray(self.pixels[i])
        path = self.image_paths[i]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"image file not found: {path} (pair {self.pair_ids[i]!r})") from None
        except OSError as exc:
            raise DataError(f"cannot read image {path} (pair {self.pair_ids[i]!r}): {exc}") from None

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> CaptionDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return CaptionDataset(
            name=name or self.name,
            pair_ids=[self.pair_ids[i] for i in idx],
            captions=[self.captions[i] for i in idx],
            pixels=None if self.pixels is None else self.pixels[idx],
            image_paths=None if self.image_paths is None else [self.image_paths[i] for i in idx],
            client_ids=self.client_ids[idx],
            concepts=[self.concepts[i] for i in idx],
            structure=None if self.structure is None else [self.structure[i] for i in idx],
        )

    def with_clients(self, client_ids: np.ndarray) -> CaptionDataset:
        """A copy that shares the images but carries a new client assignment."""
        out = self.subset(np.arange(len(self)))
        out.client_ids = np.asarray(client_ids, dtype=np.int64).copy()
        if out.client_ids.shape != (len(self),):
            raise ValueError("client_ids must have one entry per pair")
        return out

    def client_indices(self, client: int) -> np.ndarray:
        return np.flatnonzero(self.client_ids == client)

    @property
    def clients(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.client_ids) if c != NO_CLIENT)

    def caption_owner(self) -> tuple[list[str], np.ndarray]:
        """All captions flattened, and for each the index of its image."""
        texts: list[str] = []
        owner: list[int] = []
        for i, caps in enumerate(self.captions):
            texts.extend(caps)
            owner.extend([i] * len(caps))
        return texts, np.asarray(owner, dtype=np.int64)


def concat_datasets(datasets: Sequence[CaptionDataset], name: str) -> CaptionDataset:
    """One data set holding the pairs of ``datasets`` in order (all with pixels of one shape, or all with
    image paths); pair ids must stay unique."""
    if not datasets:
        raise ValueError("concat_datasets needs at least one data set")
    with_pixels = {d.pixels is not None for d in datasets}
    if len(with_pixels) != 1:
        raise DataError("cannot join data sets held as pixels with data sets held as image files")
    structures = [d.structure for d in datasets]
    return CaptionDataset(
        name=name,
        pair_ids=[p for d in datasets for p in d.pair_ids],
        captions=[c for d in datasets for c in d.captions],
        pixels=np.concatenate([d.pixels for d in datasets]) if with_pixels == {True} else None,
        image_paths=None if with_pixels == {True} else [p for d in datasets for p in d.image_paths],
        client_ids=np.concatenate([d.client_ids for d in datasets]),
        concepts=[c for d in datasets for c in d.concepts],
        structure=None if any(s is None for s in structures) else [s for d in datasets for s in d.structure],
        skipped=sum(d.skipped for d in datasets),
    )
