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

target=x86_64-unknown-linux-gnu
read -r -a podman <<< "${PODMAN:-podman --runtime runc}"
command -v "${podman[0]}" >/dev/null || die "podman is missing: install it with: apt-get install -y podman runc"
nft=/usr/sbin/nft
[ -x "$nft" ] || die "$nft is missing (the proxy image carries it): install it with: apt-get install -y nftables"
for f in /etc/protocols /etc/services; do
  [ -f "$f" ] || die "$f is missing (nft names protocols and ports with it): install it with: apt-get install -y netbase"
done
command -v strip >/dev/null && command -v readelf >/dev/null || die "strip or readelf is missing: install it with: apt-get install -y binutils"

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version under [workspace.package] in Cargo.toml"

target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
bin_dir="$target_dir/$target/release"
images="$target_dir/images"

# --- 1. static binaries ----------------------------------------------------------------------
# The demo's binary too (deploy/podman/build-demo-image.sh runs the same command): one cargo
# invocation with one feature set, so the second is a no-op instead of a second release build
# of every dependency with other features.
log "cargo build --release --target $target (static glibc: -C target-feature=+crt-static)"
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --release --target "$target" -p quiver-proxy -p quiver-control -p quiver-demo --bins
for b in quiver-proxy quiver-control quiverctl; do
  # A binary that asks for a loader or shared libraries would not start in a scratch image.
  if readelf -lW "$bin_dir/$b" | grep -q 'Requesting program interpreter' \
     || readelf -dW "$bin_dir/$b" | grep -q '(NEEDED)'; then
    die "$bin_dir/$b is not statically linked"
  fi
done

# --- 2. build contexts -----------------------------------------------------------------------
# passwd/group for a scratch image: root, the image's own user, nobody. No shells exist.
write_etc() { # DIR UID NAME
  mkdir -p "$1"
  printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s::/nonexistent:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
    "$3" "$2" "$2" > "$1/passwd"
  printf 'root:x:0:\n%s:x:%s:\nnogroup:x:65534:\n' "$3" "$2" > "$1/group"
  chmod 0644 "$1/passwd" "$1/group"
}

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
