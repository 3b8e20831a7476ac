#!/usr/bin/env bash
# The demo: the agent standalone, with the article's hello-world service
# (examples/hello-world-service.json, on the local test image), answering.
#
# Everything lives in a temporary directory; the agent, its containers and
# any private dockerd are stopped when the demo ends (after about 20 s).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-env.sh

ensure_docker
scripts/build-test-image.sh
cargo build --locked --quiet --bin dockhand

work=$(mktemp -d /tmp/dockhand-demo.XXXXXX)
mkdir -p "$work/services"
api_port=51680
cat >"$work/ecs.config" <<CONF
ECS_CLUSTER=demo
ECS_DATADIR=$work/data
DOCKHAND_SERVICES_DIR=$work/services
DOCKER_HOST=$DOCKER_HOST
DOCKHAND_API_LISTEN=127.0.0.1:$api_port
DOCKHAND_PROXY_LISTEN=127.0.0.1:8080
ECS_IMAGE_PULL_BEHAVIOR=prefer-cached
CONF

agent_pid=""
finish() {
  if [ -n "$agent_pid" ]; then
    kill "$agent_pid" 2>/dev/null || true
    # This pid only: a bare `wait` would also wait for a private dockerd.
    wait "$agent_pid" 2>/dev/null || true
  fi
  # The agent leaves containers running by design; the demo removes its own.
  ids=$(docker ps -aq --filter label=com.amazonaws.ecs.cluster=demo --filter label=dockhand.service=hello-world-service)
  if [ -n "$ids" ]; then docker rm -f $ids >/dev/null || true; fi
  rm -rf "$work"
  stop_private_dockerd
}
trap finish EXIT

log "dockhand config check"
target/debug/dockhand config check --config "$work/ecs.config"
log "starting the agent (log: $work/agent.log)"
target/debug/dockhand agent --config "$work/ecs.config" 2>"$work/agent.log" &
agent_pid=$!
cp examples/hello-world-service.json "$work/services/"
log "installed hello-world-service.json; waiting for 3 tasks"
for _ in $(seq 1 100); do
  n=$(docker ps -q --filter label=dockhand.service=hello-world-service --filter label=com.amazonaws.ecs.cluster=demo | wc -l)
  [ "$n" -ge 3 ] && break
  sleep 0.2
done
sleep 0.5
docker ps --filter label=com.amazonaws.ecs.cluster=demo --format 'table {{.Names}}\t{{.Ports}}\t{{.Status}}'
for port in $(docker ps --filter label=com.amazonaws.ecs.cluster=demo --format '{{.Ports}}' | sed -E 's/.*:([0-9]+)->.*/\1/'); do
  printf 'GET 127.0.0.1:%s/ -> %s' "$port" "$(curl -s "http://127.0.0.1:$port/")"
  echo
done
log "through the proxy on 127.0.0.1:8080 (only healthy tasks get traffic)"
for _ in $(seq 1 50); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/)" = 200 ] && break
  sleep 0.2
done
for _ in 1 2 3; do
  printf 'GET 127.0.0.1:8080/ -> %s (task %s)\n' "$(curl -s http://127.0.0.1:8080/)" "$(curl -s http://127.0.0.1:8080/env/HOSTNAME)"
done
log "dockhand status"
target/debug/dockhand status --config "$work/ecs.config"
log "GET /v1/services (first 40 lines)"
# Whole to a file first: `json.tool | head` would end in a broken pipe.
curl -s "http://127.0.0.1:$api_port/v1/services" | python3 -m json.tool >"$work/services.json"
head -40 "$work/services.json"
log "agent log"
cat "$work/agent.log"
log "demo done; stopping the agent and removing its containers"
