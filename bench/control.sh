#!/usr/bin/env bash
# The control endpoint under load, three ways, printed side by side:
#   sqlite     one `dockhand control` on its SQLite file (the default)
#   postgres   one `dockhand control` on a private PostgreSQL server
#   3 replicas three `dockhand control` on that PostgreSQL, agents spread
# Each run: AGENTS simulated agents holding sessions and reporting (the real
# protocol over loopback; examples/control_bench.rs), one service scaled
# from 0 to TASKS tasks, then a deployment of all of them, an operator
# reading the API meanwhile. Prints API latency under that load, tasks
# placed and acknowledged per second, time to steady state, control RSS and
# CPU; for 3 replicas also the time another replica takes over the
# scheduler after kill -9 of the leader. Everything runs on this machine.
#
#   bench/control.sh [AGENTS [TASKS [MODES]]]   (default 1000 10000 "sqlite postgres replicas")
#   env CTL_LOG=debug KEEP_LOGS=DIR: the control processes' logs (each
#   scheduling pass with its load/plan/write times) copied to DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "--- $*" >&2; }
. bench/lib.sh

agents=${1:-1000}
tasks=${2:-10000}
modes=${3:-sqlite postgres replicas}
# Two connections per agent on each side.
ulimit -n "$(ulimit -Hn)"

log "building (release)"
cargo build --release --quiet --bin dockhand --example control_bench
bin=target/release/dockhand
work=$(mktemp -d /tmp/dockhand-bench-control.XXXXXX)
pgbin=""
pgdir=""
cleanup() {
  # The control processes were started in $(...) subshells: their pids are
  # in files.
  for f in "$work"/*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.5
  if [ -n "$pgbin" ]; then
    runuser -u postgres -- "$pgbin/pg_ctl" -w -m immediate -D "$pgdir/data" stop >/dev/null 2>&1 || true
    rm -rf "$pgdir"
  fi
  [ -z "${KEEP_LOGS:-}" ] || cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
field() { awk -v k="$1" '$1 == k {print $3}' "$2"; }
# Keys, shared by every run.
cat >"$work/keys.conf" <<CONF
DOCKHAND_CONTROL_CREDENTIALS=$work/credentials
CONF
$bin control --config "$work/keys.conf" credentials new --role operator >"$work/op" 2>/dev/null
$bin control --config "$work/keys.conf" credentials new --role instance --cluster bench >"$work/inst" 2>/dev/null

start_postgres() {
  need psql postgresql
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  pgport=$(free_port)
  # Its own directory: $work (0700, with the keys) is not for postgres to read.
  pgdir=$(mktemp -d /tmp/dockhand-bench-pg.XXXXXX)
  chown postgres:postgres "$pgdir"
  runuser -u postgres -- "$pgbin/initdb" -A trust -U postgres --no-sync -D "$pgdir/data" >/dev/null
  runuser -u postgres -- "$pgbin/pg_ctl" -w -D "$pgdir/data" -l "$pgdir/server.log" \
    -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
}

# start_control NAME [DATABASE]: prints the port; the pid is in $work/NAME.pid.
start_control() {
  local name=$1 db=${2:-} port
  port=$(free_port)
  cat >"$work/$name.conf" <<CONF
DOCKHAND_CONTROL_LISTEN=127.0.0.1:$port
DOCKHAND_CONTROL_DATADIR=$work/$name-data
DOCKHAND_CONTROL_CREDENTIALS=$work/credentials
DOCKHAND_CONTROL_LOG_LEVEL=${CTL_LOG:-warn}
CONF
  [ -z "$db" ] || echo "DOCKHAND_CONTROL_DATABASE=$db" >>"$work/$name.conf"
  # Its stdout is not the pipe of the caller's $(...), which would wait for it.
  $bin control --config "$work/$name.conf" >/dev/null 2>"$work/$name.log" &
  echo $! >"$work/$name.pid"
  wait_http "http://127.0.0.1:$port/health" 30
  echo "$port"
}

cpu_of() { awk '{print $14+$15}' "/proc/$1/stat"; }

# run MODE: one benchmark run; figures into $work/MODE.out.
run() {
  local mode=$1 names=() ports=() db=""
  case $mode in
    sqlite) names=(sqlite) ;;
    postgres) [ -n "$pgbin" ] || start_postgres; db="postgres://postgres@127.0.0.1:$pgport/bench_pg"
              "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -qc "CREATE DATABASE bench_pg" ; names=(pg) ;;
    replicas) [ -n "$pgbin" ] || start_postgres; db="postgres://postgres@127.0.0.1:$pgport/bench_r3"
              "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -qc "CREATE DATABASE bench_r3"; names=(r1 r2 r3) ;;
  esac
  for n in "${names[@]}"; do
    ports+=("$(start_control "$n" "$db")")
    [ ${#ports[@]} -gt 1 ] || sleep 0.5  # the first one migrates
  done
  local addrs
  addrs=$(printf '127.0.0.1:%s,' "${ports[@]}"); addrs=${addrs%,}
  log "$mode: $agents agents, a service of $tasks tasks, then a deployment of all of them"
  local cpu0=0 cpu1=0 start end
  for n in "${names[@]}"; do cpu0=$((cpu0 + $(cpu_of "$(cat "$work/$n.pid")"))); done
  start=$(date +%s.%N)
  target/release/examples/control_bench "$addrs" \
    "$(field aws_access_key_id "$work/op")" "$(field aws_secret_access_key "$work/op")" \
    "$(field aws_access_key_id "$work/inst")" "$(field aws_secret_access_key "$work/inst")" \
    "$agents" "$tasks" >"$work/$mode.out"
  end=$(date +%s.%N)
  local hwm=0 errors=0
  for n in "${names[@]}"; do
    local pid; pid=$(cat "$work/$n.pid")
    cpu1=$((cpu1 + $(cpu_of "$pid")))
    local h; h=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    [ "$h" -gt "$hwm" ] && hwm=$h
    errors=$((errors + $(grep -c ' ERROR ' "$work/$n.log" || true)))
  done
  {
    echo "peak_rss_mib $((hwm / 1024))"
    echo "cpu_s $(( (cpu1 - cpu0) / 100 ))"
    echo "wall_s $(python3 -c "print(f'{$end - $start:.1f}')")"
    echo "errors $errors"
  } >>"$work/$mode.out"
  if [ "$mode" = replicas ]; then
    # kill -9 of the scheduling replica: how long until another schedules.
    local leader="" i
    for i in 0 1 2; do
      curl -s "http://127.0.0.1:${ports[$i]}/metrics" | grep -qx 'dockhand_control_leader 1' && leader=$i
    done
    local t0 t1 took=""
    kill -9 "$(cat "$work/${names[$leader]}.pid")"
    t0=$(date +%s.%N)
    for _ in $(seq 1 300); do
      for i in 0 1 2; do
        [ "$i" = "$leader" ] && continue
        if curl -s "http://127.0.0.1:${ports[$i]}/metrics" | grep -qx 'dockhand_control_leader 1'; then
          t1=$(date +%s.%N); took=$(python3 -c "print(f'{$t1 - $t0:.1f}')"); break 2
        fi
      done
      sleep 0.1
    done
    echo "failover_s ${took:-none}" >>"$work/$mode.out"
  fi
  for n in "${names[@]}"; do kill "$(cat "$work/$n.pid")" 2>/dev/null || true; done
  sleep 1
}

for m in $modes; do run "$m"; done

python3 - "$work" "$agents" "$tasks" $modes <<'PY'
import sys, os
work, agents, tasks, *modes = sys.argv[1:]
runs = {}
for m in modes:
    runs[m] = dict(l.split(None, 1) for l in open(os.path.join(work, m + ".out")).read().splitlines() if l.strip())
title = {"sqlite": "SQLite", "postgres": "PostgreSQL", "replicas": "PG, 3 replicas"}
print(f"control endpoint: {agents} simulated agents, {tasks} tasks (this machine: 2 cores, everything on it)")
print(f"{'figure':<42}" + "".join(f"{title[m]:>17}" for m in modes) + "  target")
def row(name, key, target="", fmt=lambda v: v):
    vals = [fmt(runs[m][key]) if key in runs[m] else "-" for m in modes]
    print(f"{name:<42}" + "".join(f"{v:>17}" for v in vals) + f"  {target}")
row("time to register the agents (s)", "register_all_s")
row("scale 0 -> N: time to steady state (s)", "scale_up_s")
row("scale 0 -> N: tasks placed+acked per s", "scale_up_tasks_per_s", ">= 2000")
row("deployment of N: time to steady state (s)", "deploy_s")
row("deployment of N: tasks replaced per s", "deploy_tasks_per_s", ">= 2000")
row("tasks on the hosts at the end", "tasks_on_hosts_after_deploy", f"= {tasks}")
row("API calls measured under load", "api_calls")
row("API p50 (ms), every call", "api_p50_ms")
row("API p99 (ms), every call", "api_p99_ms", "<= 50")
ops = sorted({k.split(".", 1)[1] for m in modes for k in runs[m] if k.startswith("p99_ms.")})
for op in ops:
    vals = []
    for m in modes:
        r = runs[m]
        vals.append(f"{r.get('p50_ms.' + op, '-')}/{r.get('p99_ms.' + op, '-')}")
    print(f"{'  ' + op + ' p50/p99 (ms)':<42}" + "".join(f"{v:>17}" for v in vals))
row("control peak RSS (MiB, largest replica)", "peak_rss_mib", "<= 200")
row("control CPU (s) / wall (s)", "cpu_s")
row("  wall (s)", "wall_s")
row("ERROR lines in the control logs", "errors", "0")
row("failover after kill -9 of the leader (s)", "failover_s", "<= 10")
PY
