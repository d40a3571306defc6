#!/usr/bin/env bash
# The deploy/flower example without docker: a SuperLink and one SuperNode per client as local processes,
# then `flwr run` of deploy/flower/app; they are stopped when the run's version is written (or on failure).
#   deploy/flower/run_local.sh OUT_DIR [LETHE_CONFIG]      (default config: deploy/flower/federation.toml)
# Needs Lethe with the flower extra installed (flower-superlink, flower-supernode and flwr on PATH).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$(realpath -m "${1:?usage: run_local.sh OUT_DIR [LETHE_CONFIG]}")
CONFIG=$(realpath "${2:-deploy/flower/federation.toml}")
PORT=${LETHE_FLOWER_PORT:-8110}
CLIENTS=$(python -c "from ease_engine.federation.config import load_config; print(load_config('$CONFIG').partition.n_clients)")
WORK=$(mktemp -d)
export FLWR_TELEMETRY_ENABLED=0 FLWR_HOME="$WORK/flwr-home"
mkdir -p "$FLWR_HOME"
printf '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:%s"\ninsecure = true\n' "$PORT" \
    > "$FLWR_HOME/config.toml"

groups=()
stop() {
    for group in "${groups[@]}"; do kill -- "-$group" 2>/dev/null || true; done
}
trap stop EXIT

setsid flower-superlink --insecure --host 127.0.0.1 --port "$PORT" --isolation subprocess \
    --disable-runtime-dependency-installation > "$WORK/superlink.log" 2>&1 &
groups+=($!)
sleep 5
for ((k = 0; k < CLIENTS; k++)); do
    setsid flower-supernode --insecure --superlink "127.0.0.1:$PORT" --isolation subprocess \
        --node-config "lethe-client-id=$k" --port $((PORT + 100 + k)) > "$WORK/supernode-$k.log" 2>&1 &
    groups+=($!)
done
flwr run deploy/flower/app local --stream --run-config "lethe-config=\"$CONFIG\" out=\"$OUT\"" | tee "$WORK/run.log"
for _ in $(seq 1 120); do  # the ServerApp writes the version as its last step
    [ -f "$OUT/metadata.json" ] && break
    sleep 5
done
if [ -f "$OUT/metadata.json" ]; then
    echo "wrote $OUT (logs in $WORK)"
else
    echo "no version in $OUT; logs in $WORK" >&2
    exit 1
fi
