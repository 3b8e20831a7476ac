#!/usr/bin/env bash
# Proxy throughput and latency against the real peers, in one run: the same
# backend (the test webapp, in a task on the host network) through
# Dockhand's proxy (the real agent routing to that task), nginx
# (proxy_pass, upstream keep-alive) and HAProxy (http-reuse always), with
# the same number of worker threads each (Dockhand TOKIO_WORKER_THREADS,
# nginx worker_processes, HAProxy nbthread).
#
# Rows: worker threads x client connections x response size x client mode
# (keep-alive, or `Connection: close`: a new connection per request). Each
# row runs every proxy in turn (wrk, 1 s warm-up), RUNS times interleaved,
# and prints the median of each figure with Dockhand's ratios to HAProxy
# and nginx. Also prints the agent's peak RSS (it includes the c1000 rows).
#
#   bench/proxy.sh [SECONDS per measurement, default 3] [RUNS, default 3]
#   env THREADS="1 2" CONNS="50 200 1000" SIZES="1024 65536" MODES="keepalive close"
#
# Traffic goes to 127.0.0.1 only; everything started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-env.sh
. bench/lib.sh
secs=${1:-3}
runs=${2:-3}
threads_list=${THREADS:-1 2}
conns_list=${CONNS:-50 200 1000}
sizes=${SIZES:-1024 65536}
modes=${MODES:-keepalive close}
ulimit -n "$(ulimit -Hn)"

ensure_docker
need wrk wrk
need nginx nginx
need haproxy haproxy
scripts/build-test-image.sh >/dev/null
cargo build --locked --release --quiet --bin dockhand

work=$(mktemp -d /tmp/dockhand-bench.XXXXXX)
backend=$(free_port); api=$(free_port); dh=$(free_port); ng=$(free_port); hp=$(free_port)
pids=()
agent_pid=""
finish() {
  for p in "${pids[@]}" $agent_pid; do kill "$p" 2>/dev/null || true; done
  # Only the processes started here: a bare `wait` would also wait for the
  # private dockerd that ensure_docker may have started, for ever.
  for p in "${pids[@]}" $agent_pid; do wait "$p" 2>/dev/null || true; done
  remove_bench_containers
  rm -rf "$work"
  stop_private_dockerd
}
trap finish EXIT

# The backend: the test webapp in a task on the host network, so every
# proxy reaches it at the same address with nothing in between.
bench_agent_config "$work" "$api" "$dh"
# wrk opens every connection from 127.0.0.1: the per-client cap (a
# defence nginx and HAProxy are not configured with here) is lifted.
echo "DOCKHAND_PROXY_MAX_CONNECTIONS_PER_CLIENT=100000" >>"$work/ecs.config"
cat >"$work/services/backend.json" <<JSON
{"serviceName": "backend", "desiredCount": 1,
 "taskDefinition": {"family": "backend", "networkMode": "host",
   "containerDefinitions": [{"name": "web", "image": "dockhand-test/webapp:latest", "memory": 256,
     "portMappings": [{"containerPort": $backend}],
     "environment": [{"name": "PORT", "value": "$backend"}]}]},
 "loadBalancers": [{"containerName": "web", "containerPort": $backend,
   "healthCheck": {"path": "/health", "intervalSeconds": 5, "healthyThresholdCount": 1}}]}
JSON

# start_peers THREADS: Dockhand, nginx and HAProxy with that many threads.
start_peers() {
  local t=$1
  TOKIO_WORKER_THREADS=$t target/release/dockhand agent --config "$work/ecs.config" 2>>"$work/agent.log" &
  agent_pid=$!
  cat >"$work/nginx.conf" <<CONF
worker_processes $t;
worker_rlimit_nofile 20000;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 8192; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$backend; keepalive 1024; }
  server {
    listen 127.0.0.1:$ng;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
  nginx -c "$work/nginx.conf" -g 'daemon off;' &
  pids+=($!)
  cat >"$work/haproxy.cfg" <<CONF
global
  nbthread $t
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$hp
  default_backend be
backend be
  server s1 127.0.0.1:$backend
CONF
  haproxy -f "$work/haproxy.cfg" -db &
  pids+=($!)
  wait_http "http://127.0.0.1:$dh/" 60
  wait_http "http://127.0.0.1:$ng/" 10
  wait_http "http://127.0.0.1:$hp/" 10
  # One warm-up round for the whole rig (caches, the backend's threads),
  # so the first row is not measured on a cold machine.
  for port in "$dh" "$ng" "$hp"; do
    wrk -t"$t" -c50 -d2s "http://127.0.0.1:$port/bytes?n=1024" >/dev/null 2>&1 || true
  done
}

stop_peers() {
  for p in "${pids[@]}" $agent_pid; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}" $agent_pid; do wait "$p" 2>/dev/null || true; done
  pids=(); agent_pid=""
}

# measure NAME PORT THREADS CONNS SIZE MODE RUN: one wrk run into a file.
measure() {
  local name=$1 port=$2 t=$3 c=$4 size=$5 mode=$6 run=$7 hdr=()
  [ "$mode" = close ] && hdr=(-H "Connection: close")
  local url="http://127.0.0.1:$port/bytes?n=$size"
  wrk -t"$t" -c"$c" -d1s "${hdr[@]}" "$url" >/dev/null 2>&1 || true
  wrk -t"$t" -c"$c" -d"${secs}s" --latency "${hdr[@]}" "$url" \
    >"$work/wrk-$name-$t-$c-$size-$mode-$run.txt" 2>&1 || true
}

rss_peak_kib=0
for t in $threads_list; do
  start_peers "$t"
  for c in $conns_list; do
    for size in $sizes; do
      for mode in $modes; do
        for run in $(seq 1 "$runs"); do
          log "threads $t, $c connections, $size bytes, $mode, run $run of $runs"
          measure dockhand "$dh" "$t" "$c" "$size" "$mode" "$run"
          measure nginx "$ng" "$t" "$c" "$size" "$mode" "$run"
          measure haproxy "$hp" "$t" "$c" "$size" "$mode" "$run"
        done
      done
    done
  done
  h=$(awk '/VmHWM/ {print $2}' "/proc/$agent_pid/status")
  [ "$h" -gt "$rss_peak_kib" ] && rss_peak_kib=$h
  stop_peers
done

python3 - "$work" "$secs" "$runs" "$rss_peak_kib" "$threads_list" "$conns_list" "$sizes" "$modes" <<'PY'
import re, sys, os, statistics
work, secs, runs, rss = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
threads, conns, sizes, modes = (a.split() for a in sys.argv[5:9])

def ms(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]

def fields(path):
    t = open(path).read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    if not m:
        return None
    rps = float(m.group(1))
    p50 = ms(re.search(r"\s50%\s+(\S+)", t).group(1))
    p99 = ms(re.search(r"\s99%\s+(\S+)", t).group(1))
    non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", t) or [0, 0])[1])
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    errs = sum(int(x) for x in m.groups()) if m else 0
    return rps, p50, p99, non2xx + errs

def median(name, t, c, size, mode):
    got = [fields(os.path.join(work, f"wrk-{name}-{t}-{c}-{size}-{mode}-{r}.txt")) for r in range(1, runs + 1)]
    got = [g for g in got if g]
    if not got:
        return None
    return tuple(statistics.median(g[i] for g in got) for i in range(3)) + (sum(g[3] for g in got),)

print(f"\nwrk GET /bytes?n=SIZE, {secs} s per measurement, median of {runs} runs, {os.cpu_count()} cores; "
      "rps in requests/s, latency in ms; errors = non-2xx + socket errors over all runs")
head = ("thr", "conns", "size", "client", "dockhand", "nginx", "haproxy", "dh/hap", "dh/ngx",
        "p50 dh", "p50 hap", "p99 dh", "p99 hap", "p99 ngx", "p99 dh/hap", "errors dh/ngx/hap")
fmt = "%-4s %6s %6s %-10s %9s %9s %9s %7s %7s %7s %7s %7s %7s %7s %10s %s"
print(fmt % head)
for t in threads:
    for c in conns:
        for size in sizes:
            for mode in modes:
                d, n, h = (median(x, t, c, size, mode) for x in ("dockhand", "nginx", "haproxy"))
                if not (d and n and h):
                    print(fmt % (t, c, size, mode) + " (a run failed)")
                    continue
                print(fmt % (t, c, size, mode, f"{d[0]:.0f}", f"{n[0]:.0f}", f"{h[0]:.0f}",
                             f"{d[0]/h[0]:.2f}", f"{d[0]/n[0]:.2f}", f"{d[1]:.2f}", f"{h[1]:.2f}",
                             f"{d[2]:.2f}", f"{h[2]:.2f}", f"{n[2]:.2f}", f"{d[2]/h[2]:.2f}",
                             f"{d[3]}/{n[3]}/{h[3]}"))
print(f"\nagent peak RSS over the whole run (includes the c{max(map(int, conns))} rows): {rss / 1024:.1f} MiB")
PY
