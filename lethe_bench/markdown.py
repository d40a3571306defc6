"""docs/benchmarks.md is shared by several benchmark scripts: each owns one marked section."""

from __future__ import annotations

import re
from pathlib import Path

from ease_engine.atomic import write_bytes

HEADER = "# Benchmarks\n\nEvery figure below was produced by the command shown with it, on the machine named.\n"


def replace_section(path: str | Path, key: str, body: str) -> None:
    """Write ``body`` between ``<!-- key:begin -->`` and ``<!-- key:end -->``, keeping the rest."""
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    write_bytes(path, text.encode())


def table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
