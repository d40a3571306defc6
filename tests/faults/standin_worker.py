"""A real Celery erasure worker (``workers.celery_app``, the real pipeline, claims, heartbeat, signing and
publication) whose engine is a stand-in with stage hooks, for the fault suite:

    python tests/faults/standin_worker.py -Q QUEUE -n NAME

Environment (besides every ``LETHE_*`` setting):

- ``FAULT_HOLD_AT``: a stage (loading, excising, displacing, verifying, signing, publishing) at which the job
  writes ``$FAULT_MARKERS/<stage>-<pid>`` and then sleeps until the process is killed. ``publishing`` holds
  after the version was moved to ``<model>/v<N>`` and before the transaction commits (the worst moment).
- ``FAULT_STAGE_SECONDS``: seconds spent in each engine stage (default 0.05).
- ``FAULT_WEIGHTS_BYTES``: size of the weights file the stand-in writes (default 4096).
- ``FAULT_INJECT``: ``enospc`` or ``erofs``: the stand-in's write raises that ``OSError`` (used only where a
  real tmpfs or read-only bind mount cannot be made).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

STAGES = ("loading", "excising", "displacing", "verifying")


def _hold(stage: str) -> None:
    if os.environ.get("FAULT_HOLD_AT") != stage:
        return
    markers = Path(os.environ["FAULT_MARKERS"])
    markers.mkdir(parents=True, exist_ok=True)
    (markers / f"{stage}-{os.getpid()}").write_text(str(time.time()))
    while True:  # until SIGKILL
        time.sleep(3600)


class StandInEngine:
    """Mimics ``ease_engine.erasure.erase``: every stage (with its hook), a passing report, a version directory
    written like the engine writes one (the base copied, clients.json after the erasure, new weights, a
    manifest)."""

    def __call__(self, version_dir, target, method, params, out_dir, gates, on_stage=None, **_):
        from types import SimpleNamespace

        from ease_engine.erasure import ErasureResult
        from ease_engine.unlearning.base import Cost
        from ease_engine.verification.gates import Gate
        from ease_engine.verification.report import VerificationReport
        from lethe_format import read_clients

        seconds = float(os.environ.get("FAULT_STAGE_SECONDS", "0.05"))
        for index, stage in enumerate(STAGES):
            on_stage(stage, index / len(STAGES))
            _hold(stage)
            time.sleep(seconds)
        report = VerificationReport(
            verdict="passed", metrics={"forget": {"i2t_r1": 1.0}, "retain": {"i2t_r1": 5.0}},
            before={"forget": {"i2t_r1": 9.0}, "retain": {"i2t_r1": 5.0}},
            membership={"similarity_auc": 0.5, "loss_auc": 0.5}, membership_before={"similarity_auc": 0.8},
            gates=[Gate.check("forget_i2t_r1", "forgetting", "stand-in gate", 1.0, None, 3.0, control_value=9.0),
                   Gate.check("retain_i2t_r1", "utility", "stand-in gate", 5.0, 2.0, None, control_value=5.0)])
        outcome = SimpleNamespace(details={}, cost=Cost(), wall_seconds=seconds * len(STAGES))
        shutil.copytree(version_dir, out_dir)
        clients = read_clients(out_dir).after_erasure(target.scope, str(target.client), target.pair_ids)
        (out_dir / "clients.json").write_text(json.dumps(clients.to_json()))
        injected = os.environ.get("FAULT_INJECT")
        if injected:
            code = {"enospc": errno.ENOSPC, "erofs": errno.EROFS}[injected]
            raise OSError(code, os.strerror(code), str(out_dir / "open_clip_model.safetensors"))
        (out_dir / "open_clip_model.safetensors").write_bytes(os.urandom(int(os.environ.get("FAULT_WEIGHTS_BYTES",
                                                                                            "4096"))))
        (out_dir / "manifest.json").write_text(json.dumps({"erasure": {"method": method, "parameters": {}}}))
        on_stage("done", 1.0)
        return ErasureResult(report, outcome, Path(out_dir))


def _install_hooks() -> None:
    from service import versions
    from workers import context as worker_context
    from workers import pipeline

    real_default_context = worker_context.default_context

    def default_context():
        context = real_default_context()
        context.erase_fn = StandInEngine()
        return context

    pipeline_sign = pipeline._sign

    def sign(out_dir, context):
        _hold("signing")
        return pipeline_sign(out_dir, context)

    register = versions.register_staged_version

    def register_then_hold(*args, **kwargs):
        result = register(*args, **kwargs)
        _hold("publishing")  # moved to <model>/v<N>, not committed
        return result

    import workers.tasks as tasks

    tasks.default_context = default_context
    pipeline._sign = sign
    versions.register_staged_version = register_then_hold


if __name__ == "__main__":
    # import the engine's modules now, so a job's timing does not include torch's import
    import ease_engine.erasure  # noqa: F401
    import ease_engine.verification.report  # noqa: F401

    _install_hooks()
    from workers.celery_app import app

    app.worker_main(["worker", "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                     "--without-heartbeat", *sys.argv[1:]])
