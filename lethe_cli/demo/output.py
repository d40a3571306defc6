"""What the demo prints: messages, the checks it makes and the gates of the erasure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer


@dataclass
class Checks:
    items: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.items.append((name, bool(ok), detail))
        return ok

    @property
    def failed(self) -> list[str]:
        return [name for name, ok, _ in self.items if not ok]

    def print(self) -> None:
        say("checks:")
        for name, ok, detail in self.items:
            say(f"  {mark(ok)}  {name}" + (f": {detail}" if detail else ""))


def say(message: str = "", **style) -> None:
    typer.secho(message, **style) if style else typer.echo(message)


def mark(ok: bool) -> str:
    return typer.style(" ok ", fg=typer.colors.GREEN) if ok else typer.style("FAIL", fg=typer.colors.RED, bold=True)


def show(path: Path) -> str:
    """A path relative to the current directory when it is below it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _bounds(gate: dict[str, Any]) -> str:
    """``value in [low, high]`` / ``value >= low`` / ``value <= high``, and the parent's value."""
    low, high = gate.get("low"), gate.get("high")
    if low is not None and high is not None:
        bound = f"in [{_number(low)}, {_number(high)}]"
    elif low is not None or high is not None:
        bound = f"{gate.get('comparison', '?')} {_number(gate.get('threshold'))}"
    else:
        bound = ""
    return f"{_number(gate.get('value')):>9} {bound}   parent {_number(gate.get('control_value'))}"


def print_gates(view: dict[str, Any], checks: Checks) -> None:
    """The gates of a finished request (with their figures), and Recall@1 before and after per split."""
    result = view.get("result") or {}
    gates = result.get("gates") or (view.get("failure") or {}).get("gates") or []
    if not gates:
        return
    say("gates (each also measured on the unchanged parent, the no-op control):")
    failed = [str(gate.get("name")) for gate in gates if not gate.get("passed")]
    checks.add(f"gates ({len(gates) - len(failed)} of {len(gates)} passed)", not failed,
               f"failed: {', '.join(failed)}" if failed else "")
    verdict = result.get("verdict") or (view.get("failure") or {}).get("kind")
    checks.add(f"verdict {verdict}", verdict == "passed", "; ".join(result.get("reasons") or []))
    for gate in gates:
        ok = bool(gate.get("passed"))
        say(f"  {mark(ok)}  {gate.get('name', '?'):<28} {_bounds(gate)}")
    before, after = result.get("before") or {}, result.get("metrics") or {}
    if after:
        say("Recall@1 (image->text / text->image), before -> after:")
        for split, metrics in after.items():
            old = before.get(split) or {}

            def pair(m: dict) -> str:
                return "/".join(f"{m[k]:5.1f}" if isinstance(m.get(k), int | float) else "  -  "
                                for k in ("i2t_r1", "t2i_r1"))

            say(f"  {split:<10} {pair(old)} -> {pair(metrics)}")
