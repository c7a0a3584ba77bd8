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

target=x86_64-unknown-linux-gnu
read -r -a podman <<< "${PODMAN:-podman --runtime runc}"
command -v "${podman[0]}" >/dev/null || die "podman is missing: install it with: apt-get install -y podman runc"
command -v strip >/dev/null && command -v readelf >/dev/null || die "strip or readelf is missing: install it with: apt-get install -y binutils"

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version under [workspace.package] in Cargo.toml"

target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
bin="$target_dir/$target/release/quiver-demo"
ctx="$target_dir/images/demo"

# Exactly deploy/build-images.sh's command (the same packages, so the same feature set): after
# it, this is a no-op rather than a second release build of every dependency.
log "cargo build --release --target $target (static glibc: -C target-feature=+crt-static)"
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --release --target "$target" -p quiver-proxy -p quiver-control -p quiver-demo --bins
if readelf -lW "$bin" | grep -q 'Requesting program interpreter' || readelf -dW "$bin" | grep -q '(NEEDED)'; then
  die "$bin is not statically linked"
fi

rm -rf "$ctx"
mkdir -p "$ctx/etc"
strip -o "$ctx/quiver-demo" "$bin"
printf 'root:x:0:0:root:/root:/sbin/nologin\ndemo:x:1000:1000::/nonexistent:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' > "$ctx/etc/passwd"
printf 'root:x:0:\ndemo:x:1000:\nnogroup:x:65534:\n' > "$ctx/etc/group"
chmod 0644 "$ctx/etc/passwd" "$ctx/etc/group"

log "${podman[*]} build -t localhost/quiver-demo:$version -t localhost/quiver-demo:latest"
"${podman[@]}" build --quiet --file "$root/deploy/podman/demo.Containerfile" \
  --label "org.opencontainers.image.version=$version" \
  --tag "localhost/quiver-demo:$version" --tag "localhost/quiver-demo:latest" "$ctx" >/dev/null
bytes=$("${podman[@]}" image inspect --format '{{.Size}}' "localhost/quiver-demo:$version")
awk -v n="localhost/quiver-demo:$version" -v b="$bytes" \
  'BEGIN { printf "%-30s %5.1f MB uncompressed (%d bytes)\n", n, b / 1e6, b }'
