#!/usr/bin/env bash
# The test command: everything CI runs, runnable on a clean Debian 12 machine
# that has only the Rust toolchain.
#
#   1. makes sure a Docker engine answers (scripts/docker-env.sh: installs
#      docker.io if needed, starts a private dockerd if none answers and stops
#      it at the end, also on failure);
#   2. builds the test image (skipped when the test binary is unchanged);
#   3. runs cargo fmt --check, clippy -D warnings and every test;
#   4. builds the .deb, installs, checks and purges it (tests/package.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-env.sh

ensure_docker
if ! command -v systemd-socket-activate >/dev/null 2>&1; then
  log "installing systemd (for systemd-socket-activate and systemd-analyze)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
log "Docker engine $(docker version --format '{{.Server.Version}}') at $DOCKER_HOST"

log "building the test image"
scripts/build-test-image.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "cargo test"
cargo test --locked --workspace -- --test-threads=4
log "package test"
tests/package.sh
