#!/usr/bin/env bash
# OTLP spans stored per CPU-second: meshscope (durable: acknowledged after the WAL fsync) next
# to Rotel (`rotel-agent --exporter blackhole`: decoded, then dropped), on the same machine
# with the same load, over OTLP/gRPC and OTLP/HTTP (protobuf).
#
#   bench/otlp_vs_rotel.sh            # 1M spans per run, 512 spans/request, 8 connections, 3 rounds
#   SPANS=300000 CONCURRENCY=4 ROUNDS=1 bench/otlp_vs_rotel.sh
#
# Each (receiver, protocol) pair gets a fresh server process (meshscope: a new temporary data
# directory, default settings, fsync always). The load comes from `meshscope bench otlp` in
# its own process, so only the receiver's CPU is counted: utime + stime from
# /proc/<pid>/stat, read after a warm-up and again once the load is acknowledged and the
# receiver has settled. Peak RSS is the receiver's VmHWM. CPU time on a shared machine varies
# from run to run, so every pair runs ROUNDS times, the receivers taking turns, and the
# median is compared. Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

SPANS="${SPANS:-1000000}"
BATCH="${BATCH:-512}"
CONCURRENCY="${CONCURRENCY:-8}"
WARMUP_SPANS="${WARMUP_SPANS:-50000}"
MAX_TIME="${MAX_TIME:-180s}"
ROUNDS="${ROUNDS:-3}"
BIN="${MESHSCOPE_BIN:-$PWD/target/release/meshscope}"
# Ports away from the defaults, so a meshscope or collector already running is not hit.
MS_GRPC=127.0.0.1:24317 MS_HTTP=127.0.0.1:24318 MS_API=127.0.0.1:24001
RO_GRPC=127.0.0.1:25317 RO_HTTP=127.0.0.1:25318

[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release -p meshscope first" >&2; exit 1; }
python3 -c 'import rotel' 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check rotel
ROTEL="$(python3 -c 'import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
[ -x "$ROTEL" ] || { echo "rotel-agent not found at $ROTEL" >&2; exit 1; }

TICK="$(getconf CLK_TCK)"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# CPU seconds (user + system) of a process so far.
cpu_seconds() {
  local stat
  stat="$(cat "/proc/$1/stat")"
  stat="${stat##*) }" # fields after the command name; utime and stime are fields 14 and 15
  awk -v t="$TICK" '{ printf "%.2f", ($12 + $13) / t }' <<<"$stat"
}
peak_rss_mib() { awk '/^VmHWM:/ { printf "%d", $2 / 1024 }' "/proc/$1/status"; }

wait_port() {
  local host="${1%:*}" port="${1##*:}"
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited; log:" >&2; cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; exit 1
}

start_server() { # receiver
  rm -rf "$WORK/data"
  case "$1" in
    meshscope)
      "$BIN" serve --data-dir "$WORK/data" --api-addr "$MS_API" \
        --otlp-grpc-addr "$MS_GRPC" --otlp-http-addr "$MS_HTTP" --log warn >"$WORK/server.log" 2>&1 &
      SERVER_PID=$!; wait_port "$MS_GRPC"; wait_port "$MS_HTTP" ;;
    rotel)
      "$ROTEL" start --exporter blackhole --otlp-grpc-endpoint "$RO_GRPC" --otlp-http-endpoint "$RO_HTTP" \
        --pid-file "$WORK/rotel.pid" --log-file "$WORK/rotel.log" >"$WORK/server.log" 2>&1 &
      SERVER_PID=$!; wait_port "$RO_GRPC"; wait_port "$RO_HTTP" ;;
  esac
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

load() { # target spans
  "$BIN" bench otlp --target "$1" --spans "$2" --batch "$BATCH" --concurrency "$CONCURRENCY" --max-time "$MAX_TIME"
}

declare -A RATES
printf '%-6s %-10s %-5s %12s %8s %12s %8s %14s %10s\n' round receiver proto "spans acked" "wall s" "spans/s" "CPU s" "spans/CPU-s" "peak RSS"
for round in $(seq 1 "$ROUNDS"); do
  for proto in grpc http; do
    for receiver in meshscope rotel; do
      case "$receiver/$proto" in
        meshscope/grpc) target="grpc://$MS_GRPC" ;; meshscope/http) target="http://$MS_HTTP" ;;
        rotel/grpc) target="grpc://$RO_GRPC" ;; rotel/http) target="http://$RO_HTTP" ;;
      esac
      start_server "$receiver"
      load "$target" "$WARMUP_SPANS" >"$WORK/warmup.log" 2>&1 || { cat "$WORK/warmup.log" "$WORK/server.log" >&2; exit 1; }
      sleep 1
      cpu0="$(cpu_seconds "$SERVER_PID")"
      load "$target" "$SPANS" >"$WORK/load.log" 2>&1 || { cat "$WORK/load.log" "$WORK/server.log" >&2; exit 1; }
      sleep 1 # let work already acknowledged (batches, flushes) finish before reading the CPU
      cpu1="$(cpu_seconds "$SERVER_PID")"
      rss="$(peak_rss_mib "$SERVER_PID")"
      stop_server
      result="$(grep '^RESULT' "$WORK/load.log")"
      acked="$(sed -E 's/.*spans_acked=([0-9]+).*/\1/' <<<"$result")"
      secs="$(sed -E 's/.*seconds=([0-9.]+).*/\1/' <<<"$result")"
      read -r rate per_cpu cpu < <(awk -v a="$acked" -v s="$secs" -v c0="$cpu0" -v c1="$cpu1" \
        'BEGIN { c = c1 - c0; printf "%.0f %.0f %.2f\n", a / s, (c > 0 ? a / c : 0), c }')
      RATES["$receiver/$proto"]+="$per_cpu "
      printf '%-6s %-10s %-5s %12s %8s %12s %8s %14s %7s MiB\n' "$round" "$receiver" "$proto" "$acked" "$secs" "$rate" "$cpu" "$per_cpu" "$rss"
    done
  done
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
echo
for proto in grpc http; do
  m="$(median "${RATES[meshscope/$proto]}")"
  r="$(median "${RATES[rotel/$proto]}")"
  awk -v m="$m" -v r="$r" -v p="$proto" -v n="$ROUNDS" \
    'BEGIN { printf "%s: median of %d rounds: meshscope %.0f, rotel %.0f spans per CPU-second; meshscope/rotel = %.2f×\n", p, n, m, r, (r > 0 ? m / r : 0) }'
done
