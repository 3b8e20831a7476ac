#!/bin/bash
# EC2 user data for a Dockhand host, in the article's style: write
# /etc/ecs/ecs.config, install Docker and the package, wait until the agent
# is ready. Paste into the launch template's user data, editing the settings,
# or run it as root on any Debian or Ubuntu host:
#
#   CLUSTER=my-ecs-cluster PACKAGE=https://example.com/dockhand_0.1.0_amd64.deb \
#     bash user-data.sh [KEY=VALUE ...]
#
# To join a control endpoint (managed mode), also set CONTROL_URL (one URL,
# or several comma-separated replicas) and an instance key (from
# `dockhand control credentials new --role instance --cluster CLUSTER`):
#
#   CONTROL_URL=https://control.internal:8443 \
#   INSTANCE_KEY_ID=AKIA... INSTANCE_KEY_SECRET=... bash user-data.sh
#
# On EC2 the instance id, zone and type then come from instance metadata
# (EC2_METADATA=no to derive the id from /etc/machine-id instead).
#
# Extra KEY=VALUE arguments (or EXTRA_CONFIG, one per line) are appended to
# ecs.config, e.g. ECS_BACKEND_HOST=https://control:8443 or
# ECS_RESERVED_MEMORY=256. An existing /etc/ecs/ecs.config is replaced: user
# data owns it, as in the article.
set -euo pipefail

CLUSTER=${CLUSTER:-my-ecs-cluster}
CONTROL_URL=${CONTROL_URL:-}
INSTANCE_KEY_ID=${INSTANCE_KEY_ID:-}
INSTANCE_KEY_SECRET=${INSTANCE_KEY_SECRET:-}
EC2_METADATA=${EC2_METADATA:-yes}
PACKAGE=${PACKAGE:-/tmp/dockhand.deb}          # a URL or a local path
EXTRA_CONFIG=${EXTRA_CONFIG:-}
ROOT=${DOCKHAND_ROOT:-}                        # tests write under a prefix
CONFIG_ONLY=${DOCKHAND_CONFIG_ONLY:-no}        # tests stop after the config

log() { echo "dockhand user-data: $*" >&2; }

# 1. The article's line, the control endpoint's (managed mode), plus any
#    extra keys. The file holds a secret in managed mode: root only.
mkdir -p "$ROOT/etc/ecs"
if [ -n "$CONTROL_URL" ] && { [ -z "$INSTANCE_KEY_ID" ] || [ -z "$INSTANCE_KEY_SECRET" ]; }; then
  log "CONTROL_URL needs INSTANCE_KEY_ID and INSTANCE_KEY_SECRET (dockhand control credentials new --role instance)"
  exit 1
fi
umask 077
{
  echo "ECS_CLUSTER=$CLUSTER"
  if [ -n "$CONTROL_URL" ]; then
    echo "ECS_BACKEND_HOST=$CONTROL_URL"
    echo "AWS_ACCESS_KEY_ID=$INSTANCE_KEY_ID"
    echo "AWS_SECRET_ACCESS_KEY=$INSTANCE_KEY_SECRET"
    [ "$EC2_METADATA" = yes ] && echo "DOCKHAND_EC2_METADATA=true"
  fi
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
