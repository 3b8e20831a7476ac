#!/usr/bin/env bash
# The test command: everything CI runs, runnable on a clean Debian 12 machine
# that has only the Rust toolchain.
#
#   1. makes sure a Docker engine answers (scripts/docker-env.sh: installs
#      docker.io if needed, starts a private dockerd if none answers and stops
#      it at the end, also on failure);
#   2. builds the test image (skipped when the test binary is unchanged);
#   3. runs cargo fmt --check, clippy -D warnings and every test (unit
#      tests, the supervisor's and the scheduler's rule scenarios, a smoke
#      run of each fuzz target, integration and chaos tests against the
#      engine, the control endpoint driven by the real AWS CLI on SQLite and
#      on private PostgreSQL servers, managed agents behind HAProxy), then
#      checks that no agent, control, PostgreSQL or HAProxy process was left
#      behind;
#   4. builds the .deb, installs, checks and purges it (tests/package.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-env.sh

ensure_docker
missing=""
command -v systemd-socket-activate >/dev/null 2>&1 || missing="$missing systemd"
command -v docker-registry >/dev/null 2>&1 || missing="$missing docker-registry"
command -v htpasswd >/dev/null 2>&1 || missing="$missing apache2-utils"
command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy"
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$missing postgresql"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing="$missing faketime"
command -v prlimit >/dev/null 2>&1 || missing="$missing util-linux"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
if [ -n "$missing" ]; then
  log "installing$missing (socket activation, registry pull and TLS tests)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
if ! command -v aws >/dev/null 2>&1; then
  log "installing the AWS CLI from PyPI (the control endpoint's tests drive it as the operator)"
  python3 -m pip install -q awscli 2>/dev/null || python3 -m pip install -q --break-system-packages awscli
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  hash -r
fi
# The Debian package starts a system registry on :5000; the tests run their own.
systemctl stop docker-registry >/dev/null 2>&1 || true
systemctl stop haproxy >/dev/null 2>&1 || true
# The tests start private PostgreSQL servers (their own data directories and
# ports); the package's own cluster is not used.
systemctl stop postgresql >/dev/null 2>&1 || true
log "Docker engine $(docker version --format '{{.Server.Version}}') at $DOCKER_HOST"

log "building the test image"
scripts/build-test-image.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "cargo test (unit, rule scenarios, fuzz smoke, integration against the engine)"
cargo test --locked --workspace -- --test-threads=4
# The suite must leave nothing running behind it.
sleep 1
if pgrep -af 'target/debug/dockhand (agent|control)|postgres -D /tmp/dockhand-pg|haproxy -db' >/dev/null; then
  log "processes the tests left behind:"
  pgrep -af 'target/debug/dockhand (agent|control)|postgres -D /tmp/dockhand-pg|haproxy -db' >&2
  exit 1
fi
log "package test"
tests/package.sh
