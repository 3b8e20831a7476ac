#!/usr/bin/env bash
# The fuzz targets, each for SECONDS (default 60): the ecs.config parser,
# service files (and what the agent does with an accepted one), the proxy's
# request path (HTTP/1.1, and prior-knowledge HTTP/2 frames with h2c on) and
# the local API. Prints cases run, inputs accepted, panics
# and failures per target; exits 1 if any target panicked or failed.
#
#   bench/fuzz.sh [SECONDS] [SEED]
#
# Traffic goes to 127.0.0.1 only (in-process servers); nothing outlives it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
seed=${2:-1}
cargo build --locked --release --quiet -p dockhand-fuzz
exec target/release/dockhand-fuzz all --seconds "$secs" --seed "$seed"
