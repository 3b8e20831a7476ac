#!/usr/bin/env bash
# Proxy throughput and latency against the real peers, in one run: the same
# backend (the test webapp, in a task on the host network) through
# Dockhand's proxy (the real agent routing to that task), nginx
# (proxy_pass, upstream keep-alive) and HAProxy (http-reuse always), with
# the same number of worker threads each (Dockhand DOCKHAND_PROXY_THREADS,
# nginx worker_processes, HAProxy nbthread).
#
# Rows: worker threads x client connections x response size x client mode
# (keep-alive, or `Connection: close`: a new connection per request). Each
# row runs every proxy in turn (wrk, 1 s warm-up), RUNS times interleaved,
# and prints the median of each figure with Dockhand's ratios to HAProxy
# and nginx. Also prints the agent's peak RSS (it includes the c1000 rows).
#
# TLS rows (TLS=0 turns them off), on a second listener of each proxy
# (Dockhand DOCKHAND_PROXY_TLS_LISTEN, nginx `ssl http2`, HAProxy `ssl alpn
# h2,http/1.1`) with a self-signed ECDSA P-256 certificate for localhost made
# at start: wrk over https (HTTP/1.1), TLS_MODES of
#   keepalive  requests/s on kept-alive TLS connections;
#   close      new connections/s: `Connection: close`, a full handshake per
#              request (wrk would resume its TLS session on each reconnect:
#              a preloaded shim drops it, see wrk_no_resume in lib.sh);
#   resume     `Connection: close` with wrk's session resumption (an
#              abbreviated handshake per request, where the proxy resumes).
# The HTTP/2 row (H2=0 turns it off): h2load over TLS with ALPN h2, H2_CLIENTS
# connections x H2_STREAMS concurrent streams; requests/s from h2load, p50
# and p99 from its per-request log.
#
#   bench/proxy.sh [SECONDS per measurement, default 3] [RUNS, default 3]
#   env THREADS="1 2" CONNS="50 200 1000" SIZES="1024 65536" MODES="keepalive close"
#       TLS=1 TLS_CONNS="50" TLS_SIZES="1024" TLS_MODES="keepalive close resume"
#       H2=1 H2_CLIENTS=10 H2_STREAMS=10 (sizes: TLS_SIZES)
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
tls=${TLS:-1}
tls_conns=${TLS_CONNS:-50}
tls_sizes=${TLS_SIZES:-1024}
tls_modes=${TLS_MODES:-keepalive close resume}
h2=${H2:-1}
h2_clients=${H2_CLIENTS:-10}
h2_streams=${H2_STREAMS:-10}
[ "$tls" = 1 ] || [ "$h2" = 1 ] && any_tls=1 || any_tls=0
ulimit -n "$(ulimit -Hn)"

ensure_docker
need wrk wrk
need nginx nginx
need haproxy haproxy
if [ "$any_tls" = 1 ]; then need openssl openssl; fi
if [ "$tls" = 1 ]; then need cc gcc; fi
if [ "$h2" = 1 ]; then need h2load nghttp2-client; fi
scripts/build-test-image.sh >/dev/null
cargo build --locked --release --quiet --bin dockhand

work=$(mktemp -d /tmp/dockhand-bench.XXXXXX)
backend=$(free_port); api=$(free_port); dh=$(free_port); ng=$(free_port); hp=$(free_port)
dht=$(free_port); ngt=$(free_port); hpt=$(free_port) # the TLS listeners
pids=()
agent_pid="" nginx_pid="" haproxy_pid=""
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
if [ "$any_tls" = 1 ]; then
  tls_test_cert "$work/tls"
  if [ "$tls" = 1 ]; then wrk_no_resume "$work"; fi
  cat >>"$work/ecs.config" <<CONF
DOCKHAND_PROXY_TLS_LISTEN=127.0.0.1:$dht
DOCKHAND_PROXY_TLS_CERT=$work/tls/cert.pem
DOCKHAND_PROXY_TLS_KEY=$work/tls/key.pem
CONF
fi
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
  # The proxy's threads serve the clients; the agent's own runtime (Docker,
  # health checks) gets one worker, idle during the runs.
  DOCKHAND_PROXY_THREADS=$t TOKIO_WORKER_THREADS=1 \
    target/release/dockhand agent --config "$work/ecs.config" 2>>"$work/agent.log" &
  agent_pid=$!
  # The TLS listeners: nginx 1.22 (Debian 12) offers TLS 1.3 only when told
  # and closes a connection after keepalive_requests (default 1000), also an
  # h2 one, which h2load does not reopen; HAProxy has neither limit.
  local ngx_tls="" hap_tls=""
  if [ "$any_tls" = 1 ]; then
    ngx_tls="server {
    listen 127.0.0.1:$ngt ssl http2;
    ssl_certificate $work/tls/cert.pem;
    ssl_certificate_key $work/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }"
    hap_tls="frontend fe_tls
  bind 127.0.0.1:$hpt ssl crt $work/tls/combined.pem alpn h2,http/1.1
  default_backend be"
  fi
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
  $ngx_tls
}
CONF
  nginx -c "$work/nginx.conf" -g 'daemon off;' &
  nginx_pid=$!
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
$hap_tls
backend be
  server s1 127.0.0.1:$backend
CONF
  haproxy -f "$work/haproxy.cfg" -db &
  haproxy_pid=$!
  pids+=($!)
  wait_http "http://127.0.0.1:$dh/" 60
  wait_http "http://127.0.0.1:$ng/" 10
  wait_http "http://127.0.0.1:$hp/" 10
  if [ "$any_tls" = 1 ]; then
    local ca=(--cacert "$work/tls/cert.pem") port name proto
    # Dockhand's TLS listener failing is reported, not fatal: its rows fail.
    wait_http "https://localhost:$dht/" 10 "${ca[@]}" || {
      log "Dockhand's TLS listener 127.0.0.1:$dht does not answer; the agent log ends with:"
      tail -n 20 "$work/agent.log" >&2
    }
    wait_http "https://localhost:$ngt/" 10 "${ca[@]}"
    wait_http "https://localhost:$hpt/" 10 "${ca[@]}"
    for name in dockhand:$dht nginx:$ngt haproxy:$hpt; do
      port=${name#*:}
      proto=$(curl -s -o /dev/null -w '%{http_version}' --max-time 2 --http2 "${ca[@]}" "https://localhost:$port/" || true)
      [ "$proto" = 2 ] || log "warning: ${name%:*} (TLS port $port) did not negotiate h2 with curl (HTTP version: ${proto:-none}; 0 = no answer)"
    done
  fi
  # One warm-up round for the whole rig (caches, the backend's threads),
  # so the first row is not measured on a cold machine.
  for port in "$dh" "$ng" "$hp"; do
    wrk -t"$t" -c50 -d2s "http://127.0.0.1:$port/bytes?n=1024" >/dev/null 2>&1 || true
  done
  if [ "$any_tls" = 1 ]; then
    for port in "$dht" "$ngt" "$hpt"; do
      wrk -t"$t" -c50 -d2s "https://localhost:$port/bytes?n=1024" >/dev/null 2>&1 || true
    done
  fi
}

stop_peers() {
  for p in "${pids[@]}" $agent_pid; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}" $agent_pid; do wait "$p" 2>/dev/null || true; done
  pids=(); agent_pid=""
}

# cpu_ticks NAME: the CPU time (user + system, in clock ticks) used so far
# by that proxy's processes: the agent; HAProxy (one process, its threads
# included); nginx's master and workers.
cpu_ticks() {
  local p ps=() total=0
  case $1 in
    dockhand) ps=("$agent_pid") ;;
    haproxy) ps=("$haproxy_pid") ;;
    nginx) ps=("$nginx_pid" $(pgrep -P "$nginx_pid" || true)) ;;
  esac
  for p in "${ps[@]}"; do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

# timed NAME OUT CMD...: runs CMD with stdout to OUT, and writes the CPU
# time the proxy NAME used meanwhile, in seconds, to OUT.cpu.
timed() {
  local name=$1 out=$2 before after
  shift 2
  before=$(cpu_ticks "$name")
  "$@" >"$out" 2>&1 || true
  after=$(cpu_ticks "$name")
  echo "$(( after - before )) $(getconf CLK_TCK)" | awk '{print $1 / $2}' >"$out.cpu"
}

# measure NAME PORT THREADS CONNS SIZE MODE RUN: one wrk run into a file.
measure() {
  local name=$1 port=$2 t=$3 c=$4 size=$5 mode=$6 run=$7 hdr=()
  [ "$mode" = close ] && hdr=(-H "Connection: close")
  local url="http://127.0.0.1:$port/bytes?n=$size"
  wrk -t"$t" -c"$c" -d1s "${hdr[@]}" "$url" >/dev/null 2>&1 || true
  timed "$name" "$work/wrk-$name-$t-$c-$size-$mode-$run.txt" \
    wrk -t"$t" -c"$c" -d"${secs}s" --latency "${hdr[@]}" "$url"
}

# measure_tls NAME PORT THREADS CONNS SIZE MODE RUN: one wrk run over https.
# Handshake rows run wrk with a thread per core whatever the proxies'
# threads: a client handshake (verifying the certificate's signature)
# costs the client more than the server, so one wrk thread, at 100 % of
# a core, would be the bottleneck and every proxy would show its rate.
measure_tls() {
  local name=$1 port=$2 t=$3 c=$4 size=$5 mode=$6 run=$7 hdr=() pre=() wt=$3
  case $mode in
    close) hdr=(-H "Connection: close"); pre=(env "LD_PRELOAD=$work/wrk-no-resume.so"); wt=$cores ;;
    resume) hdr=(-H "Connection: close"); wt=$cores ;;
  esac
  local url="https://localhost:$port/bytes?n=$size"
  "${pre[@]}" wrk -t"$wt" -c"$c" -d1s "${hdr[@]}" "$url" >/dev/null 2>&1 || true
  timed "$name" "$work/wrk-tls-$name-$t-$c-$size-$mode-$run.txt" \
    "${pre[@]}" wrk -t"$wt" -c"$c" -d"${secs}s" --latency "${hdr[@]}" "$url"
}

# measure_h2 NAME PORT THREADS SIZE RUN: one h2load run (after 1 s of warm-up), its
# summary and its per-request log (start us, status, duration us).
measure_h2() {
  local name=$1 port=$2 t=$3 size=$4 run=$5 out
  out="$work/h2-$name-$t-$size-$run"
  # h2load wants no more threads than clients.
  local ht=$(( t < h2_clients ? t : h2_clients ))
  # The warm-up is a run of its own, so the CPU time measured is the main run's.
  timeout 30 h2load -t"$ht" -c"$h2_clients" -m"$h2_streams" -D 1 "https://localhost:$port/bytes?n=$size" \
    >/dev/null 2>&1 || true
  timed "$name" "$out.txt" \
    timeout $(( secs + 30 )) h2load -t"$ht" -c"$h2_clients" -m"$h2_streams" \
    -D "$secs" --log-file="$out.log" "https://localhost:$port/bytes?n=$size"
}

# One measurement against each proxy in turn: FN DOCKHAND_PORT NGINX_PORT
# HAPROXY_PORT ARGS... RUN. The order rotates with RUN (the last argument),
# so that over three runs each proxy goes first, second and last once: a
# disturbance that follows the order, if there is one, falls on every
# proxy alike.
each_proxy() {
  local fn=$1 names=(dockhand nginx haproxy) ports=("$2" "$3" "$4")
  shift 4
  local run=${!#} k i
  for k in 0 1 2; do
    i=$(( (k + run - 1) % 3 ))
    "$fn" "${names[$i]}" "${ports[$i]}" "$@"
  done
}

cores=$(nproc)
rss_peak_kib=0
for t in $threads_list; do
  start_peers "$t"
  for c in $conns_list; do
    for size in $sizes; do
      for mode in $modes; do
        for run in $(seq 1 "$runs"); do
          log "threads $t, $c connections, $size bytes, $mode, run $run of $runs"
          each_proxy measure "$dh" "$ng" "$hp" "$t" "$c" "$size" "$mode" "$run"
        done
      done
    done
  done
  if [ "$tls" = 1 ]; then
    for c in $tls_conns; do
      for size in $tls_sizes; do
        for mode in $tls_modes; do
          for run in $(seq 1 "$runs"); do
            log "TLS: threads $t, $c connections, $size bytes, $mode, run $run of $runs"
            each_proxy measure_tls "$dht" "$ngt" "$hpt" "$t" "$c" "$size" "$mode" "$run"
          done
        done
      done
    done
  fi
  if [ "$h2" = 1 ]; then
    for size in $tls_sizes; do
      for run in $(seq 1 "$runs"); do
        log "h2: threads $t, $h2_clients connections x $h2_streams streams, $size bytes, run $run of $runs"
        each_proxy measure_h2 "$dht" "$ngt" "$hpt" "$t" "$size" "$run"
      done
    done
  fi
  h=$(awk '/VmHWM/ {print $2}' "/proc/$agent_pid/status")
  [ "$h" -gt "$rss_peak_kib" ] && rss_peak_kib=$h
  stop_peers
done

python3 - "$work" "$secs" "$runs" "$rss_peak_kib" "$threads_list" "$conns_list" "$sizes" "$modes" \
  "$tls" "$tls_conns" "$tls_sizes" "$tls_modes" "$h2" "$h2_clients" "$h2_streams" <<'PY'
import re, sys, os, statistics
work, secs, runs, rss = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
threads, conns, sizes, modes = (a.split() for a in sys.argv[5:9])

def ms(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]

def cpu_us(path, rps):
    """The proxy's CPU time per request in microseconds (the time `timed`
    wrote beside the client's output), or None."""
    try:
        cpu = float(open(path + ".cpu").read())
    except (OSError, ValueError):
        return None
    return cpu * 1e6 / (rps * float(secs)) if rps else None

def fields(path):
    try:
        t = open(path).read()
    except OSError:
        return None
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    if not m:
        return None
    rps = float(m.group(1))
    p50 = ms(re.search(r"\s50%\s+(\S+)", t).group(1))
    p99 = ms(re.search(r"\s99%\s+(\S+)", t).group(1))
    non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", t) or [0, 0])[1])
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    errs = sum(int(x) for x in m.groups()) if m else 0
    return rps, p50, p99, non2xx + errs, cpu_us(path, rps)

def median_of(got):
    """Per figure, the median over the runs that produced one (errors: the sum)."""
    got = [g for g in got if g]
    if not got:
        return None
    med = lambda i: statistics.median(v) if (v := [g[i] for g in got if g[i] is not None]) else None
    return med(0), med(1), med(2), sum(g[3] for g in got), med(4)

def median(name, t, c, size, mode):
    return median_of([fields(os.path.join(work, f"wrk-{name}-{t}-{c}-{size}-{mode}-{r}.txt")) for r in range(1, runs + 1)])

tls_on, h2_on = sys.argv[9] == "1", sys.argv[13] == "1"
tls_conns, tls_sizes, tls_modes = (a.split() for a in sys.argv[10:13])
h2_clients, h2_streams = sys.argv[14], sys.argv[15]

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"

def why(paths):
    """The last line of the first failed run's output, to say why it failed."""
    for p in paths:
        try:
            lines = [l.strip() for l in open(p) if l.strip() and not l.startswith(("progress:", "Warm-up", "Main benchmark", "Stopped all"))]
        except OSError:
            return "no output"
        if any(l.startswith("requests: 0 total") for l in lines):
            proto = [l.split(":", 1)[1].strip() for l in lines if l.startswith("Application protocol:")]
            return ("h2load completed no request; " +
                    (f"it negotiated {proto[0]}" if proto else "no TLS session was established (connect or handshake failed)"))
        errs = [l for l in lines if re.search(r"unable|error|fail|refused|reset|handshake|protocol|timed? ?out", l, re.I)
                and not l.startswith(("requests:", "status codes:", "time ", "req/s", "TLS Protocol"))]
        return (errs or lines or ["no output"])[-1][:150]
    return "?"

def cpu_cols(d, n, h):
    f = lambda v: f"{v:.1f}" if v is not None else "-"
    return f(d[4]), f(h[4]), f(n[4]), ratio(d[4], h[4])

def row(t, c, size, mode, d, n, h, failed):
    if not (d and n and h):
        print(fmt.split(" %9s")[0] % (t, c, size, mode) + " (a run failed)")
        for name, paths in failed.items():
            print(f"     {name}: {why(paths)}")
        return
    print(fmt % (t, c, size, mode, f"{d[0]:.0f}", f"{n[0]:.0f}", f"{h[0]:.0f}",
                 ratio(d[0], h[0]), ratio(d[0], n[0]), f"{d[1]:.2f}", f"{h[1]:.2f}",
                 f"{d[2]:.2f}", f"{h[2]:.2f}", f"{n[2]:.2f}", ratio(d[2], h[2]),
                 *cpu_cols(d, n, h), f"{d[3]}/{n[3]}/{h[3]}"))

print(f"\nwrk GET /bytes?n=SIZE, {secs} s per measurement, median of {runs} runs, {os.cpu_count()} cores; "
      "rps in requests/s, latency in ms; errors = non-2xx + socket errors over all runs; "
      "cpu = the proxy's CPU time (user + system, all its threads and processes) per request, in us: "
      "on a machine the clients and the backend share, rps also depends on how the scheduler splits the cores, "
      "cpu is what each proxy costs")
head = ("thr", "conns", "size", "client", "dockhand", "nginx", "haproxy", "dh/hap", "dh/ngx",
        "p50 dh", "p50 hap", "p99 dh", "p99 hap", "p99 ngx", "p99 dh/hap",
        "cpu dh", "cpu hap", "cpu ngx", "cpu dh/hap", "errors dh/ngx/hap")
fmt = "%-4s %6s %6s %-10s %9s %9s %9s %7s %7s %7s %7s %7s %7s %7s %10s %6s %7s %7s %10s %s"
print(fmt % head)
for t in threads:
    for c in conns:
        for size in sizes:
            for mode in modes:
                d, n, h = (median(x, t, c, size, mode) for x in ("dockhand", "nginx", "haproxy"))
                row(t, c, size, mode, d, n, h, {})
if tls_on:
    print(f"\nTLS: wrk over https (HTTP/1.1, TLS 1.3 where offered; ECDSA P-256 certificate), GET /bytes?n=SIZE, "
          f"{secs} s per measurement, median of {runs} runs; keepalive = requests/s on kept-alive connections; "
          "close = new connections/s, a full handshake per request; resume = new connections/s with "
          f"TLS session resumption (both with wrk on {os.cpu_count()} threads: one thread, busy with the client's "
          "half of each handshake, would cap every proxy at its rate); columns as above")
    print(fmt % head)
    for t in threads:
        for c in tls_conns:
            for size in tls_sizes:
                for mode in tls_modes:
                    paths = {x: [os.path.join(work, f"wrk-tls-{x}-{t}-{c}-{size}-{mode}-{r}.txt") for r in range(1, runs + 1)]
                             for x in ("dockhand", "nginx", "haproxy")}
                    got = {x: [fields(p) for p in ps] for x, ps in paths.items()}
                    d, n, h = (median_of(got[x]) for x in ("dockhand", "nginx", "haproxy"))
                    row(t, c, size, mode, d, n, h,
                        {x: [p for p, g in zip(paths[x], got[x]) if not g] for x in paths if not all(got[x])})

def h2_fields(base):
    """(rps, p50 ms, p99 ms, errors, protocol) of one h2load run, or None."""
    try:
        t = open(base + ".txt").read()
    except OSError:
        return None
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", t)
    if not m or re.search(r"requests: 0 total", t):
        return None
    rps = float(m.group(1))
    proto = (re.search(r"Application protocol: (\S+)", t) or [None, "none"])[1]
    m = re.search(r"requests: .* (\d+) failed, (\d+) errored, (\d+) timeout", t)
    errs = int(m.group(1)) if m else 0  # failed includes errored and timed out
    m = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", t)
    errs += sum(int(x) for x in m.groups()) if m else 0
    try:
        us = sorted(int(l.split("\t")[2]) for l in open(base + ".log") if l.count("\t") >= 2)
    except OSError:
        us = []
    if not us:
        return rps, 0.0, 0.0, errs, cpu_us(base + ".txt", rps), proto
    pick = lambda q: us[min(len(us) - 1, int(q * len(us)))] / 1000
    return rps, pick(0.50), pick(0.99), errs, cpu_us(base + ".txt", rps), proto

if h2_on:
    print(f"\nHTTP/2: h2load over TLS, ALPN h2, {h2_clients} connections x {h2_streams} concurrent streams "
          f"(conns column: connections x streams), GET /bytes?n=SIZE, {secs} s per measurement after 1 s warm-up, "
          f"median of {runs} runs; rps = h2load's req/s; p50/p99 from its per-request log; "
          "errors = failed + non-2xx responses")
    print(fmt % head)
    protos = set()
    for t in threads:
        for size in tls_sizes:
            bases = {x: [os.path.join(work, f"h2-{x}-{t}-{size}-{r}") for r in range(1, runs + 1)]
                     for x in ("dockhand", "nginx", "haproxy")}
            got = {x: [h2_fields(b) for b in bs] for x, bs in bases.items()}
            for x, g in got.items():
                protos |= {(x, f[5]) for f in g if f}
            d, n, h = (median_of([f[:5] if f else None for f in got[x]]) for x in ("dockhand", "nginx", "haproxy"))
            row(t, f"{h2_clients}x{h2_streams}", size, "h2", d, n, h,
                {x: [b + ".txt" for b, g in zip(bases[x], got[x]) if not g] for x in bases if not all(got[x])})
    for x, p in sorted(protos):
        if p != "h2":
            print(f"note: h2load negotiated {p}, not h2, with {x} in some run")

largest = f" (includes the c{max(map(int, conns))} rows)" if conns else ""
print(f"\nagent peak RSS over the whole run{largest}: {rss / 1024:.1f} MiB")
PY
