"""Faults of the artifact store (issue 11, item 3 and the disk): a corrupted and a symlinked base version are
refused (the request fails with reason integrity_error, the download answers 409 with no bytes), a missing
signing key fails the request at signing, a read-only artifact directory and a full disk fail it cleanly; in
every case nothing partial is left and a later request publishes once the fault is gone. Fails on code that
loads and serves versions without checking them."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.faults.cluster import write_version


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("tamper", ["corrupted", "symlinked"])
def test_a_tampered_base_is_neither_erased_from_nor_served(make_cluster, tamper):
    cluster = make_cluster()
    cluster.register("tampered")
    cluster.start_dispatcher()
    cluster.start_worker()
    first = cluster.submit("tampered", client_id="0")
    assert cluster.wait_terminal(first)["status"] == "published"  # negative control: intact, it works
    base = cluster.artifacts / "tampered" / "v2"
    if tamper == "corrupted":
        _flip_a_byte(base / "open_clip_model.safetensors")
    else:
        os.symlink("/etc/passwd", base / "passwd")
    request_id = cluster.submit("tampered", client_id="1")
    view = cluster.wait_terminal(request_id)
    assert view["status"] == "failed" and view["failure"]["reason"] == "integrity_error", view
    assert str(cluster.artifacts) not in str(view["failure"])
    download = cluster.client.get("/v1/models/tampered/versions/2/download", headers=cluster.headers("aggregator"))
    assert download.status_code == 409 and not download.content.startswith(b"PK") and b"root:" not in download.content
    v1 = cluster.client.get("/v1/models/tampered/versions/1/download", headers=cluster.headers("aggregator"))
    assert v1.status_code == 410 and v1.json()["code"] == "version_withdrawn"  # it held client 0 (not tampered)
    if tamper == "corrupted":  # an operator restores v2; then everything checks out again
        _flip_a_byte(base / "open_clip_model.safetensors")
    else:
        (base / "passwd").unlink()
    restored = cluster.client.get("/v1/models/tampered/versions/2/download", headers=cluster.headers("aggregator"))
    assert restored.status_code == 200 and restored.content.startswith(b"PK")  # negative control: intact, served
    cluster.assert_consistent([first, request_id])


def test_a_missing_signing_key_fails_the_request_at_signing(make_cluster, tmp_path):
    cluster = make_cluster()
    cluster.register("unsigned")
    cluster.start_dispatcher()
    worker = cluster.start_worker(LETHE_SIGNING_KEY=str(tmp_path / "gone" / "key.pem"))
    request_id = cluster.submit("unsigned")
    view = cluster.wait_terminal(request_id)
    assert view["status"] == "failed" and view["failure"]["reason"] == "signing_error", view
    assert "gone" not in str(view["failure"]) and "<path>" in view["failure"]["message"]  # no server path shown
    cluster.assert_consistent([request_id])
    cluster.kill(worker)
    cluster.start_worker()  # the key is back: the next request publishes
    again = cluster.submit("unsigned", client_id="1")
    assert cluster.wait_terminal(again)["status"] == "published"
    cluster.assert_consistent([request_id, again])


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def _read_only(directory: Path):
    """A read-only bind mount of ``directory`` on itself (root only); None if it cannot be made."""
    if os.geteuid() != 0 or not _mount("--bind", str(directory), str(directory)):
        yield False
        return
    try:
        yield _mount("-o", "remount,ro,bind", str(directory))
    finally:
        subprocess.run(["umount", str(directory)], capture_output=True)


def test_a_read_only_artifact_directory_fails_cleanly(make_cluster):
    cluster = make_cluster()
    cluster.register("frozen")
    cluster.start_dispatcher()
    model_dir = cluster.artifacts / "frozen"
    (model_dir / ".staging").mkdir()
    with _read_only(model_dir) as mounted:
        # a real read-only mount where the suite runs as root; else the stand-in's write raises EROFS
        worker = cluster.start_worker(**({} if mounted else {"FAULT_INJECT": "erofs"}))
        request_id = cluster.submit("frozen")
        view = cluster.wait_terminal(request_id)
        assert view["status"] == "failed" and view["failure"]["reason"] == "internal_error", view
        assert "Read-only" in view["failure"]["message"] and str(cluster.artifacts) not in view["failure"]["message"]
        cluster.kill(worker)
    cluster.assert_consistent([request_id])
    cluster.start_worker()
    again = cluster.submit("frozen", client_id="1")
    assert cluster.wait_terminal(again)["status"] == "published"
    cluster.assert_consistent([request_id, again])


def test_a_full_disk_while_writing_the_version_fails_cleanly(make_cluster, tmp_path):
    cluster = make_cluster()
    cluster.start_dispatcher()
    store = cluster.artifacts / "full"
    store.mkdir()
    mounted = os.geteuid() == 0 and _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(store))
    try:
        # a real 256 KiB tmpfs where the suite runs as root (the stand-in writes 1 MiB of weights); else ENOSPC
        # is injected at the write
        cluster.register("full", make=write_version)
        worker = cluster.start_worker(FAULT_WEIGHTS_BYTES=str(1 << 20),
                                      **({} if mounted else {"FAULT_INJECT": "enospc"}))
        request_id = cluster.submit("full")
        view = cluster.wait_terminal(request_id)
        assert view["status"] == "failed" and view["failure"]["reason"] == "internal_error", view
        assert "No space left" in view["failure"]["message"], view
        cluster.assert_consistent([request_id])
        cluster.kill(worker)
        cluster.start_worker()  # small weights fit: the store works again
        again = cluster.submit("full", client_id="1")
        assert cluster.wait_terminal(again)["status"] == "published"
        cluster.assert_consistent([request_id, again])
    finally:
        cluster.stop()
        if mounted:
            subprocess.run(["umount", str(store)], capture_output=True)
