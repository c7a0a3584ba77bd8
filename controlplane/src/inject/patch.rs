//! What an injected Pod gets, decided from its [`PodView`]: the capture init step, the proxy
//! as a native sidecar (an init container with `restartPolicy: Always` and a startup probe on
//! `/readyz`, so the app's containers start only once the proxy has its first snapshot), the
//! trust-bundle volume and the injected annotation, as RFC 6902 operations.
//!
//! The two containers go in front of the Pod's own init containers: capture is in place
//! before any of them runs, and the proxy is ready by then, so init containers reach the
//! mesh too (kubelet starts the next init container once a native sidecar's startup probe
//! passes).

use serde_json::{Value, json};

use super::pod::PodView;
use super::{
    APP_LABEL, EXCLUDE_CIDRS_ANNOTATION, EXCLUDE_INBOUND_PORTS_ANNOTATION,
    EXCLUDE_OUTBOUND_PORTS_ANNOTATION, INBOUND_PORTS_ANNOTATION, INJECTED_ANNOTATION, InjectConfig,
    JOIN_TOKEN_KEY, REWRITE_PROBES_ANNOTATION, Refusal, SERVICE_LABEL, TRUST_BUNDLE_KEY,
    check_subdomain, pointer_token, port_of,
};

/// The proxy's uid (the image's user): capture lets its own traffic out uncaptured.
pub const PROXY_UID: u16 = 1337;
pub const QUIC_PORT: u16 = 15443;
pub const ADMIN_PORT: u16 = 15020;
pub const HTTP_PROXY_PORT: u16 = 15001;
pub const OUTBOUND_PORT: u16 = 15002;
pub const INBOUND_PORT: u16 = 15006;
pub const DNS_PORT: u16 = 15053;
/// Ports the sidecar binds in the Pod's network namespace: an app container may not declare
/// them.
const RESERVED_PORTS: [u16; 6] = [
    QUIC_PORT,
    ADMIN_PORT,
    HTTP_PROXY_PORT,
    OUTBOUND_PORT,
    INBOUND_PORT,
    DNS_PORT,
];

pub const CAPTURE_CONTAINER: &str = "quiver-capture";
pub const PROXY_CONTAINER: &str = "quiver-proxy";
pub const TRUST_BUNDLE_VOLUME: &str = "quiver-trust-bundle";
pub const TRUST_BUNDLE_DIR: &str = "/var/run/quiver/trust-bundle";
const PROXY_BINARY: &str = "/usr/local/bin/quiver-proxy";

/// Pod labels that are not workload labels: the injector's own, and those Kubernetes
/// controllers set per Pod or per rollout (they would only split subsets by accident).
const NOT_WORKLOAD_LABELS: [&str; 10] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "job-name",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
    "apps.kubernetes.io/pod-index",
    "statefulset.kubernetes.io/pod-name",
];

/// Everything the patch needs, checked.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    config: &'a InjectConfig,
    trust_domain: &'a str,
    /// The mesh Service the Pod is an endpoint of.
    pub service: String,
    labels: String,
    secret: String,
    capture_args: Vec<String>,
    /// The app's probes rewritten to the sidecar's admin port (JSON patch operations), and
    /// the originals the sidecar checks for them (`QUIVER_APP_PROBES`).
    probes: Rewrites,
    /// For the AdmissionReview's `warnings` (kubectl shows them).
    pub warnings: Vec<String>,
}

impl<'a> Plan<'a> {
    pub fn new(
        config: &'a InjectConfig,
        trust_domain: &'a str,
        pod: &PodView,
    ) -> Result<Self, Refusal> {
        const LABELS: &str = "request.object.metadata.labels";
        if pod.host_network {
            return Err(Refusal::field(
                "request.object.spec.hostNetwork",
                "true; a host-network Pod cannot be injected (capture would rewrite the \
                 node's own rules); remove the opt-in label",
            ));
        }
        let (label, service) = match (pod.labels.get(SERVICE_LABEL), pod.labels.get(APP_LABEL)) {
            (Some(s), _) => (SERVICE_LABEL, s.clone()),
            (None, Some(a)) => (APP_LABEL, a.clone()),
            (None, None) => {
                return Err(Refusal::field(
                    LABELS,
                    &format!(
                        "neither {SERVICE_LABEL:?} nor {APP_LABEL:?}: one of them names the \
                         mesh Service this Pod is an endpoint of"
                    ),
                ));
            }
        };
        quiver_api::validate::check_dns_label(&service)
            .map_err(|e| Refusal::field(&format!("{LABELS}[{label:?}]"), &e))?;
        for c in pod.all_containers() {
            if c.name == CAPTURE_CONTAINER || c.name == PROXY_CONTAINER {
                return Err(Refusal::field(
                    "request.object.spec",
                    &format!(
                        "a container is already named {:?}, the injector's own name, but the \
                         Pod has no {INJECTED_ANNOTATION:?} annotation",
                        c.name
                    ),
                ));
            }
            if let Some((_, port)) = c.ports.iter().find(|(_, p)| RESERVED_PORTS.contains(p)) {
                return Err(Refusal::field(
                    "request.object.spec",
                    &format!(
                        "container {:?} declares port {port}, which the sidecar uses \
                         ({RESERVED_PORTS:?} are reserved)",
                        c.name
                    ),
                ));
            }
        }
        if pod
            .volumes
            .iter()
            .flatten()
            .any(|v| v == TRUST_BUNDLE_VOLUME)
        {
            return Err(Refusal::field(
                "request.object.spec.volumes",
                &format!("a volume is already named {TRUST_BUNDLE_VOLUME:?}, the injector's own"),
            ));
        }
        let secret = config
            .join_token_secret
            .replace("{serviceAccount}", &pod.service_account)
            .replace("{service}", &service);
        check_subdomain(&secret).map_err(|e| {
            Refusal::field(
                "request.object.spec.serviceAccountName",
                &format!("the join-token Secret name (--inject-join-token-secret): {e}"),
            )
        })?;
        let (opt_in, _) = config.label.split_once('=').unwrap_or_default();
        let labels = pod
            .labels
            .iter()
            .filter(|(k, v)| {
                k.as_str() != opt_in
                    && !k.starts_with("quiver.dev/")
                    && !k.starts_with("sidecar.quiver.dev/")
                    && !NOT_WORKLOAD_LABELS.contains(&k.as_str())
                    // The control plane's limit for a workload label's key.
                    && k.len() <= 63
                    // Not representable in QUIVER_LABELS; the API server refuses such a
                    // label anyway when it validates the Pod after the webhooks.
                    && !k.contains([',', '=']) && !v.contains([',', '='])
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let (capture_args, probes) = if config.capture {
            capture_args(config, pod)?
        } else {
            (Vec::new(), Rewrites::default())
        };
        let warnings = probes.warnings.clone();
        Ok(Self {
            config,
            trust_domain,
            service,
            labels,
            secret,
            capture_args,
            probes,
            warnings,
        })
    }

    /// The JSON patch: rewritten probes (first: their pointers count the Pod's own
    /// containers), init containers (created, or inserted at the front), the volume (created
    /// or appended), the annotation (created or added).
    pub fn operations(&self, pod: &PodView) -> Vec<Value> {
        let mut front = Vec::new();
        if self.config.capture {
            front.push(self.capture_container());
        }
        front.push(self.proxy_container());
        let mut ops = self.probes.ops.clone();
        match pod.init_containers {
            None => ops.push(add("/spec/initContainers", Value::Array(front))),
            Some(_) => {
                for (i, c) in front.into_iter().enumerate() {
                    ops.push(add(&format!("/spec/initContainers/{i}"), c));
                }
            }
        }
        let volume = json!({
            "name": TRUST_BUNDLE_VOLUME,
            "configMap": {"name": self.config.trust_bundle_configmap},
        });
        ops.push(match pod.volumes {
            None => add("/spec/volumes", json!([volume])),
            Some(_) => add("/spec/volumes/-", volume),
        });
        ops.push(match pod.annotations {
            None => add(
                "/metadata/annotations",
                json!({INJECTED_ANNOTATION: "true"}),
            ),
            Some(_) => add(
                &format!(
                    "/metadata/annotations/{}",
                    pointer_token(INJECTED_ANNOTATION)
                ),
                json!("true"),
            ),
        });
        ops
    }

    fn capture_container(&self) -> Value {
        let mut command = vec![PROXY_BINARY.to_string(), "capture".into(), "install".into()];
        command.extend(self.capture_args.iter().cloned());
        json!({
            "name": CAPTURE_CONTAINER,
            "image": self.config.proxy_image,
            "imagePullPolicy": self.config.pull_policy,
            "command": command,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {
                // nft needs root with CAP_NET_ADMIN in the Pod's network namespace; it runs
                // once and exits before anything else in the Pod starts.
                "runAsUser": 0,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "privileged": false,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        })
    }

    fn proxy_container(&self) -> Value {
        let readyz = json!({"path": "/readyz", "port": ADMIN_PORT});
        let mut env = vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
            env_var("QUIVER_CONTROL_PLANE", &self.config.control_plane),
            json!({
                "name": "QUIVER_JOIN_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": self.secret, "key": JOIN_TOKEN_KEY}},
            }),
            env_var(
                "QUIVER_CA_CERT",
                &format!("{TRUST_BUNDLE_DIR}/{TRUST_BUNDLE_KEY}"),
            ),
            env_var("QUIVER_TRUST_DOMAIN", self.trust_domain),
            env_var("QUIVER_SERVICE", &self.service),
        ];
        if !self.labels.is_empty() {
            env.push(env_var("QUIVER_LABELS", &self.labels));
        }
        env.extend([
            // Expanded by kubelet from POD_IP above.
            env_var("QUIVER_ADVERTISE", &format!("$(POD_IP):{QUIC_PORT}")),
            env_var("QUIVER_QUIC_LISTEN", &format!("0.0.0.0:{QUIC_PORT}")),
            // Not loopback: kubelet's probes come from the node. POST /quitquitquit still
            // answers loopback callers only.
            env_var("QUIVER_ADMIN_LISTEN", &format!("0.0.0.0:{ADMIN_PORT}")),
        ]);
        if self.config.capture {
            env.push(env_var("QUIVER_CAPTURE", "true"));
        }
        if !self.probes.originals.is_empty() {
            env.push(env_var(
                "QUIVER_APP_PROBES",
                &Value::Object(self.probes.originals.clone()).to_string(),
            ));
        }
        json!({
            "name": PROXY_CONTAINER,
            "image": self.config.proxy_image,
            "imagePullPolicy": self.config.pull_policy,
            "command": [PROXY_BINARY],
            // A native sidecar: started before the app's containers, stopped after them.
            "restartPolicy": "Always",
            "env": env,
            "ports": [
                {"name": "quiver-quic", "containerPort": QUIC_PORT, "protocol": "UDP"},
                {"name": "quiver-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
            ],
            "volumeMounts": [
                {"name": TRUST_BUNDLE_VOLUME, "mountPath": TRUST_BUNDLE_DIR, "readOnly": true},
            ],
            // Ready = joined and holding a first snapshot. Until then kubelet starts nothing
            // after this container; a long wait covers a control plane that is briefly away
            // (each restart would spend another use of the join token).
            "startupProbe": {
                "httpGet": readyz,
                "periodSeconds": 1,
                "timeoutSeconds": 1,
                "failureThreshold": 300,
            },
            "readinessProbe": {
                "httpGet": readyz,
                "periodSeconds": 5,
                "timeoutSeconds": 1,
                "failureThreshold": 3,
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {
                "runAsUser": PROXY_UID,
                "runAsGroup": PROXY_UID,
                "runAsNonRoot": true,
                "privileged": false,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        })
    }
}

/// `quiver-proxy capture install` flags for this Pod, and what becomes of the app's probes.
fn capture_args(config: &InjectConfig, pod: &PodView) -> Result<(Vec<String>, Rewrites), Refusal> {
    let annotation = |key: &str| pod.annotations.as_ref().and_then(|a| a.get(key));
    let inbound = match annotation(INBOUND_PORTS_ANNOTATION).map(|s| s.trim()) {
        None | Some("*") => "*".to_string(),
        Some(_) => join(&ports(pod, INBOUND_PORTS_ANNOTATION)?),
    };
    // The admin port: kubelet probes the sidecar there, in plaintext from the node, and the
    // app's probes are rewritten to it. The app's probe ports are not excluded on their own:
    // that would open them to plaintext from anywhere, around strict mode and authorization.
    let mut exclude_inbound = vec![ADMIN_PORT];
    exclude_inbound.extend(ports(pod, EXCLUDE_INBOUND_PORTS_ANNOTATION)?);
    // The control plane's port: app containers talking to the control plane (quiverctl in a
    // Job) go to it directly, as the proxy itself does.
    let mut exclude_outbound: Vec<u16> = port_of(&config.control_plane).into_iter().collect();
    exclude_outbound.extend(ports(pod, EXCLUDE_OUTBOUND_PORTS_ANNOTATION)?);
    let rewrite = annotation(REWRITE_PROBES_ANNOTATION).map(|s| s.trim()) != Some("false");
    let probes = probes(pod, &inbound, &exclude_inbound, rewrite);
    let mut args = vec![
        "--proxy-uid".to_string(),
        PROXY_UID.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--dns-port".into(),
        DNS_PORT.to_string(),
        "--inbound-ports".into(),
        inbound,
        "--exclude-inbound-ports".into(),
        join(&exclude_inbound),
        "--exclude-outbound-ports".into(),
        join(&exclude_outbound),
    ];
    if let Some(cidrs) = annotation(EXCLUDE_CIDRS_ANNOTATION) {
        let list = cidrs
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                cidr(c).ok_or_else(|| {
                    Refusal::field(
                        &annotation_path(EXCLUDE_CIDRS_ANNOTATION),
                        &format!("{c:?} is not an IPv4 address or ADDRESS/PREFIX"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !list.is_empty() {
            args.extend(["--exclude-cidrs".to_string(), list.join(",")]);
        }
    }
    Ok((args, probes))
}

/// The app's probes on captured ports, and what the injector does with them.
#[derive(Debug, Default)]
struct Rewrites {
    /// `replace` operations: each probe now asks the sidecar's admin port.
    ops: Vec<Value>,
    /// `/app-health/<container>/<kind>` to the original probe, for `QUIVER_APP_PROBES`.
    originals: serde_json::Map<String, Value>,
    warnings: Vec<String>,
}

/// kubelet probes in plaintext from the node, and strict mode (the proxy's default) refuses
/// plaintext from outside the pod: a probe to a captured port would fail (`httpGet`,
/// `grpc`) or pass without reaching the app (`tcpSocket`: the proxy's inbound listener takes
/// the connection). So each such probe becomes an `httpGet` of
/// `/app-health/<container>/<livez|readyz|startupz>` on the admin port, keeping its timings,
/// and the sidecar runs the original check from inside the Pod (`quiver_proxy::app_health`).
/// An `HTTPS` probe stays HTTPS between the sidecar and the app (unverified, as kubelet makes
/// it); kubelet's own probe of the admin port is plain HTTP. Not rewritten: probes to another
/// `host` (they do not reach this Pod) and, with `quiver.dev/rewrite-app-probes: "false"`,
/// every probe; those to captured ports are named in a warning.
fn probes(pod: &PodView, inbound: &str, excluded: &[u16], rewrite: bool) -> Rewrites {
    let captured = |port: u16| {
        !excluded.contains(&port)
            && (inbound == "*" || inbound.split(',').any(|p| p == port.to_string()))
    };
    let mut out = Rewrites::default();
    for c in pod.all_containers() {
        for p in c.probes.iter().filter(|p| captured(p.port)) {
            let handler = p
                .raw
                .get(p.handler)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let text = |key: &str| handler.get(key).and_then(Value::as_str).unwrap_or("");
            if !text("host").is_empty() {
                continue;
            }
            if !rewrite {
                if p.handler != "tcpSocket" {
                    out.warnings.push(format!(
                        "quiver: {:?} {} ({}) to captured port {}: not rewritten, and strict \
                         mode refuses kubelet's plaintext; see \
                         {EXCLUDE_INBOUND_PORTS_ANNOTATION}",
                        c.name, p.probe, p.handler, p.port,
                    ));
                }
                continue;
            }
            let kind = match p.probe {
                "startupProbe" => "startupz",
                "livenessProbe" => "livez",
                _ => "readyz",
            };
            let path = format!("/app-health/{}/{kind}", c.name);
            let mut original = handler.clone();
            original.insert("port".into(), json!(p.port));
            if p.handler == "httpGet" {
                // kubelet puts a missing leading slash back; so does the sidecar's copy.
                let given = text("path");
                let path = if given.starts_with('/') {
                    given.to_string()
                } else {
                    format!("/{given}")
                };
                original.insert("path".into(), json!(path));
            }
            let mut check = serde_json::Map::new();
            check.insert(p.handler.into(), Value::Object(original));
            if let Some(t) = p.raw.get("timeoutSeconds") {
                check.insert("timeoutSeconds".into(), t.clone());
            }
            out.originals.insert(path.clone(), Value::Object(check));
            let mut probe = p.raw.clone();
            probe.remove(p.handler);
            probe.insert(
                "httpGet".into(),
                json!({"path": path, "port": ADMIN_PORT, "scheme": "HTTP"}),
            );
            out.ops.push(json!({
                "op": "replace",
                "path": format!("{}/{}", c.pointer, p.probe),
                "value": probe,
            }));
        }
    }
    out
}

/// A port list annotation (`8080,9090`); empty when absent.
fn ports(pod: &PodView, key: &str) -> Result<Vec<u16>, Refusal> {
    let Some(text) = pod.annotations.as_ref().and_then(|a| a.get(key)) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Refusal::field(
                    &annotation_path(key),
                    &format!("{p:?} is not a port (1..65535)"),
                )
            })
        })
        .collect()
}

/// An IPv4 address or CIDR, as `capture install --exclude-cidrs` takes them (capture's rules
/// are IPv4 only).
fn cidr(s: &str) -> Option<String> {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some(format!("{addr}/{prefix}"))
}

fn annotation_path(key: &str) -> String {
    format!("request.object.metadata.annotations[{key:?}]")
}

/// Ports, comma-separated, each once, in first-seen order.
fn join(ports: &[u16]) -> String {
    let mut seen = Vec::new();
    for p in ports {
        if !seen.contains(p) {
            seen.push(*p);
        }
    }
    seen.iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

fn env_var(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

fn field_env(name: &str, field: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}})
}
