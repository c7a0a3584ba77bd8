#!/usr/bin/env bash
# capture.sh - what transparent capture costs: the same HTTP/1.1 load (quiver-bench's `h1` shape)
# through the caller's explicit outbound listener and through capture (nft redirect +
# SO_ORIGINAL_DST), against the same proxies, rounds alternating, in one run.
#
#   quiver-bench load (root, the app) --HTTP/1.1 keep-alive-->
#       explicit:  127.0.0.1:7001        (caller's outbound listener; loopback is never captured)
#       captured:  240.240.0.10:80       (catalog's virtual IP: nft redirects it to 127.0.0.1:15002,
#                                         the caller reads SO_ORIGINAL_DST)
#       norules:   127.0.0.1:7001 with the capture table removed for that round (what the rules
#                  cost the explicit path: conntrack on every packet of the namespace)
#   caller proxy (uid 1337, setpriv) ==mTLS HTTP/3 over QUIC on loopback==> callee proxy
#       --HTTP/1.1--> quiver-echo (catalog's app)
#
# All of it in ONE network namespace (quiver-capbench): lo up and a veth pair, both ends inside
# it (this kernel has no dummy module), whose one end holds the default route, so a connect()
# to 240.240.0.10 finds a route before the nat hook redirects it. Nothing leaves the namespace.
# Both proxies run with tuning.workers = 1 and RUST_LOG=warn (no access log), like wan.sh and
# `quiver-bench --proxy-log warn`. Rounds rotate the order of the paths (round 1: explicit,
# captured, norules; round 2: captured, norules, explicit; ...). Each load: --connections
# keep-alive connections, --warmup then --duration measured; CPU of each proxy is read from
# /proc/PID/stat at the start and the end of the measured window (utime+stime) and divided by
# the requests completed in it.
#
# Usage: tests/bench/capture.sh [--json] [--rounds N] [--duration SECONDS] [--connections N]
#                               [--paths "explicit captured norules"]
# Knobs (environment): ROUNDS=4 DURATION=10 WARMUP=1 CONNECTIONS=16 PATHS="explicit captured norules"
#   CAPTURE_SCRATCH=/tmp/quiver-capture-bench  QUIVER_RUST_LOG=warn  QUIVER_TUNING (extra tuning:
#   lines for both proxies)  QUIVER_PROXY_BIN / QUIVER_BENCH_BIN / QUIVER_ECHO_BIN (default: this
#   checkout's target/release; build them with
#   cargo build --release -p quiver-proxy -p quiver-bench -p quiver-tests --bins)
# Needs root (a network namespace, nftables) and ip, nft, setpriv, openssl, curl, python3.
# Output: each round on stderr as it ends; then every round, the medians and the ratios to
# explicit on stdout (JSON lines with --json); raw load outputs, configs, the nft table, logs
# and the machine's load average under $CAPTURE_SCRATCH/results/<time>/.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SCRATCH=${CAPTURE_SCRATCH:-/tmp/quiver-capture-bench}
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-16}
PATHS=${PATHS:-"explicit captured norules"}
JSON=0
while (($#)); do
  case $1 in
    --json) JSON=1 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    --duration) DURATION=${2:?--duration needs seconds}; shift ;;
    --connections) CONNECTIONS=${2:?--connections needs a number}; shift ;;
    --paths) PATHS=${2:?--paths needs a list}; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    *) echo "capture.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }

for v in ROUNDS DURATION CONNECTIONS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be whole seconds, not '$WARMUP'"
for p in $PATHS; do
  case $p in explicit|captured|norules) ;; *) die "unknown path '$p' (explicit captured norules)" ;; esac
done
[[ " $PATHS " == *" explicit "* && " $PATHS " == *" captured "* ]] \
  || die "--paths must include explicit and captured (the ratio is captured/explicit)"

[[ $(id -u) == 0 ]] || die "needs root (ip netns, nftables, setpriv to uid 1337)"
missing=()
for tp in ip:iproute2 nft:nftables setpriv:util-linux openssl:openssl curl:curl python3:python3; do
  command -v "${tp%%:*}" >/dev/null 2>&1 || missing+=("${tp#*:}")
done
((${#missing[@]})) && die "missing tools; install them with: apt-get install -y ${missing[*]}"

PROXY=${QUIVER_PROXY_BIN:-$ROOT/target/release/quiver-proxy}
BENCH=${QUIVER_BENCH_BIN:-$ROOT/target/release/quiver-bench}
ECHO=${QUIVER_ECHO_BIN:-$ROOT/target/release/quiver-echo}
for b in "$PROXY" "$BENCH" "$ECHO"; do
  [[ -x $b ]] || die "$b missing: cargo build --release -p quiver-proxy -p quiver-bench -p quiver-tests --bins"
done

NS=quiver-capbench
DEV=qcap0 DEV_PEER=qcap1 DEV_IP=10.79.0.1
VIP=240.240.0.10
PROXY_UID=1337
PORT_APP=18080 PORT_APP_TCP=18081
PORT_EXPLICIT=7001
PORT_CALLEE_QUIC=15443 PORT_CALLEE_ADMIN=15021 PORT_CALLER_ADMIN=15020
CALLER_ID=spiffe://mesh.local/ns/default/sa/frontend
CALLEE_ID=spiffe://mesh.local/ns/default/sa/catalog
CERTS=$SCRATCH/certs
OUT=$SCRATCH/results/$(date +%Y%m%d-%H%M%S)
LOGS=$OUT/logs RAW=$OUT/raw RUN=$OUT/run
RESULTS=$OUT/results.jsonl
HZ=$(getconf CLK_TCK)
mkdir -p "$LOGS" "$RAW" "$RUN" || die "mkdir $OUT"
chmod 755 "$SCRATCH" "$SCRATCH/results" "$OUT" "$RUN"

# ------------------------------------------------------------------------------ processes
declare -A PIDS=()
# start_svc NAME CMD...: run CMD in the namespace, in a session of its own. `setsid` (not a
# group leader here), `ip netns exec` and `setpriv` all exec, so $! is the command's own pid.
start_svc() {
  local name=$1; shift
  echo "=== $(date +%T) $*" >>"$LOGS/$name.log"
  setsid ip netns exec "$NS" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  PIDS[$name]=$!
}
stop_svc() {
  local name=$1 pid=${PIDS[$1]:-} i
  [[ -n $pid ]] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  unset "PIDS[$name]"
}
LOAD_PID=
cleanup() {
  local n
  [[ -n $LOAD_PID ]] && kill -TERM "$LOAD_PID" 2>/dev/null
  for n in "${!PIDS[@]}"; do stop_svc "$n"; done
  ip netns del "$NS" 2>/dev/null
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

in_ns() { ip netns exec "$NS" "$@"; }

# cpu_ticks PID: user+system clock ticks of the process ("" if it is gone)
cpu_ticks() {
  local f x
  f=$(cat "/proc/$1/stat" 2>/dev/null) || { echo ""; return; }
  f=${f##*) }
  read -r -a x <<<"$f"
  echo $((x[11] + x[12]))
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ------------------------------------------------------------------------------ setup
gen_certs() {
  [[ -s $CERTS/frontend/cert.pem ]] && openssl x509 -checkend 86400 -noout -in "$CERTS/frontend/cert.pem" >/dev/null \
    && openssl x509 -checkend 86400 -noout -in "$CERTS/catalog/cert.pem" >/dev/null && return 0
  log "mesh CA and SPIFFE certificates for sa/frontend and sa/catalog in $CERTS"
  rm -rf "$CERTS" && mkdir -p "$CERTS" && (
    cd "$CERTS" || exit 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
      -days 30 -subj "/O=mesh.local/CN=capture-bench-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || exit 1
    for sa in frontend catalog; do
      mkdir -p $sa
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $sa/key.pem -out $sa.csr \
        -subj "/O=mesh.local/CN=$sa.mesh.local" 2>/dev/null || exit 1
      printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=URI:spiffe://mesh.local/ns/default/sa/$sa,DNS:$sa.mesh.local" >$sa.ext
      openssl x509 -req -in $sa.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $sa/cert.pem -days 30 \
        -extfile $sa.ext 2>/dev/null || exit 1
      cp ca.crt $sa/bundle.pem && chmod 600 $sa/key.pem
    done
  ) || die "certificate generation failed"
  # The caller runs as uid 1337 and refuses a key that others can read: its files are its own.
  chmod 755 "$CERTS" && chown -R "$PROXY_UID:$PROXY_UID" "$CERTS/frontend" || die "chown $CERTS/frontend"
}

tuning() {
  echo "tuning:"
  echo "  workers: 1"
  [[ -n ${QUIVER_TUNING:-} ]] && sed 's/^/  /' <<<"$QUIVER_TUNING"
  return 0
}

write_configs() {
  local c=$CERTS/catalog f=$CERTS/frontend
  {
    echo "identity: {cert: \"$c/cert.pem\", key: \"$c/key.pem\", trust_bundle: \"$c/bundle.pem\"}"
    echo "listen: {quic: \"127.0.0.1:$PORT_CALLEE_QUIC\", admin: \"127.0.0.1:$PORT_CALLEE_ADMIN\"}"
    echo "drain_timeout: 1s"
    echo "inbound:"
    echo "  - {service: catalog, port: 80, protocol: http1, app: \"127.0.0.1:$PORT_APP\"}"
    tuning
  } >"$RUN/callee.yaml"
  {
    echo "identity: {cert: \"$f/cert.pem\", key: \"$f/key.pem\", trust_bundle: \"$f/bundle.pem\"}"
    echo "listen: {quic: \"127.0.0.1:0\", admin: \"127.0.0.1:$PORT_CALLER_ADMIN\"}"
    echo "drain_timeout: 1s"
    echo "outbound:"
    echo "  - {listen: \"127.0.0.1:$PORT_EXPLICIT\", service: catalog, port: 80, protocol: http1}"
    echo "services:"
    echo "  - name: catalog"
    echo "    virtualIp: $VIP"
    echo "    ports: [{port: 80, protocol: http1}]"
    echo "    endpoints: [{address: \"127.0.0.1:$PORT_CALLEE_QUIC\", identity: \"$CALLEE_ID\"}]"
    echo "capture:"
    echo "  outbound_listen: 127.0.0.1:15002"
    echo "  dns_listen: null"
    tuning
  } >"$RUN/caller.yaml"
  chmod 644 "$RUN/callee.yaml" "$RUN/caller.yaml"
  "$PROXY" --check --config "$RUN/callee.yaml" >/dev/null || die "callee config refused (see above)"
  setpriv --reuid=$PROXY_UID --regid=$PROXY_UID --clear-groups "$PROXY" --check --config "$RUN/caller.yaml" \
    >/dev/null || die "caller config refused as uid $PROXY_UID (see above)"
}

setup_namespace() {
  ip netns del "$NS" 2>/dev/null
  ip netns add "$NS" || die "ip netns add $NS failed"
  in_ns ip link set lo up \
    && in_ns ip link add "$DEV" type veth peer name "$DEV_PEER" \
    && in_ns ip addr add "$DEV_IP/24" dev "$DEV" \
    && in_ns ip link set "$DEV" up && in_ns ip link set "$DEV_PEER" up \
    && in_ns ip route add default dev "$DEV" \
    || die "configuring $NS (lo, veth $DEV, default route) failed"
}

capture_install() {
  in_ns "$PROXY" capture install --proxy-uid "$PROXY_UID" --dns-port 0 >>"$LOGS/capture.log" 2>&1 \
    || die "quiver-proxy capture install failed (see $LOGS/capture.log)"
}
capture_remove() {
  in_ns "$PROXY" capture remove >>"$LOGS/capture.log" 2>&1 || die "quiver-proxy capture remove failed"
}

http_code() { in_ns curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" 2>/dev/null; }
wait_200() { # url seconds
  local i
  for i in $(seq $(($2 * 5))); do
    [[ $(http_code "$1") == 200 ]] && return 0
    sleep 0.2
  done
  return 1
}

start_all() {
  export RUST_LOG=${QUIVER_RUST_LOG:-warn}
  start_svc echo "$ECHO" --http "127.0.0.1:$PORT_APP" --tcp "127.0.0.1:$PORT_APP_TCP"
  start_svc callee "$PROXY" --config "$RUN/callee.yaml" --reload-interval 0s
  start_svc caller setpriv --reuid=$PROXY_UID --regid=$PROXY_UID --clear-groups \
    "$PROXY" --config "$RUN/caller.yaml" --reload-interval 0s
  sleep 0.3
  local n
  for n in callee caller; do
    [[ $(cat "/proc/${PIDS[$n]}/comm" 2>/dev/null) == quiver-proxy ]] \
      || die "$n: pid ${PIDS[$n]} is not quiver-proxy (see $LOGS/$n.log)"
  done
  [[ $(stat -c %u "/proc/${PIDS[caller]}") == "$PROXY_UID" ]] || die "the caller does not run as uid $PROXY_UID"
  wait_200 "http://127.0.0.1:$PORT_CALLEE_ADMIN/readyz" 20 || die "callee not ready (see $LOGS/callee.log)"
  wait_200 "http://127.0.0.1:$PORT_CALLER_ADMIN/readyz" 20 || die "caller not ready (see $LOGS/caller.log)"
  wait_200 "http://127.0.0.1:$PORT_EXPLICIT/" 20 || die "no 200 through the explicit listener (see $LOGS)"
  wait_200 "http://$VIP:80/" 20 || die "no 200 through capture at $VIP:80 (see $LOGS, $LOGS/capture.log)"
}

# The caller's count of captured connections carried into the mesh as http1.
captured_conns() {
  in_ns curl -s --max-time 5 "http://127.0.0.1:$PORT_CALLER_ADMIN/metrics" 2>/dev/null | python3 -c '
import sys
n = 0
for l in sys.stdin:
    if l.startswith("quiver_capture_connections_total{") and "outcome=\"mesh\"" in l and "protocol=\"http1\"" in l:
        n += float(l.rsplit(" ", 1)[1])
print(int(n))'
}

# ------------------------------------------------------------------------------ one load
run_one() { # round path
  local round=$1 path=$2 url raw=$RAW/r$1-$2
  case $path in
    explicit|norules) url=http://127.0.0.1:$PORT_EXPLICIT/ ;;
    captured) url=http://$VIP:80/ ;;
  esac
  [[ $path == norules ]] && capture_remove
  local la0 cap0 c0 e0 t0 c1 e1 t1 cap1
  la0=$(loadavg) cap0=$(captured_conns)
  in_ns "$BENCH" load --url "$url" --connections "$CONNECTIONS" --duration "${DURATION}s" \
    --warmup "${WARMUP}s" --json >"$raw.json" 2>"$raw.err" &
  LOAD_PID=$!
  # The measured window opens after the warm-up (the load's connect time, well under a tick, aside).
  sleep "$WARMUP"
  c0=$(cpu_ticks "${PIDS[caller]}") e0=$(cpu_ticks "${PIDS[callee]}") t0=$(date +%s.%N)
  sleep "$DURATION"
  c1=$(cpu_ticks "${PIDS[caller]}") e1=$(cpu_ticks "${PIDS[callee]}") t1=$(date +%s.%N)
  wait "$LOAD_PID"; LOAD_PID=
  cap1=$(captured_conns)
  [[ $path == norules ]] && capture_install
  python3 - "$raw.json" "$round" "$path" "$c0" "$c1" "$e0" "$e1" "$t0" "$t1" "$HZ" "$la0" "$(loadavg)" \
    "$cap0" "$cap1" >>"$RESULTS" <<'PY'
import json, sys
path, rnd, p, c0, c1, e0, e1, t0, t1, hz, la0, la1, cap0, cap1 = sys.argv[1:15]
try:
    r = json.load(open(path))
except Exception as e:
    r = {"failed": f"no load result ({e}); see {path[:-5]}.err"}
out = {"round": int(rnd), "path": p, "url": r.get("url"), "connections": r.get("connections")}
for k in ("requests", "errors", "rps", "p50_ms", "p99_ms", "p999_ms", "max_ms", "failed", "error_samples"):
    if k in r:
        out[k] = r[k]
req = r.get("requests") or 0
secs = r.get("seconds") or 0
for side, a, b in (("caller", c0, c1), ("callee", e0, e1)):
    if a and b and req and secs:
        cpu_s = (int(b) - int(a)) / int(hz)
        # CPU seconds over the sampled window, scaled to the load's own window, per request.
        out[f"{side}_cpu_us_per_req"] = round(cpu_s / (float(t1) - float(t0)) * secs / req * 1e6, 1)
        out[f"{side}_cores"] = round(cpu_s / (float(t1) - float(t0)), 3)
out["loadavg_before"] = la0
out["loadavg_after"] = la1
if cap0 and cap1:
    out["captured_connections"] = int(cap1) - int(cap0)
print(json.dumps(out))
PY
  [[ $JSON == 1 ]] || python3 - "$(tail -n 1 "$RESULTS")" <<'PY' >&2
import json, sys
r = json.loads(sys.argv[1])
f = lambda k, fmt: (fmt % r[k]) if r.get(k) is not None else "-"
print(f"  round {r['round']} {r['path']:9} {f('rps', '%8.0f')} req/s  p50 {f('p50_ms', '%6.3f')} ms  "
      f"p99 {f('p99_ms', '%6.3f')} ms  errors {r.get('errors', '-')}  caller {f('caller_cpu_us_per_req', '%5.1f')} us/req  "
      f"callee {f('callee_cpu_us_per_req', '%5.1f')} us/req  captured conns {r.get('captured_connections', '-')}  "
      f"load {r['loadavg_before']} -> {r['loadavg_after']}" + (f"  FAILED {r['failed']}" if r.get('failed') else ""))
PY
}

# ------------------------------------------------------------------------------ main
gen_certs
setup_namespace
write_configs
capture_install
in_ns nft list table inet quiver_capture >"$OUT/ruleset.nft" 2>&1
start_all
{
  echo "git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet -- dataplane bench tests/src 2>/dev/null || echo '+dirty')"
  echo "nproc $(nproc)"; echo "loadavg_start $(cat /proc/loadavg)"; uname -r
  echo "rounds $ROUNDS duration ${DURATION}s warmup ${WARMUP}s connections $CONNECTIONS paths $PATHS"
  echo "QUIVER_TUNING ${QUIVER_TUNING:-}"
} >"$OUT/machine.txt"
log "capture benchmark: paths [$PATHS], $ROUNDS round(s) of ${DURATION}s (+${WARMUP}s warm-up), $CONNECTIONS connections, load average $(loadavg), $(nproc) CPUs; results in $OUT"
read -r -a order <<<"$PATHS"
for round in $(seq "$ROUNDS"); do
  n=${#order[@]}
  for i in $(seq 0 $((n - 1))); do
    run_one "$round" "${order[$(((i + round - 1) % n))]}"
  done
done
echo "loadavg_end $(cat /proc/loadavg)" >>"$OUT/machine.txt"

python3 - "$RESULTS" "$JSON" "$PATHS" "$OUT/machine.txt" <<'PY' | tee "$OUT/summary.txt"
import json, statistics, sys
path, as_json, paths, machine = sys.argv[1], sys.argv[2] == "1", sys.argv[3].split(), sys.argv[4]
rows = [json.loads(l) for l in open(path)]
keys = ("rps", "p50_ms", "p99_ms", "caller_cpu_us_per_req", "callee_cpu_us_per_req")
med = {}
for p in paths:
    rs = [r for r in rows if r["path"] == p and not r.get("failed")]
    med[p] = {k: (statistics.median([r[k] for r in rs if r.get(k) is not None]) if any(r.get(k) is not None for r in rs) else None) for k in keys}
    med[p]["rounds"] = len(rs)
    med[p]["errors"] = sum(r.get("errors", 0) for r in rs)
def ratio(a, b, k):
    x, y = med[a].get(k), med[b].get(k)
    return round(x / y, 3) if x is not None and y else None
info = dict(l.split(" ", 1) for l in open(machine).read().splitlines() if " " in l)
if as_json:
    for r in rows:
        print(json.dumps(r))
    for p in paths:
        print(json.dumps({"median": p, **med[p]}))
    for p in paths:
        if p != "explicit":
            print(json.dumps({"ratio": f"{p}/explicit", **{k: ratio(p, "explicit", k) for k in keys}}))
    sys.exit(0)
print(f"capture overhead, git {info.get('git', '?')}, rounds {info.get('rounds', '?')}")
print(f"load average at start {info.get('loadavg_start', '?')}, at end {info.get('loadavg_end', '?')} ({info.get('nproc', '?')} CPUs)")
print()
print("per round:")
print(f"{'round':>5} {'path':9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'caller us/req':>13} {'callee us/req':>13} {'errors':>6}  load avg")
fmt = lambda v, f: (f % v) if v is not None else "-"
for r in rows:
    print(f"{r['round']:>5} {r['path']:9} {fmt(r.get('rps'), '%8.0f')} {fmt(r.get('p50_ms'), '%7.3f')} {fmt(r.get('p99_ms'), '%7.3f')} "
          f"{fmt(r.get('caller_cpu_us_per_req'), '%13.1f')} {fmt(r.get('callee_cpu_us_per_req'), '%13.1f')} {r.get('errors', '-'):>6}  "
          f"{r['loadavg_before']}" + (f"  FAILED: {r['failed']}" if r.get('failed') else ""))
print()
print("medians:")
print(f"{'path':17} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'caller us/req':>13} {'callee us/req':>13} {'rounds':>6} {'errors':>6}")
for p in paths:
    m = med[p]
    print(f"{p:17} {fmt(m['rps'], '%8.0f')} {fmt(m['p50_ms'], '%7.3f')} {fmt(m['p99_ms'], '%7.3f')} "
          f"{fmt(m['caller_cpu_us_per_req'], '%13.1f')} {fmt(m['callee_cpu_us_per_req'], '%13.1f')} {m['rounds']:>6} {m['errors']:>6}")
for p in paths:
    if p != "explicit":
        print(f"{p + '/explicit':17} " + " ".join(fmt(ratio(p, "explicit", k), w) for k, w in
              zip(keys, ("%8.3f", "%7.3f", "%7.3f", "%13.3f", "%13.3f"))))
bad = [r for r in rows if r.get("failed") or r.get("errors")]
if bad:
    print(f"\n!! {len(bad)} load(s) with errors or no result: see the raw outputs")
PY
log "raw results: $RESULTS"
