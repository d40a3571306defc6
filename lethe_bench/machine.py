"""The machine a figure was measured on, in one phrase (floating point, and so trained weights, differ between
CPU models: a figure names the CPU it came from)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else what the platform reports."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def describe() -> str:
    """For example ``x86_64 (AMD EPYC), 2 CPU cores``."""
    return f"{platform.machine()} ({cpu_model()}), {os.cpu_count()} CPU cores"
