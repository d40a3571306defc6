"""scripts/gpu_check.sh: it skips cleanly without CUDA, and its code path (federation with AMP, an EASE erasure,
the timings) runs on the CPU with a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lethe_bench import gpu_check

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the skip path does not apply")
def test_the_script_skips_and_exits_0_without_cuda():
    completed = subprocess.run([str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                               timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "GPU check skipped: no CUDA device" in completed.stdout


def test_quick_cpu_run_trains_with_amp_erases_and_reports(tmp_path, capsys):
    out = tmp_path / "gpu-check.json"
    status = gpu_check.main(["--device", "cpu", "--architecture", "lethe-micro", "--quick", "--threads", "1",
                             "--json", str(out), "--workdir", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    assert status == 0, printed
    result = json.loads(out.read_text())
    assert (result["device"], result["architecture"], result["mode"], result["amp"]) == ("cpu", "lethe-micro",
                                                                                          "lora", True)
    assert result["autocast_dtypes"] == ["torch.bfloat16"]  # the engine's training steps ran under autocast
    assert [r["round"] for r in result["rounds"]] == [0, 1]
    assert all(r["steps"] > 0 and 0 < r["train_seconds"] <= r["seconds"] for r in result["rounds"])
    assert result["seconds_per_step_steady"] > 0 and result["erasure_wall_seconds"] > 0
    assert {"loading", "excising", "displacing", "verifying"} <= set(result["erasure_stage_seconds"])
    assert result["erasure_displacement_steps"] == 3 and result["erased_version_written"]
    assert result["federation_peak_gpu_mib"] is None  # not CUDA
    manifest = json.loads((tmp_path / "work" / "erased" / "manifest.json").read_text())
    assert manifest["erasure"]["method"] == "ease" and manifest["erasure"]["client"] == 0
    assert "ms per step" in printed and "EASE erasure of client 0" in printed


def test_problems_flag_what_must_fail_the_check():
    good = {"amp": True, "autocast_dtypes": ["torch.bfloat16"], "erased_version_written": True,
            "rounds": [{"round": 0, "loss": 3.2}]}
    assert gpu_check.problems(good) == []
    assert gpu_check.problems({**good, "autocast_dtypes": ["torch.float32"]})  # AMP asked, not applied
    assert gpu_check.problems({**good, "rounds": [{"round": 0, "loss": float("nan")}]})
    assert gpu_check.problems({**good, "erased_version_written": False})
    assert gpu_check.problems({**good, "amp": False, "autocast_dtypes": ["torch.float32"]}) == []
