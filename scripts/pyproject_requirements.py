#!/usr/bin/env python3
"""Print pyproject.toml's dependencies as a pip requirements file: the core list, plus the named extras.

The images install their dependencies from this output in a layer of their own, before the source is copied,
so that a code change does not reinstall them (torch in particular):

    python scripts/pyproject_requirements.py > requirements.txt          # the API: core only, no torch
    python scripts/pyproject_requirements.py engine > requirements.txt   # the workers: core + engine

Standard library only (it runs before anything is installed).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml defines {sorted(optional)}")
    lines = list(project["dependencies"])
    for extra in extras:
        lines += [line for line in optional[extra] if line not in lines]
    return lines


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
