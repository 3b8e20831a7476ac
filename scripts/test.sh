#!/usr/bin/env bash
# The test command: everything CI runs, runnable on a clean Debian 12 machine
# that has only the Rust toolchain.
#
#   1. installs Debian's docker.io when dockerd is missing;
#   2. when no engine answers on DOCKER_HOST, starts a private dockerd with
#      its own data-root, exec-root, pidfile and socket under a temporary
#      directory, and stops it at the end, also on failure;
#   3. builds the test image (skipped when the test binary is unchanged);
#   4. runs cargo fmt --check, clippy -D warnings and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io (Debian's Docker engine)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

private_dir=""
stop_private_dockerd() {
  [ -n "$private_dir" ] || return 0
  if [ -f "$private_dir/docker.pid" ]; then
    pid=$(cat "$private_dir/docker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Mounts left under the data root would make rm fail; unmount first.
  grep -o " $private_dir[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$private_dir" 2>/dev/null || true
}
trap stop_private_dockerd EXIT

if ! docker info >/dev/null 2>&1; then
  private_dir=$(mktemp -d /tmp/dockhand-test.XXXXXX)
  log "no Docker engine answers on ${DOCKER_HOST:-the default socket}; starting a private dockerd in $private_dir"
  dockerd \
    --data-root "$private_dir/data" \
    --exec-root "$private_dir/exec" \
    --pidfile "$private_dir/docker.pid" \
    --host "unix://$private_dir/docker.sock" \
    >"$private_dir/dockerd.log" 2>&1 &
  export DOCKER_HOST="unix://$private_dir/docker.sock"
  for _ in $(seq 1 150); do
    docker info >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! docker info >/dev/null 2>&1; then
    log "private dockerd did not come up; its log:"
    cat "$private_dir/dockerd.log" >&2
    exit 1
  fi
fi
export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}
log "Docker engine: $(docker version --format '{{.Server.Version}}') at $DOCKER_HOST"

log "building the test image"
scripts/build-test-image.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "cargo test"
cargo test --locked --workspace -- --test-threads=4
