#!/bin/sh
# GPU check: CUDA + AMP (bfloat16 autocast) federated training steps and an EASE erasure on open_clip ViT-B-32
# with LoRA on both towers (random initialisation unless --weights FILE), printing the time per training step,
# per round, the erasure's wall time and the peak GPU memory (meant to take well under 8 minutes on a GPU).
# On a machine without CUDA it says it skips and exits 0. Options: scripts/gpu_check.sh --help
#   scripts/gpu_check.sh                                   # the check (cuda)
#   scripts/gpu_check.sh --weights ViT-B-32.safetensors --json gpu-check.json
#   scripts/gpu_check.sh --device cpu --architecture lethe-micro --quick --threads 1   # the same code, on CPU
set -e
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m lethe_bench.gpu_check "$@"
