#!/usr/bin/env bash
# Agent figures with many tasks on one host: a service of TASKS tasks behind
# the proxy (health check every 5 s), with ECS's default pull behaviour
# (pull, fall back to the cached image: the registry is not reachable from
# here, so every launch meets a failing pull).
#
# Prints: time from the service file written to every task healthy, the
# agent's CPU (first minute after convergence, then idle) and RSS, and
# dockerd's CPU while idle with the agent running and with it stopped (the
# difference is what the agent's polling costs the engine). Bounded: one
# service, stopped and removed at the end.
#
#   bench/agent.sh [TASKS]    (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-env.sh
. bench/lib.sh
tasks=${1:-10}
window=${BENCH_WINDOW:-30}

ensure_docker
scripts/build-test-image.sh >/dev/null
cargo build --locked --release --quiet --bin dockhand

work=$(mktemp -d /tmp/dockhand-bench.XXXXXX)
api=$(free_port)
bench_agent_config "$work" "$api" "$(free_port)"
sed -i 's/^ECS_IMAGE_PULL_BEHAVIOR=.*/ECS_IMAGE_PULL_BEHAVIOR=default/' "$work/ecs.config"
agent_pid=""
finish() {
  if [ -n "$agent_pid" ]; then
    kill "$agent_pid" 2>/dev/null || true
    # Wait for this pid only: a bare `wait` would also wait for the
    # private dockerd that ensure_docker started.
    wait "$agent_pid" 2>/dev/null || true
  fi
  remove_bench_containers
  rm -rf "$work"
  stop_private_dockerd
}
trap finish EXIT

# CPU ticks (user + system) of a pid.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# cpu_pct PID SECONDS: % of one core used by PID over the next SECONDS.
cpu_pct() {
  local a b
  a=$(ticks "$1"); sleep "$2"; b=$(ticks "$1")
  python3 -c "print(f'{($b - $a) * 100 / ($hz * $2):.1f}')"
}
dockerd_pid=$(pgrep -xo dockerd)

target/release/dockhand agent --config "$work/ecs.config" 2>"$work/agent.log" &
agent_pid=$!
sleep 1
rss_idle=$(awk '/VmRSS/ {print $2}' /proc/$agent_pid/status)

sed -e 's/"desiredCount": 3/"desiredCount": '"$tasks"'/' -e 's/hello-world-service/bench/' \
  -e 's/"memory": 32/"memory": 16/' \
  examples/hello-world-service.json >"$work/bench.json"
start=$(date +%s%N)
mv "$work/bench.json" "$work/services/bench.json"
deadline=$(( $(date +%s) + 900 ))
healthy=0
while :; do
  healthy=$(curl -s --max-time 2 "http://127.0.0.1:$api/v1/services" |
    python3 -c 'import json,sys
try: print(next(s["HealthyCount"] for s in json.load(sys.stdin)["Services"] if s["ServiceName"]=="bench"))
except Exception: print(0)')
  [ "$healthy" -ge "$tasks" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out at $healthy of $tasks healthy; agent log:" >&2; tail -50 "$work/agent.log" >&2; exit 1; }
  sleep 0.2
done
end=$(date +%s%N)
curl -s "http://127.0.0.1:$api/v1/services" >"$work/services.json"
failures=$(python3 -c 'import json,sys; print(next(s["TotalFailures"] for s in json.load(open(sys.argv[1]))["Services"] if s["ServiceName"]=="bench"))' "$work/services.json")
# Why tasks failed, if any did: their events.
python3 - "$work/services.json" >"$work/failures.txt" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["Services"]:
    for e in s["Events"]:
        m = e["Message"]
        if "failed" in m or "stopped:" in m or "never passed" in m:
            print("  " + m)
PY

cpu_first=$(cpu_pct "$agent_pid" "$window")
sleep 10
cpu_pct "$agent_pid" "$window" >"$work/agent.cpu" &
p1=$!
cpu_pct "$dockerd_pid" "$window" >"$work/dockerd.cpu" &
p2=$!
wait "$p1" "$p2"
agent_idle=$(cat "$work/agent.cpu")
dockerd_with=$(cat "$work/dockerd.cpu")
rss=$(awk '/VmRSS/ {print $2}' /proc/$agent_pid/status)
kill "$agent_pid"
wait "$agent_pid" 2>/dev/null || true
agent_pid=""
sleep 5
dockerd_without=$(cpu_pct "$dockerd_pid" "$window")

printf '%-58s %s\n' "figure" "value"
printf '%-58s %s\n' "tasks (16 MiB, health check every 5 s, pull default)" "$tasks"
printf '%-58s %d ms\n' "service file written -> all tasks healthy" $(( (end - start) / 1000000 ))
printf '%-58s %s\n' "tasks failed on the way" "$failures"
printf '%-58s %s %%\n' "agent CPU, first ${window} s after convergence" "$cpu_first"
printf '%-58s %s %%\n' "agent CPU, idle (${window} s)" "$agent_idle"
printf '%-58s %d KiB\n' "agent RSS, no tasks" "$rss_idle"
printf '%-58s %d KiB\n' "agent RSS with $tasks tasks" "$rss"
printf '%-58s %s %%\n' "dockerd CPU, idle, agent running" "$dockerd_with"
printf '%-58s %s %%\n' "dockerd CPU, idle, agent stopped" "$dockerd_without"
if [ -s "$work/failures.txt" ]; then
  echo "failures:"
  head -20 "$work/failures.txt"
fi
