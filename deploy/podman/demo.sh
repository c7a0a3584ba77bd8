#!/usr/bin/env bash
# The demo mesh as pods (docs/deploy.md, "Containers: the demo as pods"):
#
#   deploy/podman/demo.sh up       # build missing images, start the pods, wait for an answer
#   deploy/podman/demo.sh status   # pods, addresses, workloads, one answer from frontend
#   deploy/podman/demo.sh down     # remove pods, secrets, volumes, network and the state dir
#
# On a podman network of its own: a control-plane pod (quiver-control, SQLite), and pods
# frontend, catalog-v1, catalog-v2 and ratings, each made of
#   - init container `capture` (root, NET_ADMIN/NET_RAW only): `quiver-proxy capture install`,
#     the nftables rules that send the app's TCP and DNS to the proxy;
#   - container `proxy` (uid 1337, read-only root): quiver-proxy in control-plane mode with
#     QUIVER_CAPTURE=true, joined with a join token (a podman secret) and the trust bundle;
#   - container `app`: the demo app (localhost/quiver-demo), which calls the others by mesh
#     name (http://catalog.demo.mesh, http://ratings.demo.mesh:9090) and knows nothing of
#     the mesh: no listener address, no http_proxy.
# Between pods the traffic is mTLS HTTP/3 between the pods' addresses on the network.
#
# podman 4.3 runs every init container to completion before the pod's containers (it has no
# native sidecars: an init container with restartPolicy: Always never lets the pod start), so
# the proxy is an ordinary container here and starts next to the app, not before it; the
# apps' first calls may fail until it is ready, and `up` waits for a whole answer.
#
# Settings (environment):
#   QUIVER_PODS_NAME   prefix of every pod, secret, volume and the network (default quiver-demo)
#   QUIVER_PODS_DIR    state: admin token, trust bundle, pod YAML, the store
#                      (default ./quiver-pods)
#   QUIVER_PODS_PORT   host port published for frontend's app (default 15100; 0: none)
#   QUIVER_PODS_BUILD  1: rebuild the images even when they exist
#   QUIVER_PODS_APPS   0: start the control plane only, mesh applied, secrets made (tests)
#   PODMAN             the podman command (default: podman --runtime runc; crun fails on this
#                      kind of kernel)
# Needs podman and runc (apt-get install -y podman runc, and `default_ulimits = []` under
# [containers] in /etc/containers/containers.conf), and cargo to build the images; curl for
# the answers `up` and `status` show.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

die() { echo "demo.sh: $*" >&2; exit 1; }
log() { printf '==> %s\n' "$*"; }

read -r -a podman <<< "${PODMAN:-podman --runtime runc}"
command -v "${podman[0]}" >/dev/null \
  || die "podman is missing: install it with: apt-get install -y podman runc"

name=${QUIVER_PODS_NAME:-quiver-demo}
dir=${QUIVER_PODS_DIR:-./quiver-pods}
host_port=${QUIVER_PODS_PORT:-15100}
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
proxy_image=localhost/quiver-proxy:$version
control_image=localhost/quiver-control:$version
demo_image=localhost/quiver-demo:$version
control=$name-control          # the control plane's pod, and its name on the network
ctl=$control-control           # its container
label=quiver.dev/podman-demo   # on every pod, secret and volume this script makes
namespace=demo
apps=(frontend catalog-v1 catalog-v2 ratings)

p() { "${podman[@]}" "$@"; }

# quiverctl inside the control plane's container (its image points it at the API).
quiverctl() {
  p exec -i -e QUIVER_TOKEN="$(cat "$dir/admin-token")" "$ctl" quiverctl "$@"
}

# The address of pod $1 on the network.
pod_ip() {
  local infra
  infra=$(p pod inspect --format '{{.InfraContainerID}}' "$1")
  p inspect --format "{{(index .NetworkSettings.Networks \"$name\").IPAddress}}" "$infra"
}

# Wait up to $1 seconds for command $2... to succeed.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what: not within ${seconds}s"
    sleep 0.5
  done
}

images() {
  if [ "${QUIVER_PODS_BUILD:-}" = 1 ] || ! p image exists "$proxy_image" || ! p image exists "$control_image"; then
    log "deploy/build-images.sh (quiver-proxy and quiver-control)"
    "$root/deploy/build-images.sh"
  fi
  if [ "${QUIVER_PODS_BUILD:-}" = 1 ] || ! p image exists "$demo_image"; then
    log "deploy/podman/build-demo-image.sh (the demo apps)"
    "$here/build-demo-image.sh"
  fi
}

# A podman secret in the shape podman 4.3's secretKeyRef reads: a JSON object of base64
# values (a `kind: Secret` document played by podman 4.3 is stored as YAML, which its own
# secretKeyRef then fails to read).
secret() { # NAME KEY VALUE
  p secret rm "$1" >/dev/null 2>&1 || true
  printf '{"%s":"%s"}' "$2" "$(printf %s "$3" | base64 -w0)" | p secret create "$1" - >/dev/null
}

control_yaml() {
  cat <<EOF
# The control plane of the demo as pods (deploy/podman/demo.sh). The API serves TLS from the
# mesh CA (the image's default); quiverctl runs inside the container.
apiVersion: v1
kind: Pod
metadata:
  name: $control
  labels: {app: quiver-control, $label: $name}
spec:
  restartPolicy: Always
  containers:
  - name: control
    image: $control_image
    env:
    - {name: QUIVER_ADMIN_TOKEN, valueFrom: {secretKeyRef: {name: $name-admin-token, key: token}}}
    - {name: QUIVER_TLS_NAMES, value: "$control,localhost,127.0.0.1"}
    # What /inject puts into pods, for this network's names.
    - {name: QUIVER_INJECT_CONTROL_PLANE, value: "$control:15010"}
    - {name: QUIVER_INJECT_TRUST_BUNDLE_CONFIGMAP, value: "$name-trust-bundle"}
    - {name: QUIVER_INJECT_JOIN_TOKEN_SECRET, value: "$name-join-{serviceAccount}"}
    volumeMounts:
    - {name: data, mountPath: /var/lib/quiver}
    securityContext:
      runAsUser: 1338
      runAsGroup: 1338
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
  volumes:
  - name: data
    hostPath: {path: $abs_dir/control-data, type: Directory}
EOF
}

# One app pod: capture init step, proxy, app.
app_yaml() { # POD SERVICE SERVICE_ACCOUNT LABELS EXCLUDE_INBOUND HOST_PORT APP_ARGS(json) APP_ENV(yaml flow items)
  local pod=$1 service=$2 sa=$3 labels=$4 exclude_inbound=$5 hport=$6 args=$7 env=$8
  local ports=""
  if [ "$hport" != 0 ]; then
    ports="    ports: [{containerPort: 8080, hostPort: $hport}]"
  fi
  cat <<EOF
---
apiVersion: v1
kind: Pod
metadata:
  name: $name-$pod
  labels: {app: $service, $label: $name}
spec:
  # Not Always: podman 4.3 applies the pod's policy to init containers too, restarts the
  # capture step once it has exited, and then fails to remove it ("once" init containers).
  restartPolicy: OnFailure
  initContainers:
  # The capture rules in the pod's network namespace, then exit. The proxy's own uid is
  # never captured; nor is the control plane's port or the admin port.
  - name: capture
    image: $proxy_image
    command: [/usr/local/bin/quiver-proxy, capture, install, --proxy-uid, "1337",
      --outbound-port, "15002", --inbound-port, "15006", --dns-port, "15053",
      --inbound-ports, "*", --exclude-inbound-ports, "$exclude_inbound",
      --exclude-outbound-ports, "15010"]
    securityContext:
      runAsUser: 0
      runAsGroup: 0
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {add: [NET_ADMIN, NET_RAW], drop: [ALL]}
  containers:
  - name: proxy
    image: $proxy_image
    env:
    - {name: QUIVER_CONTROL_PLANE, value: "$control:15010"}
    - {name: QUIVER_JOIN_TOKEN, valueFrom: {secretKeyRef: {name: $name-join-$sa, key: token}}}
    - {name: QUIVER_CA_CERT, value: /var/run/quiver/trust-bundle/ca.pem}
    - {name: QUIVER_SERVICE, value: $service}
    - {name: QUIVER_LABELS, value: "$labels"}
    - {name: QUIVER_QUIC_LISTEN, value: "0.0.0.0:15443"}
    - {name: QUIVER_ADMIN_LISTEN, value: "0.0.0.0:15020"}
    - {name: QUIVER_CAPTURE, value: "true"}
    - {name: NO_COLOR, value: "1"}
    volumeMounts:
    - {name: trust-bundle, mountPath: /var/run/quiver/trust-bundle, readOnly: true}
    securityContext:
      runAsUser: 1337
      runAsGroup: 1337
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
  - name: app
    image: $demo_image
    args: $args
    env: [$env]
$ports
    securityContext:
      runAsUser: 1000
      runAsGroup: 1000
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
  volumes:
  - name: trust-bundle
    hostPath: {path: $abs_dir/trust-bundle, type: Directory}
EOF
}

apps_yaml() {
  echo "# The demo's apps as pods (deploy/podman/demo.sh)."
  app_yaml frontend frontend frontend "app=frontend" "15020,8080" "$host_port" \
    '[frontend, --listen, "0.0.0.0:8080"]' \
    '{name: QUIVER_DEMO_CATALOG_URL, value: "http://catalog.demo.mesh"}'
  app_yaml catalog-v1 catalog catalog "app=catalog,version=v1" 15020 0 \
    '[catalog, --version, v1, --listen, "0.0.0.0:8080"]' \
    '{name: QUIVER_DEMO_RATINGS_URL, value: "http://ratings.demo.mesh:9090"}'
  app_yaml catalog-v2 catalog catalog "app=catalog,version=v2" 15020 0 \
    '[catalog, --version, v2, --listen, "0.0.0.0:8080"]' \
    '{name: QUIVER_DEMO_RATINGS_URL, value: "http://ratings.demo.mesh:9090"}'
  app_yaml ratings ratings ratings "app=ratings" 15020 0 \
    '[ratings, --listen, "0.0.0.0:9090"]' ''
}

frontend_answer() {
  curl -fsS --max-time 5 "http://$(pod_ip "$name-frontend"):8080/"
}

has_rating() {
  frontend_answer | grep -q '"served_by": "ratings"'
}

up() {
  images
  if p pod exists "$control"; then
    die "pod $control exists already: deploy/podman/demo.sh down first (QUIVER_PODS_NAME=$name)"
  fi
  mkdir -p "$dir"
  chmod 0700 "$dir"
  abs_dir=$(cd "$dir" && pwd)
  dir=$abs_dir
  mkdir -p "$abs_dir/control-data" "$abs_dir/trust-bundle"
  # The control plane runs as uid 1338 and keeps its store (and CA) here.
  chown 1338:1338 "$abs_dir/control-data" 2>/dev/null \
    || p unshare chown 1338:1338 "$abs_dir/control-data"
  chmod 0700 "$abs_dir/control-data"
  if [ ! -s "$abs_dir/admin-token" ]; then
    (umask 077 && printf 'qvr_podman-demo-%s' "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" \
      > "$abs_dir/admin-token")
  fi
  secret "$name-admin-token" token "$(cat "$abs_dir/admin-token")"

  p network exists "$name" || p network create --label "$label=$name" "$name" >/dev/null
  # kube play takes a sub-folder of the current directory named like an image for a build
  # context: play from the state dir, which has none.
  cd "$abs_dir"
  control_yaml > control.yaml
  log "control plane: pod $control on network $name"
  p kube play --network "$name" control.yaml >/dev/null
  wait_for 60 "the control plane's API" quiverctl status
  log "applying deploy/podman/mesh.yaml (Services, the catalog Route 90/10, AuthorizationPolicies)"
  quiverctl apply -f - < "$here/mesh.yaml"
  quiverctl trust-bundle > trust-bundle/ca.pem
  chmod 0644 trust-bundle/ca.pem
  # Many uses: each proxy start (a new pod, a restart) spends one.
  for sa in frontend catalog ratings; do
    secret "$name-join-$sa" token "$(quiverctl join-token create --namespace "$namespace" \
      --service-account "$sa" --uses 100 --ttl 24h 2>/dev/null)"
  done

  if [ "${QUIVER_PODS_APPS:-1}" = 0 ]; then
    log "QUIVER_PODS_APPS=0: the control plane only"
    return
  fi
  apps_yaml > apps.yaml
  log "apps: pods ${apps[*]/#/$name-}"
  p kube play --network "$name" apps.yaml >/dev/null
  if command -v curl >/dev/null; then
    wait_for 120 "frontend answering with a rating (deploy/podman/demo.sh status)" has_rating
    log "frontend answered:"
    frontend_answer
    echo
  fi
  status_hint
}

status_hint() {
  local ip
  ip=$(pod_ip "$name-frontend")
  cat <<EOF

The demo runs as pods (podman pod ps --filter label=$label=$name). Try:
  curl -s http://$ip:8080/                 # frontend: catalog's version, the rating, the callers' SPIFFE ids
EOF
  if [ "$host_port" != 0 ]; then
    echo "  curl -s http://127.0.0.1:$host_port/          # the same, through the published port"
  fi
  cat <<EOF
  ${podman[*]} exec -e QUIVER_TOKEN=\$(cat $dir/admin-token) $ctl quiverctl get workloads
  ${podman[*]} logs $name-catalog-v2-proxy  # a sidecar's log
  deploy/podman/demo.sh status | down
EOF
}

status() {
  p pod ps --filter "label=$label=$name" --format '{{.Name}}\t{{.Status}}'
  [ -s "$dir/admin-token" ] || die "no $dir/admin-token: is the demo up (deploy/podman/demo.sh up)?"
  local pod
  for pod in "$control" "${apps[@]/#/$name-}"; do
    p pod exists "$pod" && printf '%-28s %s\n' "$pod" "$(pod_ip "$pod")"
  done
  quiverctl get workloads
  if command -v curl >/dev/null && p pod exists "$name-frontend"; then
    frontend_answer
    echo
  fi
}

down() {
  local ids
  ids=$(p pod ps -q --filter "label=$label=$name")
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    p pod rm --force --time 0 $ids >/dev/null
  fi
  local s
  for s in $(p secret ls --format '{{.Name}}' | grep -E "^$name-(admin-token|join-)" || true); do
    p secret rm "$s" >/dev/null
  done
  p volume rm --force "$name-trust-bundle" >/dev/null 2>&1 || true
  p network exists "$name" && p network rm --force "$name" >/dev/null
  if [ -d "$dir" ]; then
    rm -rf "$dir" 2>/dev/null || p unshare rm -rf "$dir"
  fi
  log "removed the pods, secrets and network of $name, and $dir"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) die "usage: deploy/podman/demo.sh up|status|down" ;;
esac
