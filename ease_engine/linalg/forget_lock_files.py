"""The Forget Lock on disk: ``forget_lock.safetensors`` (the tensors, no pickle) and ``forget_lock.json``.

The manifest names the format, the tensors file and its SHA-256, every stored block (its name, its tensors'
key, its shape, its band and, in ``lethe.forget_lock/2``, the index of the erasure it belongs to) and, in
/2, one metadata object per erasure. A lock of one erasure is written as ``lethe.forget_lock/1`` (no erasure
indices), which readers of the first format still read; a lock of several erasures needs /2. Both files are
written atomically, the manifest last. Reading checks the format, the checksum, every field's type and every
shape, and refuses a block stored twice for one erasure: a malformed lock is a ``ValueError`` that names the
field, never a crash or a silently smaller lock.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ease_engine.atomic import write_bytes
from ease_engine.linalg._common import WORK_DTYPE
from ease_engine.linalg.locked_block import LockedBlock

Layers = list[tuple[str, int, LockedBlock]]  # (block name, erasure index, its lock), oldest erasure first

LOCK_FORMAT = "lethe.forget_lock/2"
SINGLE_ERASURE_FORMAT = "lethe.forget_lock/1"  # one erasure, no layers
TENSORS_FILENAME = "forget_lock.safetensors"
MANIFEST_FILENAME = "forget_lock.json"


def save_lock(directory: Path, layers: Layers, erasures: list[dict[str, str]], tolerance: float | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    layered = len(erasures) > 1
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for name, erasure, block in layers:
        key = f"block{len(entries)}"
        tensors[f"{key}.basis"] = block.basis.detach().cpu().contiguous()
        tensors[f"{key}.displacement"] = block.displacement.detach().cpu().to(WORK_DTYPE).contiguous()
        tensors[f"{key}.anchor"] = block.anchor.detach().cpu().to(WORK_DTYPE).contiguous()
        entry = {"name": name, "key": key, "dim": block.dim, "rank": block.rank, "epsilon": block.epsilon}
        entries.append({**entry, "erasure": erasure} if layered else entry)
    fmt = LOCK_FORMAT if layered else SINGLE_ERASURE_FORMAT
    payload = save_safetensors_bytes(tensors, metadata={"format": fmt})
    manifest: dict[str, Any] = {
        "format": fmt,
        "tensors_file": TENSORS_FILENAME,
        "tensors_sha256": hashlib.sha256(payload).hexdigest(),
        "blocks": entries,
        "metadata": erasures[-1],
        "tolerance": tolerance,
    }
    if layered:
        manifest["erasures"] = erasures
    write_bytes(directory / TENSORS_FILENAME, payload)
    manifest_path = directory / MANIFEST_FILENAME
    write_bytes(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest_path


def load_lock(directory: Path) -> tuple[Layers, list[dict[str, str]], float | None]:
    """(layers, erasures' metadata, tolerance) of the lock stored in ``directory``; ValueError if malformed."""
    try:
        manifest = json.loads((directory / MANIFEST_FILENAME).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{MANIFEST_FILENAME} is not JSON ({exc.msg})") from None
    except RecursionError:
        raise ValueError(f"{MANIFEST_FILENAME} is nested too deeply") from None
    _expect(isinstance(manifest, dict), "the manifest is not a JSON object")
    fmt = manifest.get("format")
    _expect(fmt in (LOCK_FORMAT, SINGLE_ERASURE_FORMAT), f"unknown format {fmt!r}")
    _expect(manifest.get("tensors_file") == TENSORS_FILENAME, f"tensors_file must be {TENSORS_FILENAME!r}")
    payload = (directory / TENSORS_FILENAME).read_bytes()
    _expect(hashlib.sha256(payload).hexdigest() == manifest.get("tensors_sha256"),
            f"{TENSORS_FILENAME}: checksum does not match the manifest")
    try:
        tensors = load_safetensors_bytes(payload)
    except SafetensorError as exc:
        raise ValueError(f"{TENSORS_FILENAME} cannot be read ({exc})") from None
    if fmt == LOCK_FORMAT:
        erasures = manifest.get("erasures")
        _expect(isinstance(erasures, list) and erasures and all(isinstance(m, dict) for m in erasures),
                "'erasures' must be a non-empty list of objects")
    else:
        erasures = [manifest.get("metadata") or {}]
        _expect(isinstance(erasures[0], dict), "'metadata' must be an object")
    tolerance = manifest.get("tolerance")
    _expect(tolerance is None or _is_number(tolerance), "'tolerance' must be a number or null")
    erasures = [{str(k): str(v) for k, v in m.items()} for m in erasures]
    layers: Layers = []
    blocks = manifest.get("blocks")
    _expect(isinstance(blocks, list), "'blocks' must be a list")
    seen: set[tuple[str, int]] = set()
    for entry in blocks:
        _expect(isinstance(entry, dict), "every entry of 'blocks' must be an object")
        name, key, epsilon = entry.get("name"), entry.get("key"), entry.get("epsilon")
        erasure = entry.get("erasure") if fmt == LOCK_FORMAT else 0
        _expect(isinstance(name, str) and name and isinstance(key, str), "a block entry needs a 'name' and a 'key'")
        _expect(type(erasure) is int and 0 <= erasure < len(erasures),
                f"block {name!r}: 'erasure' must be an integer index into 'erasures'")
        _expect(epsilon is None or _is_number(epsilon), f"block {name!r}: 'epsilon' must be a number or null")
        _expect((name, erasure) not in seen, f"block {name!r} is stored twice for erasure {erasure}")
        seen.add((name, erasure))
        parts = {part: tensors.get(f"{key}.{part}") for part in ("basis", "displacement", "anchor")}
        _expect(all(t is not None for t in parts.values()), f"block {name!r}: its tensors are missing")
        block = LockedBlock(**parts, epsilon=epsilon)  # checks finiteness and orthonormality
        _expect((block.dim, block.rank) == (entry.get("dim"), entry.get("rank")),
                f"block {name!r}: stored shape does not match the manifest")
        layers.append((name, erasure, block))
    referenced = {f"{entry['key']}.{part}" for entry in blocks for part in ("basis", "displacement", "anchor")}
    _expect(set(tensors) == referenced, "the tensors file holds blocks the manifest does not list")
    return layers, erasures, tolerance


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(f"{MANIFEST_FILENAME}: {problem}")
