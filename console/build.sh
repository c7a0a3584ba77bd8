#!/usr/bin/env bash
# Builds the web console into console/dist: index.html, the JS glue, the .wasm and the
# stylesheet, with content-hashed names (the control plane caches those for a year).
#
#   console/build.sh             build (incremental; the wasm target dir is console/target)
#   console/build.sh --if-stale  build only when dist/.stamp does not match the inputs
#   console/build.sh --check     no build: exit 1, naming the changed inputs, when the committed
#                                bundle was not built from the sources as they are (CI runs it)
#   console/build.sh --clippy    only lint the crate: clippy -D warnings, natively (rustup's
#                                clippy; the code has no wasm-only paths), target/clippy
#
# console/dist is committed: quiver-control embeds it at compile time, so nobody needs this
# script (or a wasm toolchain) to run Quiver. dist/.stamp lists a SHA-256 of every input file
# (the console's sources, the quiver-api and quiver-policy crates it links, the workspace
# manifest they inherit from, this script); whoever changes one of them rebuilds and commits
# dist, and --check (CI) fails otherwise.
#
# Toolchain: rustup's wasm32-unknown-unknown target when installed, else Debian's rustc-web
# (Rust with its std sources, built with -Zbuild-std). When neither is usable it exits 1 and
# prints what to install. wasm-bindgen-cli is installed at exactly the wasm-bindgen version
# in console/Cargo.lock when missing. wasm-opt (npm binaryen, from console/e2e) is used when
# present; Debian's binaryen is not used (its output fails to load in Chromium).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
dist="$here/dist"
cd "$here"

if_stale=0
check=0
for arg in "$@"; do
  case "$arg" in
    --if-stale) if_stale=1 ;;
    --check) check=1 ;;
    --clippy)
      exec cargo clippy --lib --target-dir "$here/target/clippy" -- -D warnings ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $arg (use --if-stale, --check or --clippy)" >&2; exit 64 ;;
  esac
done

# The inputs of the bundle, as paths relative to the repository: the console compiles
# quiver-api (without its "full" feature) and quiver-policy in, and their manifests inherit from
# the workspace's.
inputs=(console/src console/Cargo.toml console/Cargo.lock console/build.rs console/index.html
        console/boot.js console/style.css console/build.sh
        proto/Cargo.toml proto/build.rs proto/src proto/quiver
        policy/Cargo.toml policy/src Cargo.toml)

# One line per input file, "<sha256>  <path>", sorted: the stamp's content.
fingerprint() {
  (cd "$root" && find "${inputs[@]}" -type f ! -name '.*' ! -name '*.swp' ! -name '*~' -print0 \
     | LC_ALL=C sort -z | xargs -0 sha256sum)
}

# Exit 0 when dist was built from the inputs as they are; else print what changed, exit 1.
stamp_matches() {
  local want
  want="$(fingerprint)"
  if [ ! -f "$dist/.stamp" ] || [ ! -f "$dist/index.html" ]; then
    echo "console/dist is missing or has no stamp"
    return 1
  fi
  if [ "$want" = "$(cat "$dist/.stamp")" ]; then
    return 0
  fi
  echo "console/dist was built from other sources; changed since the build:"
  diff <(cat "$dist/.stamp") <(printf '%s\n' "$want") \
    | sed -n 's/^[<>] [0-9a-f]*  //p' | LC_ALL=C sort -u | head -n 20 | sed 's/^/  /'
  return 1
}

if [ "$check" = 1 ]; then
  if stamp_matches; then
    echo "console/dist matches its sources"
    exit 0
  fi
  echo "rebuild it with console/build.sh and commit console/dist" >&2
  exit 1
fi
if [ "$if_stale" = 1 ] && stamp_matches >/dev/null; then
  echo "console/dist is up to date"
  exit 0
fi

started=$(date +%s)
# Taken before compiling: an input edited during the build leaves the bundle stale, not stamped.
stamp="$(fingerprint)"
say() { printf 'console: %s\n' "$*"; }
install_help() {
  cat >&2 <<'EOF'
console/build.sh: no Rust toolchain that can build wasm32-unknown-unknown was found.
Install one of:
  - with rustup:       rustup target add wasm32-unknown-unknown
  - on Debian/Ubuntu:  apt-get install -y rustc-web cargo-web rust-web-src lld-22
                       (Debian's Rust with its std sources; this script builds std itself)
EOF
  exit 1
}

# --- choose the toolchain ---------------------------------------------------------------------
profile=wasm-release
target=wasm32-unknown-unknown
out="$here/target/$target/$profile"
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  say "toolchain: rustup ($(rustc --version)) with the $target target"
  build() { cargo build --lib --target "$target" --profile "$profile" --target-dir "$here/target"; }
else
  linker=""
  for l in wasm-ld-22 wasm-ld rust-lld; do
    if command -v "$l" >/dev/null; then linker="$l"; break; fi
  done
  if [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && [ -n "$linker" ] \
     && [ -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library" ]; then
    say "toolchain: Debian rustc-web ($(/usr/bin/rustc --version)), -Zbuild-std, linker $linker"
    build() {
      RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$linker" \
        /usr/bin/cargo build --lib --target "$target" --profile "$profile" \
        -Zbuild-std=std,panic_abort --target-dir "$here/target"
    }
  else
    install_help
  fi
fi

# --- wasm-bindgen-cli at exactly the crate's version -------------------------------------------
if [ ! -f Cargo.lock ]; then
  echo "console/Cargo.lock is missing; it is committed with the crate" >&2
  exit 1
fi
want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$have" != "$want" ]; then
  say "installing wasm-bindgen-cli $want (found: ${have:-none})"
  # Not --locked: its lock file pins a crate version the index no longer has.
  cargo install wasm-bindgen-cli --version "$want" >&2 || {
    echo "console/build.sh: could not install wasm-bindgen-cli $want: cargo install wasm-bindgen-cli --version $want" >&2
    exit 1
  }
fi

# --- build -------------------------------------------------------------------------------------
say "compiling (profile $profile)"
build
wasm="$out/quiver_console.wasm"
[ -f "$wasm" ] || { echo "console/build.sh: $wasm was not produced" >&2; exit 1; }

stage="$(mktemp -d "$here/.dist.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
wasm-bindgen --target web --no-typescript --remove-name-section --out-dir "$stage/bg" "$wasm"

wasm_opt=""
for w in "$here/e2e/node_modules/.bin/wasm-opt" "$(command -v wasm-opt || true)"; do
  [ -n "$w" ] && [ -x "$w" ] || continue
  v="$("$w" --version 2>/dev/null | grep -o 'version [0-9]*' | awk '{print $2}')"
  if [ "${v:-0}" -ge 116 ]; then wasm_opt="$w"; break; fi
done
if [ -n "$wasm_opt" ]; then
  say "wasm-opt -Oz ($wasm_opt)"
  "$wasm_opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue \
    "$stage/bg/quiver_console_bg.wasm" -o "$stage/bg/opt.wasm"
  mv "$stage/bg/opt.wasm" "$stage/bg/quiver_console_bg.wasm"
else
  say "wasm-opt not found (npm ci in console/e2e installs binaryen); shipping wasm-bindgen's output"
fi

hash() { sha256sum "$1" | cut -c1-16; }
js="quiver_console-$(hash "$stage/bg/quiver_console.js").js"
bg="quiver_console_bg-$(hash "$stage/bg/quiver_console_bg.wasm").wasm"
css="style-$(hash style.css).css"
mkdir "$stage/dist"
cp "$stage/bg/quiver_console.js" "$stage/dist/$js"
cp "$stage/bg/quiver_console_bg.wasm" "$stage/dist/$bg"
cp style.css "$stage/dist/$css"
sed -e "s|@JS@|$js|g" -e "s|@WASM@|$bg|g" boot.js > "$stage/boot.js"
boot="boot-$(hash "$stage/boot.js").js"
cp "$stage/boot.js" "$stage/dist/$boot"
sed -e "s|@BOOT@|$boot|g" -e "s|@JS@|$js|g" -e "s|@WASM@|$bg|g" -e "s|@STYLE@|$css|g" \
  index.html > "$stage/dist/index.html"
printf '%s\n' "$stamp" > "$stage/dist/.stamp"
rm -rf "$dist"
mv "$stage/dist" "$dist"

size() { stat -c %s "$1"; }
gz() { gzip -9 -c "$1" | wc -c; }
total=0; total_gz=0
for f in "$dist/$bg" "$dist/$js" "$dist/$boot" "$dist/$css" "$dist/index.html"; do
  total=$((total + $(size "$f"))); total_gz=$((total_gz + $(gz "$f")))
done
say "built $dist in $(( $(date +%s) - started ))s"
say "wasm $(( $(size "$dist/$bg") / 1024 )) KiB raw, $(( $(gz "$dist/$bg") / 1024 )) KiB gzip; whole bundle $((total / 1024)) KiB raw, $((total_gz / 1024)) KiB gzip"
