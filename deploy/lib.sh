# Shared by deploy/build-images.sh and deploy/podman/build-demo-image.sh (sourced, from the
# repository root, after they define log and die): the podman command, the version, the
# target dir, and the one static release build both run.
target=x86_64-unknown-linux-gnu
read -r -a podman <<< "${PODMAN:-podman --runtime runc}"
command -v "${podman[0]}" >/dev/null || die "podman is missing: install it with: apt-get install -y podman runc"
command -v strip >/dev/null && command -v readelf >/dev/null || die "strip or readelf is missing: install it with: apt-get install -y binutils"

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version under [workspace.package] in Cargo.toml"

target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$(pwd)/$target_dir" ;; esac
bin_dir="$target_dir/$target/release"

# static_build BINARY...: the static glibc release build of every image's binaries (the
# proxy, the control plane and the demo in one cargo invocation with one feature set, so a
# second script's build is a no-op rather than a second release build of every dependency
# with other features), then check that each named binary needs no loader or library: one
# that did would not start in a scratch image.
static_build() {
  log "cargo build --release --target $target (static glibc: -C target-feature=+crt-static)"
  RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    cargo build --release --target "$target" -p quiver-proxy -p quiver-control -p quiver-demo --bins
  local b
  for b in "$@"; do
    if readelf -lW "$bin_dir/$b" | grep -q 'Requesting program interpreter' \
       || readelf -dW "$bin_dir/$b" | grep -q '(NEEDED)'; then
      die "$bin_dir/$b is not statically linked"
    fi
  done
}

# passwd/group for a scratch image: root, the image's own user, nobody. No shells exist.
write_etc() { # DIR UID NAME
  mkdir -p "$1"
  printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s::/nonexistent:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
    "$3" "$2" "$2" > "$1/passwd"
  printf 'root:x:0:\n%s:x:%s:\nnogroup:x:65534:\n' "$3" "$2" > "$1/group"
  chmod 0644 "$1/passwd" "$1/group"
}
