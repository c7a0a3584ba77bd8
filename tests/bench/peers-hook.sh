#!/usr/bin/env bash
# Run one side of a quiver-proxy pair for ../shared/bench/peers.sh (its MESH_PROXY_{A,B}_CMD
# hook): write a quiver-proxy YAML config from the MESH_* variables peers.sh exports, then exec
# the proxy in the foreground.
#
#   MESH_PROXY_NAME=quiver \
#   MESH_PROXY_A_CMD="$PWD/tests/bench/peers-hook.sh a" \
#   MESH_PROXY_B_CMD="$PWD/tests/bench/peers-hook.sh b" \
#   MESH_PROXY_LOADS="h1 rate h2 close" \
#   /work/shared/bench/peers.sh
#
# Layout: A has an outbound http1 listener on MESH_A_HTTP_LISTEN (it also takes h2c) for service
# `b`, whose one endpoint is MESH_B_ADDR proving MESH_B_ID; with MESH_A_TCP_LISTEN set, a tcp
# listener to `b` port 9000 too. B listens for QUIC on MESH_B_QUIC_LISTEN and fronts MESH_BACKEND
# (http1, port 80) and, with MESH_SINK set, the sink (tcp, port 9000).
#
# Limits (see docs/benchmarks.md): MESH_UPSTREAM_MAX_REQUESTS_PER_CONN=1 (the `hs` load) has no
# quiver-proxy equivalent: A keeps pooling one QUIC connection, so `hs` measures `close`.
# The `h3b` load (oha straight to B) sends no `quiver-target` header, which B requires to pick
# a local service: B answers 400. B accepts any SVID of the trust domain (per-caller
# authorization is a later issue), so peers.sh's sa/c negative check is expected to pass.
#
# Environment: QUIVER_PROXY_BIN (default: target/release/quiver-proxy of this checkout),
# QUIVER_RUST_LOG (default warn: no per-request access log, like Envoy's `-l warn`),
# QUIVER_TUNING (extra YAML lines for the tuning block, e.g. "stream_receive_window: 2097152"),
# QUIVER_HOOK_DIR (where the configs are written; default $TMPDIR/quiver-peers-hook).
# tests/bench/wan.sh also sets MESH_A_QUIC_LISTEN (A's UDP socket; default 127.0.0.1:0, which
# cannot reach a B in another network namespace) and MESH_A_ADMIN / MESH_B_ADMIN (fixed admin
# listeners, so it can read B's /metrics after a row; default 127.0.0.1:0).
set -euo pipefail

side=${1:?usage: peers-hook.sh a|b}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${QUIVER_PROXY_BIN:-$here/../../target/release/quiver-proxy}
[[ -x $bin ]] || { echo "peers-hook: $bin not found; run cargo build --release --workspace" >&2; exit 1; }
need() { local v; for v; do [[ -n ${!v:-} ]] || { echo "peers-hook: $v is not set" >&2; exit 1; }; done; }
need MESH_CA MESH_WORKERS
# One fixed place, overwritten per start: peers.sh restarts the pair for every row.
dir=${QUIVER_HOOK_DIR:-${TMPDIR:-/tmp}/quiver-peers-hook}
mkdir -p "$dir"
cfg=$dir/$side.yaml

tuning() {
  echo "tuning:"
  echo "  workers: $MESH_WORKERS"
  # $1: idle timeout. B idles out abandoned QUIC connections quickly (peers.sh asks for ~5 s);
  # A pings every 2 s so its pooled connection to B outlives that.
  echo "  idle_timeout: $1"
  echo "  keep_alive: $2"
  [[ -n ${QUIVER_TUNING:-} ]] && sed 's/^/  /' <<<"$QUIVER_TUNING"
  return 0
}

case $side in
  a)
    need MESH_A_CERT MESH_A_KEY MESH_A_HTTP_LISTEN MESH_B_ADDR MESH_B_ID
    if [[ ${MESH_UPSTREAM_MAX_REQUESTS_PER_CONN:-0} != 0 ]]; then
      echo "peers-hook: MESH_UPSTREAM_MAX_REQUESTS_PER_CONN=$MESH_UPSTREAM_MAX_REQUESTS_PER_CONN is not" \
           "supported: A keeps pooling its QUIC connection to B" >&2
    fi
    {
      echo "identity: {cert: \"$MESH_A_CERT\", key: \"$MESH_A_KEY\", trust_bundle: \"$MESH_CA\"}"
      echo "listen: {quic: \"${MESH_A_QUIC_LISTEN:-127.0.0.1:0}\", admin: \"${MESH_A_ADMIN:-127.0.0.1:0}\"}"
      echo "drain_timeout: 1s"
      echo "outbound:"
      echo "  - {listen: \"$MESH_A_HTTP_LISTEN\", service: b, port: 80, protocol: http1}"
      [[ -n ${MESH_A_TCP_LISTEN:-} ]] &&
        echo "  - {listen: \"$MESH_A_TCP_LISTEN\", service: b, port: 9000, protocol: tcp}"
      echo "services:"
      echo "  - {name: b, endpoints: [{address: \"$MESH_B_ADDR\", identity: \"$MESH_B_ID\"}]}"
      tuning 30s 2s
    } >"$cfg"
    ;;
  b)
    need MESH_B_CERT MESH_B_KEY MESH_B_QUIC_LISTEN MESH_BACKEND
    {
      echo "identity: {cert: \"$MESH_B_CERT\", key: \"$MESH_B_KEY\", trust_bundle: \"$MESH_CA\"}"
      echo "listen: {quic: \"$MESH_B_QUIC_LISTEN\", admin: \"${MESH_B_ADMIN:-127.0.0.1:0}\"}"
      echo "drain_timeout: 1s"
      echo "inbound:"
      echo "  - {service: b, port: 80, protocol: http1, app: \"$MESH_BACKEND\"}"
      [[ -n ${MESH_SINK:-} ]] &&
        echo "  - {service: b, port: 9000, protocol: tcp, app: \"$MESH_SINK\"}"
      tuning 5s 0s
    } >"$cfg"
    ;;
  *) echo "usage: peers-hook.sh a|b" >&2; exit 64 ;;
esac

echo "peers-hook: $side config $cfg:" >&2
cat "$cfg" >&2
export RUST_LOG=${QUIVER_RUST_LOG:-warn}
exec "$bin" --config "$cfg"
