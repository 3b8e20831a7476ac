#!/bin/bash
# EC2 user data for a Dockhand host, in the article's style: write
# /etc/ecs/ecs.config, install Docker and the package, wait until the agent
# is ready. Paste into the launch template's user data, editing the three
# settings, or run it as root on any Debian or Ubuntu host:
#
#   CLUSTER=my-ecs-cluster PACKAGE=https://example.com/dockhand_0.1.0_amd64.deb \
#     bash user-data.sh [KEY=VALUE ...]
#
# Extra KEY=VALUE arguments (or EXTRA_CONFIG, one per line) are appended to
# ecs.config, e.g. ECS_BACKEND_HOST=https://control:8443 or
# ECS_RESERVED_MEMORY=256. An existing /etc/ecs/ecs.config is replaced: user
# data owns it, as in the article.
set -euo pipefail

CLUSTER=${CLUSTER:-my-ecs-cluster}
PACKAGE=${PACKAGE:-/tmp/dockhand.deb}          # a URL or a local path
EXTRA_CONFIG=${EXTRA_CONFIG:-}
ROOT=${DOCKHAND_ROOT:-}                        # tests write under a prefix
CONFIG_ONLY=${DOCKHAND_CONFIG_ONLY:-no}        # tests stop after the config

log() { echo "dockhand user-data: $*" >&2; }

# 1. The article's line, plus any extra keys.
mkdir -p "$ROOT/etc/ecs"
{
  echo "ECS_CLUSTER=$CLUSTER"
  [ -z "$EXTRA_CONFIG" ] || printf '%s\n' "$EXTRA_CONFIG"
  for kv in "$@"; do
    case "$kv" in
      *=*) echo "$kv" ;;
      *) log "ignoring argument without '=': $kv" ;;
    esac
  done
} >"$ROOT/etc/ecs/ecs.config"
log "wrote $ROOT/etc/ecs/ecs.config"
[ "$CONFIG_ONLY" = yes ] && exit 0

# 2. Docker, then the package (its postinst enables and starts the units).
export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq docker.io
fi
case "$PACKAGE" in
  http://*|https://*)
    deb=/tmp/dockhand.deb
    curl -fsSL --retry 5 -o "$deb" "$PACKAGE"
    ;;
  *) deb=$PACKAGE ;;
esac
apt-get install -y -qq "$deb"

# 3. Wait until the agent reports ready (systemd Type=notify) and answers.
for _ in $(seq 1 120); do
  if systemctl is-active --quiet dockhand-agent.service \
     && curl -fsS --max-time 2 http://127.0.0.1:51678/v1/metadata >/dev/null 2>&1; then
    log "agent ready: $(curl -s http://127.0.0.1:51678/v1/metadata)"
    exit 0
  fi
  sleep 1
done
log "agent not ready after 120 s; see: journalctl -u dockhand-agent"
systemctl status --no-pager dockhand-agent.service || true
exit 1
