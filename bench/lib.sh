# Shared by the bench scripts: a release agent in a temporary directory,
# free ports, wrk output parsing. Sourced after scripts/docker-env.sh.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  log "installing $2"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# bench_agent_config DIR API_PORT PROXY_PORT: writes DIR/ecs.config.
bench_agent_config() {
  mkdir -p "$1/services"
  cat >"$1/ecs.config" <<CONF
ECS_CLUSTER=bench
ECS_DATADIR=$1/data
DOCKHAND_SERVICES_DIR=$1/services
DOCKER_HOST=$DOCKER_HOST
DOCKHAND_API_LISTEN=127.0.0.1:$2
DOCKHAND_PROXY_LISTEN=127.0.0.1:$3
ECS_IMAGE_PULL_BEHAVIOR=prefer-cached
ECS_CONTAINER_STOP_TIMEOUT=5s
CONF
}

remove_bench_containers() {
  local ids
  ids=$(docker ps -aq --filter label=com.amazonaws.ecs.cluster=bench)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
}

# wait_http URL SECONDS [CURL ARGS...]: until URL answers 200.
wait_http() {
  local deadline=$(( $(date +%s) + $2 ))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${@:3}" "$1")" = 200 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out waiting for $1" >&2; return 1; }
    sleep 0.1
  done
}

# wrk_field FILE: prints "rps p50_ms p99_ms non2xx socket_errors" from wrk --latency output.
wrk_fields() {
  python3 - "$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", t).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", t).group(1))
non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", t) or [0, 0])[1])
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errs = sum(int(x) for x in m.groups()) if m else 0
total = int(re.search(r"(\d+) requests in", t).group(1))
print(f"{rps:.0f} {p50:.2f} {p99:.2f} {non2xx} {errs} {total}")
PY
}

# tls_test_cert DIR: a self-signed ECDSA P-256 certificate for localhost
# (SAN DNS:localhost, IP:127.0.0.1), valid 2 days: DIR/cert.pem, DIR/key.pem
# (PKCS#8) and DIR/combined.pem (certificate then key: HAProxy's `crt`).
tls_test_cert() {
  local out
  mkdir -p "$1"
  out=$(openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$1/key.pem" -out "$1/cert.pem" 2>&1) || { echo "$out" >&2; return 1; }
  cat "$1/cert.pem" "$1/key.pem" >"$1/combined.pem"
  chmod 600 "$1/key.pem" "$1/combined.pem"
}

# wrk_no_resume DIR: builds DIR/wrk-no-resume.so, an LD_PRELOAD shim for a
# wrk linked to libssl. wrk keeps one SSL object per connection slot and,
# after `Connection: close`, reconnects with SSL_clear, which keeps the
# session (its client cache is on): every handshake after the first is a
# resumption. The shim drops that session before each handshake starts, so
# each connection is a full handshake (certificate signature included).
wrk_no_resume() {
  cat >"$1/wrk-no-resume.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_in_before(const SSL *s);
int SSL_set_session(SSL *s, SSL_SESSION *session);
int SSL_connect(SSL *s) {
  static int (*real)(SSL *);
  if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
  /* Only before the handshake: wrk calls SSL_connect again while it is in
     progress (non-blocking sockets). */
  if (SSL_in_before(s)) SSL_set_session(s, 0);
  return real(s);
}
C
  cc -shared -fPIC -O2 -o "$1/wrk-no-resume.so" "$1/wrk-no-resume.c" -ldl
  case $(ldd "$(command -v wrk)" 2>/dev/null) in
    *libssl*) ;;
    *) log "warning: wrk is not linked to a shared libssl; the no-resumption shim has no effect" ;;
  esac
}
