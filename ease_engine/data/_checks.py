"""Shared input checks of the file loaders: the raise-or-skip policy and image checks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from PIL import Image

from ease_engine.data.errors import DataError

OnError = Literal["raise", "skip"]

logger = logging.getLogger("ease_engine.data")


class ProblemPolicy:
    """Applies ``on_error`` to bad items: ``"raise"`` raises, ``"skip"`` counts them.

    Skipping is never silent: every skipped item is logged at debug level and
    :meth:`warn_if_skipped` logs one warning with the count and the first problem.
    """

    def __init__(self, on_error: str, hint: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.skip = on_error == "skip"
        self.hint = hint
        self.skipped = 0
        self.first_problem: str | None = None

    def report(self, problem: DataError) -> None:
        """Raise ``problem`` (with the hint) or count it as a skipped item."""
        if not self.skip:
            raise DataError(f"{problem}; {self.hint}") from None
        self.skipped += 1
        self.first_problem = self.first_problem or str(problem)
        logger.debug("skipped: %s", problem)

    def warn_if_skipped(self, source: Path, kept: int) -> None:
        if self.skipped:
            logger.warning(
                "%s: skipped %d bad item(s), kept %d; first problem: %s",
                source,
                self.skipped,
                kept,
                self.first_problem,
            )


def check_image(path: Path, verify: bool) -> None:
    """Raise :class:`DataError` if ``path`` is not a file, or (``verify``) not a readable image."""
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    if not verify:
        return
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error ...
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def require_nonempty(captions: list[str], where: str) -> list[str]:
    """Stripped captions; :class:`DataError` for an empty list or an empty caption."""
    if not captions:
        raise DataError(f"{where}: no captions")
    stripped = [c.strip() for c in captions]
    for k, caption in enumerate(stripped):
        if not caption:
            raise DataError(f"{where}: caption {k} is empty")
    return stripped
