#!/usr/bin/env bash
# Build the demo apps' image for the demo as pods (deploy/podman/demo.sh):
#   localhost/quiver-demo:<version> and :latest  (deploy/podman/demo.Containerfile)
# The same way deploy/build-images.sh builds the proxy and control-plane images: one release
# build statically linked against glibc (-C target-feature=+crt-static, explicit --target so
# RUSTFLAGS stay off build scripts and proc macros), a build context under
# $CARGO_TARGET_DIR/images/demo (never in the repo), `podman --runtime runc build` FROM scratch.
#
# Needs: cargo, podman and runc (apt-get install -y podman runc), binutils (strip, readelf).
# PODMAN overrides the podman command (default: podman --runtime runc).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

log() { printf '==> %s\n' "$*"; }
die() { echo "build-demo-image: $*" >&2; exit 1; }

. deploy/lib.sh
bin="$bin_dir/quiver-demo"
ctx="$target_dir/images/demo"

static_build quiver-demo

rm -rf "$ctx"
write_etc "$ctx/etc" 1000 demo
strip -o "$ctx/quiver-demo" "$bin"

log "${podman[*]} build -t localhost/quiver-demo:$version -t localhost/quiver-demo:latest"
"${podman[@]}" build --quiet --file "$root/deploy/podman/demo.Containerfile" \
  --label "org.opencontainers.image.version=$version" \
  --tag "localhost/quiver-demo:$version" --tag "localhost/quiver-demo:latest" "$ctx" >/dev/null
bytes=$("${podman[@]}" image inspect --format '{{.Size}}' "localhost/quiver-demo:$version")
awk -v n="localhost/quiver-demo:$version" -v b="$bytes" \
  'BEGIN { printf "%-30s %5.1f MB uncompressed (%d bytes)\n", n, b / 1e6, b }'
