#!/usr/bin/env bash
# Zero-downtime figures: a service of 4 tasks under continuous wrk load
#   1. while its task definition changes (PROVIDER world -> ECS, the
#      article's update): the rolling update through Dockhand's proxy;
#   2. while the agent itself restarts under socket activation
#      (systemd-socket-activate holds the listener, as systemd would).
# For each: requests sent, non-2xx answers, socket errors, how long the
# change took, and the share of answers from the new revision at the end.
#
#   bench/rollout.sh [SECONDS of load per run, default 20]
#
# Traffic goes to 127.0.0.1 only; everything started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-env.sh
. bench/lib.sh
secs=${1:-20}

ensure_docker
need wrk wrk
need systemd-socket-activate systemd
scripts/build-test-image.sh >/dev/null
cargo build --locked --release --quiet --bin dockhand

work=$(mktemp -d /tmp/dockhand-bench.XXXXXX)
api=$(free_port); proxy=$(free_port)
holder=""
finish() {
  if [ -n "$holder" ]; then
    pkill -TERM -P "$holder" 2>/dev/null || true
    kill "$holder" 2>/dev/null || true
    # This pid only: a bare `wait` would also wait for a private dockerd.
    wait "$holder" 2>/dev/null || true
  fi
  remove_bench_containers
  cp "$work/agent.log" "${TMPDIR:-/tmp}/dockhand-bench-rollout-agent.log" 2>/dev/null || true
  rm -rf "$work"
  stop_private_dockerd
}
trap finish EXIT
bench_agent_config "$work" "$api" "$proxy"

service() { # service PROVIDER
  cat <<JSON
{"serviceName": "hello", "desiredCount": 4,
 "deploymentConfiguration": {"minimumHealthyPercent": 100, "maximumPercent": 200},
 "taskDefinition": {"family": "hello", "containerDefinitions": [{
   "name": "web", "image": "dockhand-test/webapp:latest", "memory": 32, "stopTimeout": 5,
   "portMappings": [{"containerPort": 5000, "hostPort": 0}],
   "environment": [{"name": "PROVIDER", "value": "$1"}]}]},
 "loadBalancers": [{"containerName": "web", "containerPort": 5000,
   "healthCheck": {"path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1,
                   "healthyThresholdCount": 2, "unhealthyThresholdCount": 2},
   "deregistrationDelaySeconds": 5}]}
JSON
}

healthy() { # healthy N REVISION: the service has N healthy tasks, all of REVISION
  curl -s "http://127.0.0.1:$api/v1/services" | python3 -c "
import json, sys
s = [x for x in json.load(sys.stdin)['Services'] if x['ServiceName'] == 'hello']
ok = s and s[0]['HealthyCount'] == $1 and [d['Revision'] for d in s[0]['Deployments']] == [$2]
sys.exit(0 if ok else 1)" 2>/dev/null
}

wait_until() { # wait_until SECONDS COMMAND...
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out: $*" >&2; tail -20 "$work/agent.log" >&2; return 1; }
    sleep 0.1
  done
}

share_new() { # share of 200 answers saying Hello ECS!
  local n=0
  for _ in $(seq 1 200); do
    [ "$(curl -s "http://127.0.0.1:$proxy/")" = "Hello ECS!" ] && n=$((n + 1))
  done
  echo "$((n / 2))%"
}

# The agent runs under systemd-socket-activate, twice in a row on the same
# socket (the second run is the restart in part 2).
agent="target/release/dockhand agent --config $work/ecs.config"
systemd-socket-activate -l "127.0.0.1:$proxy" sh -c "LISTEN_PID= $agent 2>>$work/agent.log; LISTEN_PID= $agent 2>>$work/agent.log" &
holder=$!
sleep 0.3
curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$proxy/" || true # starts the first agent
service world >"$work/services/.hello.tmp" && mv "$work/services/.hello.tmp" "$work/services/hello.json"
wait_until 60 healthy 4 1

# 1. Rolling update under load.
wrk -t2 -c32 -d"${secs}s" --latency "http://127.0.0.1:$proxy/" >"$work/wrk-rollout.txt" 2>&1 &
wrk_pid=$!
sleep 2
start=$(date +%s%N)
service ECS >"$work/services/.hello.tmp" && mv "$work/services/.hello.tmp" "$work/services/hello.json"
wait_until 120 healthy 4 2
rollout_ms=$(( ($(date +%s%N) - start) / 1000000 ))
wait "$wrk_pid"
share1=$(share_new)

# 2. Agent restart under load.
first=$(pgrep -P "$holder" -f "dockhand agent" | head -1)
wrk -t2 -c32 -d"${secs}s" --latency "http://127.0.0.1:$proxy/" >"$work/wrk-restart.txt" 2>&1 &
wrk_pid=$!
sleep 2
start=$(date +%s%N)
kill -TERM "$first"
wait_until 60 sh -c "p=\$(pgrep -P $holder -f 'dockhand agent' | head -1); [ -n \"\$p\" ] && [ \"\$p\" != $first ]"
wait_until 60 healthy 4 2
restart_ms=$(( ($(date +%s%N) - start) / 1000000 ))
wait "$wrk_pid"
share2=$(share_new)

printf '\n4 tasks, wrk -t2 -c32 -d%ss through the proxy, %s cores\n' "$secs" "$(nproc)"
printf '%-28s %10s %8s %8s %14s %12s\n' run requests non-2xx errors "change took" "new revision"
for run in rollout:$rollout_ms:$share1 restart:$restart_ms:$share2; do
  IFS=: read -r name ms share <<<"$run"
  read -r _ _ _ non2xx errs total <<<"$(wrk_fields "$work/wrk-$name.txt")"
  label=$([ "$name" = rollout ] && echo "rolling update world->ECS" || echo "agent restart (activation)")
  printf '%-28s %10s %8s %8s %11s ms %12s\n' "$label" "$total" "$non2xx" "$errs" "$ms" "$share"
done
