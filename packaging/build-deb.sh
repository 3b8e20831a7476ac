#!/usr/bin/env bash
# Builds target/debian/dockhand_VERSION_ARCH.deb with dpkg-deb from a staged
# tree: no tools beyond Debian's dpkg.
#
#   packaging/build-deb.sh            # prints the path of the .deb
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
cargo build --locked --release --quiet --bin dockhand

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/dockhand_${version}_${arch}"
install -D -m 0755 target/release/dockhand "$root/usr/bin/dockhand"
install -D -m 0644 systemd/dockhand-agent.service "$root/lib/systemd/system/dockhand-agent.service"
install -D -m 0644 systemd/dockhand-proxy.socket "$root/lib/systemd/system/dockhand-proxy.socket"
install -D -m 0644 systemd/dockhand-proxy-tls.socket "$root/lib/systemd/system/dockhand-proxy-tls.socket"
install -d -m 0755 "$root/etc/dockhand/services"
install -D -m 0644 packaging/ecs.config.example "$root/usr/share/dockhand/ecs.config.example"
install -D -m 0644 examples/hello-world-service.json "$root/usr/share/dockhand/examples/hello-world-service.json"
install -D -m 0755 packaging/user-data.sh "$root/usr/share/dockhand/user-data.sh"
for doc in README.md ARCHITECTURE.md docs/*.md; do
  install -D -m 0644 "$doc" "$root/usr/share/doc/dockhand/$(basename "$doc")"
done

install -d "$root/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"
done
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: dockhand
Version: $version
Architecture: $arch
Maintainer: Dockhand developers <dockhand@example.invalid>
Depends: docker.io | docker-ce | docker-engine
Recommends: curl
Section: admin
Priority: optional
Installed-Size: $size
Homepage: https://example.invalid/dockhand
Description: container supervisor for Docker hosts, with a health-checking proxy
 Dockhand runs a host's containers from ECS task definitions, restarts them,
 and fronts them with an in-process reverse proxy that health-checks every
 task and drains it before it stops, so a new revision rolls out on the same
 host with zero failed requests. Reads /etc/ecs/ecs.config like the ECS agent.
CONTROL

mkdir -p target/debian
out="target/debian/dockhand_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$out" >/dev/null
echo "$out"
