#!/usr/bin/env bash
# Proxy throughput and latency: the same small-response backend measured
# with wrk directly, through Dockhand's proxy (the real agent, routing to a
# task), through nginx (proxy_pass with upstream keep-alive) and through
# HAProxy, in one run. Each proxy gets one worker thread (Dockhand:
# TOKIO_WORKER_THREADS=1; nginx: worker_processes 1; HAProxy: nbthread 1).
# Prints a table with each figure's ratio to HAProxy's.
#
#   bench/proxy.sh [SECONDS per run, default 10] [CONNECTIONS, default 50]
#
# Traffic goes to 127.0.0.1 only; everything started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-env.sh
. bench/lib.sh
secs=${1:-10}
conns=${2:-50}

ensure_docker
need wrk wrk
need nginx nginx
need haproxy haproxy
scripts/build-test-image.sh >/dev/null
cargo build --locked --release --quiet --bin dockhand

work=$(mktemp -d /tmp/dockhand-bench.XXXXXX)
backend=$(free_port); api=$(free_port); dh=$(free_port); ng=$(free_port); hp=$(free_port)
pids=()
finish() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Only the processes started here: a bare `wait` would also wait for the
  # private dockerd that ensure_docker may have started, for ever.
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  remove_bench_containers
  rm -rf "$work"
  stop_private_dockerd
}
trap finish EXIT

# The backend: the test webapp in a task on the host network, so every
# proxy reaches it at the same address with nothing in between.
bench_agent_config "$work" "$api" "$dh"
cat >"$work/services/backend.json" <<JSON
{"serviceName": "backend", "desiredCount": 1,
 "taskDefinition": {"family": "backend", "networkMode": "host",
   "containerDefinitions": [{"name": "web", "image": "dockhand-test/webapp:latest", "memory": 64,
     "portMappings": [{"containerPort": $backend}],
     "environment": [{"name": "PORT", "value": "$backend"}]}]},
 "loadBalancers": [{"containerName": "web", "containerPort": $backend,
   "healthCheck": {"path": "/health", "intervalSeconds": 1, "healthyThresholdCount": 1}}]}
JSON
TOKIO_WORKER_THREADS=1 target/release/dockhand agent --config "$work/ecs.config" 2>"$work/agent.log" &
pids+=($!)
wait_http "http://127.0.0.1:$dh/" 60

cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$backend; keepalive 128; }
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
  nbthread 1
  maxconn 4096
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
wait_http "http://127.0.0.1:$ng/" 10
wait_http "http://127.0.0.1:$hp/" 10

declare -A result
for target in direct:$backend dockhand:$dh nginx:$ng haproxy:$hp; do
  name=${target%%:*}; port=${target##*:}
  wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1 # warm-up
  wrk -t1 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/" >"$work/wrk-$name.txt" 2>&1
  result[$name]=$(wrk_fields "$work/wrk-$name.txt")
done

read -r hp_rps hp_p50 hp_p99 _ <<<"${result[haproxy]}"
printf '\nwrk -t1 -c%s -d%ss, GET / (13-byte body), %s cores\n' "$conns" "$secs" "$(nproc)"
printf '%-10s %10s %9s %9s %8s %12s %12s %12s\n' target req/s p50_ms p99_ms errors "rps/haproxy" "p50/haproxy" "p99/haproxy"
for name in direct dockhand nginx haproxy; do
  read -r rps p50 p99 non2xx errs total <<<"${result[$name]}"
  python3 -c "print('%-10s %10s %9s %9s %8d %12.2f %12.2f %12.2f' % ('$name', '$rps', '$p50', '$p99', $non2xx + $errs, $rps / $hp_rps, $p50 / $hp_p50, $p99 / $hp_p99))"
done
