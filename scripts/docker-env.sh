# Sourced by the test, demo and bench scripts: makes sure a Docker engine
# answers on DOCKER_HOST, and exports DOCKER_HOST.
#
# Installs Debian's docker.io when dockerd is missing. When no engine answers,
# starts a private dockerd with its own data-root, exec-root, pidfile and
# socket under a temporary directory, and stops it when the calling script
# exits, also on failure (an EXIT trap).

log() { printf '== %s\n' "$*" >&2; }

_dockhand_private_dir=""
stop_private_dockerd() {
  [ -n "$_dockhand_private_dir" ] || return 0
  local pid
  if [ -f "$_dockhand_private_dir/docker.pid" ]; then
    pid=$(cat "$_dockhand_private_dir/docker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Mounts left under the data root would make rm fail; unmount first.
  grep -o " $_dockhand_private_dir[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$_dockhand_private_dir" 2>/dev/null || true
  _dockhand_private_dir=""
}

ensure_docker() {
  if ! command -v dockerd >/dev/null 2>&1; then
    log "installing docker.io (Debian's Docker engine)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
  fi
  if docker info >/dev/null 2>&1; then
    export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}
    return 0
  fi
  _dockhand_private_dir=$(mktemp -d /tmp/dockhand-docker.XXXXXX)
  trap stop_private_dockerd EXIT
  log "no Docker engine answers on ${DOCKER_HOST:-the default socket}; starting a private dockerd in $_dockhand_private_dir"
  dockerd \
    --data-root "$_dockhand_private_dir/data" \
    --exec-root "$_dockhand_private_dir/exec" \
    --pidfile "$_dockhand_private_dir/docker.pid" \
    --host "unix://$_dockhand_private_dir/docker.sock" \
    >"$_dockhand_private_dir/dockerd.log" 2>&1 &
  export DOCKER_HOST="unix://$_dockhand_private_dir/docker.sock"
  for _ in $(seq 1 150); do
    docker info >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! docker info >/dev/null 2>&1; then
    log "private dockerd did not come up; its log:"
    cat "$_dockhand_private_dir/dockerd.log" >&2
    return 1
  fi
}
