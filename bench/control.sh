#!/usr/bin/env bash
# The control endpoint under load: one `dockhand control` (release build,
# SQLite), AGENTS simulated agents holding sessions and reporting (the real
# protocol over loopback; examples/control_bench.rs), one service scaled
# from 0 to TASKS tasks, then a deployment of all of them, with an operator
# reading the API meanwhile. Prints a table: API latency under that load,
# tasks placed and acknowledged per second, time to steady state, control
# RSS.
#
#   bench/control.sh [AGENTS [TASKS]]     (default 1000 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "--- $*" >&2; }
. bench/lib.sh

agents=${1:-1000}
tasks=${2:-10000}
# Two connections per agent on each side.
ulimit -n "$(ulimit -Hn)"

log "building (release)"
cargo build --release --quiet --bin dockhand --example control_bench

dir=$(mktemp -d /tmp/dockhand-bench-control.XXXXXX)
port=$(free_port)
cat >"$dir/control.conf" <<CONF
DOCKHAND_CONTROL_LISTEN=127.0.0.1:$port
DOCKHAND_CONTROL_DATADIR=$dir/data
DOCKHAND_CONTROL_CREDENTIALS=$dir/credentials
DOCKHAND_CONTROL_LOG_LEVEL=${CONTROL_LOG_LEVEL:-warn}
CONF
bin=target/release/dockhand
field() { awk -v k="$1" '$1 == k {print $3}' "$2"; }
$bin control --config "$dir/control.conf" credentials new --role operator >"$dir/op" 2>/dev/null
$bin control --config "$dir/control.conf" credentials new --role instance --cluster bench >"$dir/inst" 2>/dev/null

$bin control --config "$dir/control.conf" 2>"$dir/control.log" &
ctl=$!
cleanup() { kill "$ctl" 2>/dev/null || true; wait "$ctl" 2>/dev/null || true; [ -n "${KEEP_LOG:-}" ] && cp "$dir/control.log" "$KEEP_LOG"; rm -rf "$dir"; }
trap cleanup EXIT
wait_http "http://127.0.0.1:$port/health" 20

log "$agents agents, a service of $tasks tasks, then a deployment of all of them"
start=$(date +%s.%N)
target/release/examples/control_bench "127.0.0.1:$port" \
  "$(field aws_access_key_id "$dir/op")" "$(field aws_secret_access_key "$dir/op")" \
  "$(field aws_access_key_id "$dir/inst")" "$(field aws_secret_access_key "$dir/inst")" \
  "$agents" "$tasks" >"$dir/out" &
bench=$!
# Control CPU and peak memory while the benchmark runs.
cpu0=$(awk '{print $14+$15}' /proc/$ctl/stat)
wait "$bench"
end=$(date +%s.%N)
cpu1=$(awk '{print $14+$15}' /proc/$ctl/stat)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$ctl/status)
rss=$(awk '/VmRSS/ {print $2}' /proc/$ctl/status)
db=$(du -sk "$dir/data" | cut -f1)
errors=$(grep -c ' ERROR ' "$dir/control.log" || true)

v() { awk -v k="$1" '$1 == k {print $2}' "$dir/out"; }
python3 - "$dir/out" "$agents" "$tasks" "$hwm" "$rss" "$cpu0" "$cpu1" "$start" "$end" "$db" "$errors" <<'PY'
import sys
out, agents, tasks, hwm, rss, cpu0, cpu1, start, end, db, errors = sys.argv[1:]
v = dict(l.split(None, 1) for l in open(out).read().splitlines() if l.strip())
hz = 100
wall = float(end) - float(start)
cpu = (int(cpu1) - int(cpu0)) / hz
print(f"control endpoint, SQLite, {agents} simulated agents, {tasks} tasks (this machine: 2 cores)")
print(f"{'figure':<44} {'value':>12}  target")
rows = [
    ("agents registered", v["agents_registered"], ""),
    ("time to register them all (s)", v["register_all_s"], ""),
    ("scale 0 -> N: time to steady state (s)", v["scale_up_s"], ""),
    ("scale 0 -> N: tasks placed+acked per s", v["scale_up_tasks_per_s"], ">= 2000"),
    ("deployment of N: time to steady state (s)", v["deploy_s"], ""),
    ("deployment of N: tasks replaced per s", v["deploy_tasks_per_s"], ">= 2000"),
    ("tasks on the hosts at the end", v["tasks_on_hosts_after_deploy"], f"= {tasks}"),
    ("API calls measured under load", v["api_calls"], ""),
    ("API p50 (ms), every call", v["api_p50_ms"], ""),
    ("API p99 (ms), every call", v["api_p99_ms"], "<= 50"),
]
for k in sorted(x for x in v if x.startswith("p99_ms.")):
    op = k.split(".", 1)[1]
    rows.append((f"  {op} p50 / p99 (ms), {v['calls.' + op]} calls", f"{v['p50_ms.' + op]} / {v[k]}", ""))
rows += [
    ("control peak RSS (MiB)", f"{int(hwm)/1024:.0f}", "<= 200"),
    ("control RSS at the end (MiB)", f"{int(rss)/1024:.0f}", ""),
    ("control CPU (s) / wall (s)", f"{cpu:.1f} / {wall:.1f}", ""),
    ("database size (MiB)", f"{int(db)/1024:.1f}", ""),
    ("ERROR lines in the control log", errors, "0"),
]
for name, val, target in rows:
    print(f"{name:<44} {val:>12}  {target}")
PY
