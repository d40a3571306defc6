"""The files of a model version directory (one name each, used everywhere).

    open_clip_config.json        open_clip's ``local-dir:`` config (model_cfg, preprocess_cfg)
    open_clip_model.safetensors  the weights, LoRA adapters folded in
    lethe_model.json             how Lethe trains the model (mode, LoRA rank, ...)
    lethe_state.safetensors      LoRA mode: frozen base and adapter factors, exactly
    metadata.json                what produced the version (config, fingerprint, ...)
    clients.json                 the federation's clients, their pair ids, excluded / erased flags
    history.json, metrics.json   training history and figures
    ledger/                      the contribution ledger (EASE)
    updates/                     stored per-round client updates (FedEraser), optional
    forget_lock/                 the Forget Lock: every erasure in the version's lineage
    verification.json            an erased version's verification report (figures and gates)
    manifest.json                an erased version's manifest: parent, erasure, file digests, content hash
    model.sig                    the OpenSSF model-signing signature (Sigstore bundle)
"""

from __future__ import annotations

OPEN_CLIP_CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
LORA_STATE = "lethe_state.safetensors"
MODEL_CONFIG = "lethe_model.json"
METADATA = "metadata.json"
CLIENTS = "clients.json"
HISTORY = "history.json"
METRICS = "metrics.json"
LEDGER_DIR = "ledger"
UPDATES_DIR = "updates"
FORGET_LOCK_DIR = "forget_lock"
VERIFICATION = "verification.json"
MANIFEST = "manifest.json"
SIGNATURE = "model.sig"

# The descriptive JSON a registered version must carry: an erased version's manifest, else a
# federation's metadata.
DESCRIPTOR_FILES = (MANIFEST, METADATA)
