"""Logging for the command line: warnings and up, without open_clip's "no pretrained weights" notice."""

from __future__ import annotations

import logging


class _QuietOpenClip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def setup_logging(level: int = logging.WARNING) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietOpenClip())
