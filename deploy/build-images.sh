#!/usr/bin/env bash
# Build Quiver's container images with podman (docs/deploy.md, "Images"):
#   localhost/quiver-proxy:<version>    and :latest  (deploy/images/proxy.Containerfile)
#   localhost/quiver-control:<version>  and :latest  (deploy/images/control.Containerfile)
# <version> is the workspace's (Cargo.toml, [workspace.package]).
#
# 1. One release build of the three binaries, statically linked against glibc
#    (-C target-feature=+crt-static; this machine has no musl target). The explicit --target
#    keeps RUSTFLAGS off build scripts and proc macros, and puts the artifacts in
#    $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release, apart from the ordinary builds.
# 2. A build context per image under $CARGO_TARGET_DIR/images/ (never in the repo): the
#    stripped binaries, /etc/passwd and /etc/group, and for the proxy /usr/sbin/nft with the
#    shared libraries and dynamic loader ldd finds for it on this (Debian) host, and the
#    /etc/protocols and /etc/services it names protocols and ports with.
# 3. `podman --runtime runc build` of both (crun fails on this kind of kernel), FROM scratch:
#    no registry is needed. Then each image's uncompressed size.
#
# Needs: cargo, podman and runc (apt-get install -y podman runc), nftables (for /usr/sbin/nft),
# netbase (/etc/protocols, /etc/services for nft), binutils (strip, readelf). PODMAN overrides
# the podman command (default: podman --runtime runc).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '==> %s\n' "$*"; }
die() { echo "build-images: $*" >&2; exit 1; }

. deploy/lib.sh
nft=/usr/sbin/nft
[ -x "$nft" ] || die "$nft is missing (the proxy image carries it): install it with: apt-get install -y nftables"
for f in /etc/protocols /etc/services; do
  [ -f "$f" ] || die "$f is missing (nft names protocols and ports with it): install it with: apt-get install -y netbase"
done
images="$target_dir/images"

# --- 1. static binaries ----------------------------------------------------------------------
static_build quiver-proxy quiver-control quiverctl

# --- 2. build contexts -----------------------------------------------------------------------

rm -rf "$images"
proxy_ctx="$images/proxy"
control_ctx="$images/control"
mkdir -p "$proxy_ctx" "$control_ctx"

# Symbols and line tables stay in the target dir's copies (backtraces there); the images get
# stripped ones.
strip -o "$proxy_ctx/quiver-proxy" "$bin_dir/quiver-proxy"
write_etc "$proxy_ctx/etc" 1337 quiver-proxy
# nft names protocols and ports (reading and printing rules) from these, as on the host.
cp /etc/protocols /etc/services "$proxy_ctx/etc/"
# nft, its libraries and the loader at the paths ldd resolves (the loader at its PT_INTERP
# path, /lib64/ld-linux-x86-64.so.2), all copied as files (cp -L), never as symlinks.
mkdir -p "$proxy_ctx/nft/usr/sbin"
cp -L "$nft" "$proxy_ctx/nft/usr/sbin/nft"
libs=$(ldd "$nft" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[ -n "$libs" ] || die "ldd found no libraries for $nft"
for lib in $libs; do
  mkdir -p "$proxy_ctx/nft$(dirname "$lib")"
  cp -L "$lib" "$proxy_ctx/nft$lib"
done

strip -o "$control_ctx/quiver-control" "$bin_dir/quiver-control"
strip -o "$control_ctx/quiverctl" "$bin_dir/quiverctl"
write_etc "$control_ctx/etc" 1338 quiver-control
mkdir -p "$control_ctx/dirs/tmp" "$control_ctx/dirs/var/lib" "$control_ctx/data/quiver"
chmod 1777 "$control_ctx/dirs/tmp"
chmod 0700 "$control_ctx/data/quiver"

# --- 3. images -------------------------------------------------------------------------------
build() { # NAME CONTAINERFILE CONTEXT
  log "${podman[*]} build -t localhost/$1:$version -t localhost/$1:latest"
  "${podman[@]}" build --quiet --file "$root/$2" \
    --label "org.opencontainers.image.version=$version" \
    --tag "localhost/$1:$version" --tag "localhost/$1:latest" "$3" >/dev/null
}
build quiver-proxy deploy/images/proxy.Containerfile "$proxy_ctx"
build quiver-control deploy/images/control.Containerfile "$control_ctx"

for name in quiver-proxy quiver-control; do
  bytes=$("${podman[@]}" image inspect --format '{{.Size}}' "localhost/$name:$version")
  awk -v n="localhost/$name:$version" -v b="$bytes" \
    'BEGIN { printf "%-30s %5.1f MB uncompressed (%d bytes)\n", n, b / 1e6, b }'
done
