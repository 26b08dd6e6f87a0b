#!/usr/bin/env bash
# Runs every cargo-fuzz target of collector/fuzz for a bounded time each; fails on the first
# crash (panic, overflow, out-of-bounds, timeout, out-of-memory), whose input libFuzzer saves
# under collector/fuzz/artifacts/<target>/.
#
#   tests/fuzz.sh [seconds per target, default 30] [target…]
#
# Needs cargo-fuzz (installed if missing). The toolchain here is stable only; RUSTC_BOOTSTRAP=1
# lets it take the nightly flags cargo-fuzz passes (-Zsanitizer=address, coverage passes).
# Seeds are read from collector/fuzz/seeds/<target>/ (kept in git); what the fuzzer finds
# goes to a temporary corpus, so a run leaves the tree clean.
set -euo pipefail
cd "$(dirname "$0")/../collector/fuzz"

SECONDS_EACH="${1:-30}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(access_log access_log_format stats otlp otlp_wire)
fi

command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1

echo "== fuzz: build"
start=$(date +%s)
cargo fuzz build -O -a -s none
echo "fuzz build took $(( $(date +%s) - start )) s"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for t in "${TARGETS[@]}"; do
  echo "== fuzz: $t for ${SECONDS_EACH}s"
  mkdir -p "$WORK/$t" "artifacts/$t"
  # -timeout and -rss_limit_mb turn hangs and blow-ups into crashes; -max_len lets whole
  # batches of lines in.
  status=0
  cargo fuzz run -O -a -s none "$t" "$WORK/$t" "seeds/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$WORK/$t.log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE" "$WORK/$t.log" || true
  if [ "$status" -ne 0 ]; then
    grep -E -A30 "panicked|ERROR: |SUMMARY" "$WORK/$t.log" | head -60 >&2 || tail -40 "$WORK/$t.log" >&2
    echo "fuzz target $t failed (exit $status); crashing input in collector/fuzz/artifacts/$t/" >&2
    echo "reproduce: cd collector/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a -s none $t artifacts/$t/<file>" >&2
    exit 1
  fi
done
echo "== fuzz: no crashes"
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
