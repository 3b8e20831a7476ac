#!/usr/bin/env bash
# Builds the test application as a static binary and, when it changed, the
# `dockhand-test/webapp:latest` image (FROM scratch) from it.
#
# Needs a reachable Docker engine (DOCKER_HOST). The image carries the sha256 of
# the binary as a label, so an unchanged binary does not rebuild the image.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${DOCKHAND_TEST_IMAGE:-dockhand-test/webapp:latest}
TARGET=x86_64-unknown-linux-gnu

# An explicit --target keeps these RUSTFLAGS away from the host build's cache.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --release -p webapp --target "$TARGET" --quiet
BIN="target/$TARGET/release/webapp"
SUM=$(sha256sum "$BIN" | cut -d' ' -f1)

have=$(docker image inspect -f '{{ index .Config.Labels "dockhand.test-image.sha256" }}' "$IMAGE" 2>/dev/null || true)
if [ "$have" = "$SUM" ]; then
  echo "test image $IMAGE is up to date"
  exit 0
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$BIN" "$ctx/webapp"
cp tests/webapp/Dockerfile "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BINARY_SHA256=$SUM" -t "$IMAGE" "$ctx" >/dev/null
echo "built test image $IMAGE"
