#!/usr/bin/env bash
# Agent figures: time from a service file written to all its tasks running
# (and answering on their published ports), and the agent's resident memory
# with those tasks running. Prints a table. Bounded: one service, stopped and
# removed at the end.
#
#   bench/agent.sh [TASKS]    (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-env.sh
. bench/lib.sh
tasks=${1:-10}

ensure_docker
scripts/build-test-image.sh >/dev/null
cargo build --locked --release --quiet --bin dockhand

work=$(mktemp -d /tmp/dockhand-bench.XXXXXX)
bench_agent_config "$work" 51681 "$(free_port)"
agent_pid=""
finish() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  remove_bench_containers
  rm -rf "$work"
  stop_private_dockerd
}
trap finish EXIT

target/release/dockhand agent --config "$work/ecs.config" 2>"$work/agent.log" &
agent_pid=$!
sleep 1
rss_idle=$(awk '/VmRSS/ {print $2}' /proc/$agent_pid/status)

sed -e 's/"desiredCount": 3/"desiredCount": '"$tasks"'/' -e 's/hello-world-service/bench/' \
  examples/hello-world-service.json >"$work/bench.json"
start=$(date +%s%N)
mv "$work/bench.json" "$work/services/bench.json"
deadline=$(( $(date +%s) + 120 ))
while :; do
  ports=$(docker ps --filter label=com.amazonaws.ecs.cluster=bench --format '{{.Ports}}' | sed -nE 's/.*:([0-9]+)->.*/\1/p')
  ok=0
  for p in $ports; do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$p/" && ok=$((ok + 1))
  done
  [ "$ok" -ge "$tasks" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out; agent log:" >&2; cat "$work/agent.log" >&2; exit 1; }
  sleep 0.05
done
end=$(date +%s%N)
sleep 2
rss=$(awk '/VmRSS/ {print $2}' /proc/$agent_pid/status)

printf '%-48s %s\n' "figure" "value"
printf '%-48s %s\n' "tasks" "$tasks"
printf '%-48s %d ms\n' "service file written -> all tasks answering" $(( (end - start) / 1000000 ))
printf '%-48s %d KiB\n' "agent RSS, idle (no tasks)" "$rss_idle"
printf '%-48s %d KiB\n' "agent RSS with $tasks tasks running" "$rss"
