#!/usr/bin/env bash
# Package test: builds the .deb, installs it on this (throwaway, test)
# machine with dpkg -i, checks its contents and behaviour, verifies the
# systemd units, and purges it. Restores any /etc/ecs/ecs.config it found.
# Run by scripts/test.sh as root.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0; failed=0
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@" >/tmp/dockhand-package-check.log 2>&1; then
    passed=$((passed + 1)); echo "ok   $what"
  else
    failed=$((failed + 1)); echo "FAIL $what"; sed 's/^/     /' /tmp/dockhand-package-check.log | head -20
  fi
}

if [ "$(id -u)" != 0 ]; then echo "package test needs root (dpkg -i)"; exit 1; fi
deb=$(packaging/build-deb.sh)
backup=""
if [ -e /etc/ecs/ecs.config ]; then backup=$(mktemp); cp -p /etc/ecs/ecs.config "$backup"; fi
restore() {
  dpkg -P dockhand >/dev/null 2>&1 || true
  if [ -n "$backup" ]; then mkdir -p /etc/ecs; cp -p "$backup" /etc/ecs/ecs.config; rm -f "$backup"; fi
}
trap restore EXIT
dpkg -P dockhand >/dev/null 2>&1 || true
rm -f /etc/ecs/ecs.config

# 1. The article's flow: user data writes the config, then the package installs.
check "user-data.sh writes the article's ecs.config" \
  env CLUSTER=my-ecs-cluster DOCKHAND_CONFIG_ONLY=yes bash packaging/user-data.sh ECS_RESERVED_MEMORY=128
check "ecs.config has the cluster line and the extra key" \
  grep -qx 'ECS_CLUSTER=my-ecs-cluster' /etc/ecs/ecs.config
check "dpkg -i installs the package" dpkg -i "$deb"
check "the user-data config is left as it was" \
  sh -c 'test "$(cat /etc/ecs/ecs.config)" = "$(printf "ECS_CLUSTER=my-ecs-cluster\nECS_RESERVED_MEMORY=128")"'
for f in /usr/bin/dockhand /lib/systemd/system/dockhand-agent.service /lib/systemd/system/dockhand-proxy.socket \
         /lib/systemd/system/dockhand-proxy-tls.socket \
         /usr/share/doc/dockhand/README.md /usr/share/doc/dockhand/configuration.md /usr/share/dockhand/user-data.sh; do
  check "installed $f" test -f "$f"
done
check "installed the empty services directory" test -d /etc/dockhand/services
check "the installed binary checks the installed config" \
  sh -c '/usr/bin/dockhand config check | grep -q "^ECS_CLUSTER  *my-ecs-cluster  *# /etc/ecs/ecs.config:1"'
managed=$(mktemp -d)
check "user-data.sh writes a managed host's config (control URL, instance key)" \
  env DOCKHAND_ROOT="$managed" CONTROL_URL=https://control.internal:8443 INSTANCE_KEY_ID=AKIAEXAMPLEEXAMPLE00 \
      INSTANCE_KEY_SECRET=secret-secret DOCKHAND_CONFIG_ONLY=yes bash packaging/user-data.sh
check "the managed config is valid, readable by root only, and its secret is not printed" \
  sh -c "test \"\$(stat -c %a $managed/etc/ecs/ecs.config)\" = 600 \
         && /usr/bin/dockhand config check --config $managed/etc/ecs/ecs.config >$managed/out \
         && grep -q '^ECS_BACKEND_HOST  *https://control.internal:8443' $managed/out \
         && grep -q '^DOCKHAND_EC2_METADATA  *true' $managed/out \
         && ! grep -q secret-secret $managed/out"
rm -rf "$managed"
check "the agent unit is enabled" test -L /etc/systemd/system/multi-user.target.wants/dockhand-agent.service
check "the proxy socket is enabled" test -L /etc/systemd/system/sockets.target.wants/dockhand-proxy.socket
check "the TLS socket is installed but left for the operator to enable" \
  test ! -e /etc/systemd/system/sockets.target.wants/dockhand-proxy-tls.socket
check "systemd-analyze verify accepts the units" \
  sh -c 'out=$(systemd-analyze verify /lib/systemd/system/dockhand-agent.service /lib/systemd/system/dockhand-proxy.socket /lib/systemd/system/dockhand-proxy-tls.socket 2>&1); echo "$out"; ! echo "$out" | grep -i dockhand'
check "the unit runs config check first and stops restarting on exit 78" \
  sh -c 'grep -q "^ExecStartPre=/usr/bin/dockhand config check" /lib/systemd/system/dockhand-agent.service && grep -q "^RestartPreventExitStatus=78" /lib/systemd/system/dockhand-agent.service && grep -q "^Type=notify" /lib/systemd/system/dockhand-agent.service'
check "the package depends on a Docker engine" \
  sh -c 'dpkg-query -W -f="\${Depends}" dockhand | grep -q "docker.io | docker-ce | docker-engine"'
mkdir -p /var/lib/dockhand && echo keep >/var/lib/dockhand/state-marker
check "dpkg -P removes the package" dpkg -P dockhand
check "purge removed the binary and units" \
  sh -c '! test -e /usr/bin/dockhand && ! test -e /lib/systemd/system/dockhand-agent.service && ! test -L /etc/systemd/system/multi-user.target.wants/dockhand-agent.service'
check "purge kept the user-data config (not the package's)" test -f /etc/ecs/ecs.config
check "purge kept ECS_DATADIR" test -f /var/lib/dockhand/state-marker

# 2. No config before install: the example is installed, and purged if untouched.
rm -f /etc/ecs/ecs.config
check "dpkg -i without a config" dpkg -i "$deb"
check "the example config was installed and is valid" /usr/bin/dockhand config check
check "dpkg -P with DOCKHAND_PURGE_DATA=yes" env DOCKHAND_PURGE_DATA=yes dpkg -P dockhand
check "purge removed the untouched example config" sh -c '! test -e /etc/ecs/ecs.config'
check "purge with DOCKHAND_PURGE_DATA=yes removed ECS_DATADIR" sh -c '! test -e /var/lib/dockhand'

echo "package: $passed passed, $failed failed"
[ "$failed" = 0 ]
