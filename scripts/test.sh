#!/usr/bin/env bash
# The test command (README.md; .ci/run runs exactly this): installs and starts what the tests
# need when it is missing, then runs them all. On Debian/Ubuntu it installs with apt-get (as
# root, or through sudo); elsewhere, or without either, it stops at the first missing
# prerequisite and prints the command that installs it. Every prerequisite is checked here
# and again by the test that needs it (which fails, never skips, naming the install command).
#
#   scripts/test.sh       everything: prerequisites, console lint and unit tests, the fuzz
#                         smoke run, cargo test --workspace
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

log() { printf '==> %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

# apt_install WHY PACKAGE...: install Debian packages, or stop with the command to run.
apt_updated=0
apt_install() {
  local why="$1"; shift
  local cmd="apt-get install -y $*"
  if ! command -v apt-get >/dev/null || { [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; }; then
    echo "missing for $why: install it with: $cmd (as root), then run scripts/test.sh again" >&2
    exit 1
  fi
  log "installing for $why: $cmd"
  if [ "$apt_updated" = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# --- Rust ----------------------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs), e.g. curl -sSf https://sh.rustup.rs | sh" >&2
  exit 1
fi
log "$(cargo --version), $(rustc --version)"

# --- Postgres (the control plane's store tests run against a real server) -------------------
pg_ready() { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; }
if ! pg_ready; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install "the control plane's store tests (PostgreSQL)" postgresql
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  # Tests connect as postgres over TCP without a password, like the dev machines.
  if ! $SUDO grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    log "allowing trust auth for 127.0.0.1 in $hba"
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting PostgreSQL $ver"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || $SUDO pg_ctlcluster "$ver" main restart
  for _ in $(seq 1 50); do pg_ready && break; sleep 0.2; done
  pg_ready || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
fi
log "PostgreSQL is up on 127.0.0.1:5432"

# --- promtool and prometheus (tests lint every /metrics endpoint with promtool, check
# deploy/observability/ with it, and run a real Prometheus over a mesh; one package) ---------
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt_install "the /metrics lint and the dashboard tests (promtool, prometheus)" --no-install-recommends prometheus
fi
log "$(promtool --version 2>&1 | head -n 1)"

# --- containers: podman with runc, nftables, kubernetes-validate ------------------------------
# The image tests (tests/tests/images.rs) build the FROM scratch images with podman and run
# them; the capture tests drive nft; the Kubernetes manifests are checked with
# kubernetes-validate (schemas bundled, no cluster). Podman always runs as
# `podman --runtime runc` (crun fails on this kind of kernel's hybrid cgroups), and runc needs
# `default_ulimits = []` under [containers] in containers.conf (otherwise it fails on
# setrlimit). ../shared/TOOLCHAIN.md, "Containers, pods and capture".
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
need_apt=()
have podman || need_apt+=(podman)
have runc || need_apt+=(runc)
have nft || need_apt+=(nftables)
[ -f /etc/protocols ] || need_apt+=(netbase) # nft's protocol names, copied into the proxy image
if [ "${#need_apt[@]}" -gt 0 ]; then
  apt_install "the container tests (podman, runc, nftables, netbase)" "${need_apt[@]}"
fi
containers_conf=/etc/containers/containers.conf
if ! grep -qE '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[[[:space:]]*\]' "$containers_conf" 2>/dev/null; then
  if grep -qE '^[[:space:]]*default_ulimits[[:space:]]*=' "$containers_conf" 2>/dev/null; then
    echo "$containers_conf sets default_ulimits to something else: make it 'default_ulimits = []' under [containers]" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
    echo "missing for the container tests: put 'default_ulimits = []' under [containers] in $containers_conf (as root)" >&2
    exit 1
  fi
  log "setting default_ulimits = [] under [containers] in $containers_conf"
  $SUDO mkdir -p /etc/containers
  if grep -qE '^[[:space:]]*\[containers\]' "$containers_conf" 2>/dev/null; then
    $SUDO sed -i '0,/^[[:space:]]*\[containers\]/s//&\ndefault_ulimits = []/' "$containers_conf"
  else
    printf '\n[containers]\ndefault_ulimits = []\n' | $SUDO tee -a "$containers_conf" >/dev/null
  fi
fi
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install "kubernetes-validate (pip)" python3-pip
  fi
  log "installing for the manifest checks: pip install kubernetes-validate"
  # Debian's own python3 is "externally managed" (PEP 668): its pip installs only with
  # --break-system-packages (a pip too old to know the flag does not refuse in the first place).
  python3 -m pip install -q kubernetes-validate 2>/dev/null \
    || $SUDO python3 -m pip install -q --break-system-packages kubernetes-validate
  python3 -c 'import kubernetes_validate' \
    || { echo "kubernetes_validate still does not import: install it with: pip install kubernetes-validate" >&2; exit 1; }
fi
python3 -c 'import aioquic' 2>/dev/null || { log "installing for the receiver tests (an independent HTTP/3 client): pip install aioquic"; python3 -m pip install -q aioquic 2>/dev/null || $SUDO python3 -m pip install -q --break-system-packages aioquic; }
if ! podman_info=$(podman --runtime runc info --format '{{.Version.Version}} {{.Host.OCIRuntime.Name}}' 2>&1); then
  echo "podman --runtime runc info failed: $podman_info" >&2
  echo "install it with: apt-get install -y podman runc, and put 'default_ulimits = []' under [containers] in $containers_conf" >&2
  exit 1
fi
log "podman $podman_info, $(/usr/sbin/nft --version 2>/dev/null || nft --version)"
# --- the web console's tests: headless Chromium, node, playwright-core -----------------------
# The browser tests (controlplane/tests/console_browser.rs, demo/tests/console_traces.rs) drive
# the console that quiver-control embeds (the committed console/dist) in Debian's Chromium with
# playwright-core; they fail (never skip) when any of this is missing. No wasm toolchain is
# needed: the stamp test (controlplane/tests/console_serving.rs) checks that the committed
# bundle was built from the sources as they are.
need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium chromium-driver)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ "${#need_apt[@]}" -gt 0 ]; then
  apt_install "the browser tests" "${need_apt[@]}"
fi
if [ ! -f console/e2e/node_modules/.package-lock.json ] \
   || [ console/e2e/package-lock.json -nt console/e2e/node_modules/.package-lock.json ]; then
  log "npm ci in console/e2e (playwright-core, binaryen's wasm-opt)"
  (cd console/e2e && npm ci --no-audit --no-fund --silent)
fi
log "clippy for the console crate (console/build.sh --clippy)"
console/build.sh --clippy
# The console is its own crate (wasm, excluded from the workspace): its unit tests (waterfall
# tree, topology layout, input parsing) run natively here.
log "console unit tests (cargo test --manifest-path console/Cargo.toml --lib)"
cargo test -q --manifest-path console/Cargo.toml --lib --target-dir console/target/native

# --- the fuzz smoke run: every fuzz target briefly over its committed corpus -------------------
# Its own lock file and target dir (fuzz/target): it never rebuilds the workspace's artifacts.
# libfuzzer-sys compiles libFuzzer (C++).
if ! command -v c++ >/dev/null; then
  apt_install "the fuzz smoke run (libFuzzer is C++)" g++
fi
log "fuzz smoke run (fuzz/smoke.sh: 4 targets, ${FUZZ_SECONDS:-20}s each)"
fuzz/smoke.sh

# --- the tests -------------------------------------------------------------------------------
log "cargo test --workspace"
cargo test --workspace
log "all tests passed in $(( ($(date +%s) - started) / 60 )) min $(( ($(date +%s) - started) % 60 )) s"
