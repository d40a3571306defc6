"""What is running: the labels of ``lethe_build_info`` (the API, the dispatcher and the workers export it).

- ``version``: the installed ``lethe`` distribution's version (``unknown`` when run from a source tree
  that was never installed);
- ``commit``: ``LETHE_GIT_COMMIT`` (the images take it as the build argument ``GIT_COMMIT``), else the
  ``HEAD`` of the git checkout the code runs from, else ``unknown``;
- ``python``; ``torch``: the installed torch version where the component uses torch (the workers), empty
  elsewhere (the API never imports torch; its image does not have it).

Nothing here imports torch: versions come from the installed distributions' metadata.
"""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from service.settings import get_settings

UNKNOWN = "unknown"
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def _git_commit() -> str:
    if not (SOURCE_ROOT / ".git").exists():
        return UNKNOWN
    try:
        completed = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=SOURCE_ROOT,
                                   capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    commit = completed.stdout.strip()
    return commit if completed.returncode == 0 and commit else UNKNOWN


def build_labels(component: str, *, with_torch: bool = False) -> dict[str, str]:
    """The ``lethe_build_info`` labels of ``component`` (``api``, ``dispatcher`` or ``worker``)."""
    return {
        "component": component,
        "version": _distribution_version("lethe") or UNKNOWN,
        "commit": (get_settings().git_commit or "").strip() or _git_commit(),
        "python": platform.python_version(),
        "torch": (_distribution_version("torch") or "") if with_torch else "",
    }
