#!/usr/bin/env bash
# The static-pair demo: two sidecars and an echo app on loopback, mTLS over HTTP/3 between
# the sidecars. Builds the binaries, mints a dev CA and two SVIDs, starts everything, sends a
# request through the mesh, then keeps running until Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
echo "==> building (cargo build --workspace --bins)"
cargo build --workspace --bins
bin=$root/target/debug

certs=$here/certs
if [ ! -f "$certs/ca/ca.key" ]; then
  echo "==> minting a dev CA and SVIDs under $certs"
  "$bin/quiverctl" certs ca --out "$certs/ca" --trust-domain mesh.local
fi
for sa in frontend backend; do
  "$bin/quiverctl" certs issue --ca "$certs/ca" --spiffe-id "spiffe://mesh.local/ns/default/sa/$sa" \
    --out "$certs/$sa" --ttl 24h >/dev/null
done

for f in a b; do "$bin/quiver-proxy" --check --config "$here/$f.yaml"; done

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/quiver-echo" --http 127.0.0.1:8080 --tcp 127.0.0.1:9000 & pids+=($!)
RUST_LOG=${RUST_LOG:-info} "$bin/quiver-proxy" --config "$here/b.yaml" 2>"$here/b.log" & pids+=($!)
RUST_LOG=${RUST_LOG:-info} "$bin/quiver-proxy" --config "$here/a.yaml" 2>"$here/a.log" & pids+=($!)

for port in 15020 15021; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

echo "==> a request through the mesh (app -> A -> HTTP/3 + mTLS -> B -> echo app):"
curl -sS -i http://127.0.0.1:7000/hello -H 'host: echo'
cat <<MSG

The mesh is up. Try:
  curl -i http://127.0.0.1:7000/anything                   # explicit upstream listener
  http_proxy=http://127.0.0.1:15001 curl -i http://echo/x   # HTTP proxy listener, routed by Host
  curl -i -x http://127.0.0.1:15001 http://nope/             # no such service: 404 + quiver-error
  printf "hello\\n" | nc -N 127.0.0.1 7001                  # TCP over HTTP/3 CONNECT (netcat-openbsd)
  curl -s http://127.0.0.1:15020/metrics | grep quiver_      # Prometheus metrics
  curl -s http://127.0.0.1:15020/config                     # running config (no secrets)
Logs: $here/a.log $here/b.log. Ctrl-C stops everything.
MSG
wait
