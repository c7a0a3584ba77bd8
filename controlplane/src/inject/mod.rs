//! The sidecar injector: a Kubernetes mutating admission webhook (AdmissionReview v1 in, an
//! AdmissionReview response with an RFC 6902 JSON patch out) that gives an opted-in Pod the
//! capture init step, the proxy as a native sidecar, the trust-bundle volume and the
//! `quiver.dev/injected` annotation. docs/deploy.md, "Sidecar injector", is the contract.
//!
//! Pure: bytes in, a document out; no I/O, no clock, no store. The one HTTP route over it is
//! `http.rs` (mounted on the API listener by `server.rs`). It must not read the environment
//! (its settings are [`InjectConfig`], parsed once with the other flags) and must never panic
//! on what the API server sends: a body it cannot even take the `request.uid` from is
//! [`Unreadable`] (HTTP 400); every other bad request gets a well-formed refusal
//! (`allowed: false`, code 400, the field named), in line with the webhook's
//! `failurePolicy: Fail`: an opted-in Pod is never admitted without its sidecar.

pub mod http;
mod patch;
mod pod;

use base64::Engine as _;
use serde_json::{Value, json};

use pod::PodView;

/// The AdmissionReview version the injector speaks (`admissionReviewVersions: [v1]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// Set on every injected Pod; a Pod that has it is never patched again.
pub const INJECTED_ANNOTATION: &str = "quiver.dev/injected";
/// `"false"` opts a Pod out even when it carries the opt-in label.
pub const OPT_OUT_ANNOTATION: &str = "sidecar.quiver.dev/inject";
/// The mesh Service a Pod is an endpoint of; without it, the `app` label.
pub const SERVICE_LABEL: &str = "quiver.dev/service";
/// Fallback for [`SERVICE_LABEL`].
pub const APP_LABEL: &str = "app";
/// Capture settings a Pod may give as annotations (comma-separated lists).
pub const INBOUND_PORTS_ANNOTATION: &str = "quiver.dev/inbound-ports";
pub const EXCLUDE_INBOUND_PORTS_ANNOTATION: &str = "quiver.dev/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS_ANNOTATION: &str = "quiver.dev/exclude-outbound-ports";
pub const EXCLUDE_CIDRS_ANNOTATION: &str = "quiver.dev/exclude-cidrs";
/// `"false"` keeps the app's probes as they are (the injector rewrites those to captured
/// ports to the sidecar's admin port by default; docs/deploy.md, "Probes").
pub const REWRITE_PROBES_ANNOTATION: &str = "quiver.dev/rewrite-app-probes";
/// The key of the join-token Secret that holds the token.
pub const JOIN_TOKEN_KEY: &str = "token";
/// The key of the trust-bundle ConfigMap that holds the mesh CA (PEM).
pub const TRUST_BUNDLE_KEY: &str = "ca.pem";

/// The sidecar image of this release.
pub const DEFAULT_PROXY_IMAGE: &str = concat!("localhost/quiver-proxy:", env!("CARGO_PKG_VERSION"));

/// The injector's settings: `quiver-control` flags, each with a `QUIVER_INJECT_*` variable.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[command(next_help_heading = "Sidecar injector (POST /inject)")]
pub struct InjectConfig {
    /// The sidecar image injected pods run (the capture step and the proxy).
    #[arg(long = "inject-proxy-image", env = "QUIVER_INJECT_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// imagePullPolicy of the injected containers.
    #[arg(
        long = "inject-pull-policy",
        env = "QUIVER_INJECT_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub pull_policy: String,
    /// HOST:PORT of the discovery listener the injected sidecars dial; its port is also
    /// excluded from outbound capture.
    #[arg(
        long = "inject-control-plane",
        env = "QUIVER_INJECT_CONTROL_PLANE",
        default_value = "quiver-control.quiver-system.svc:15010",
        value_parser = host_port
    )]
    pub control_plane: String,
    /// The ConfigMap (in the pod's namespace) whose `ca.pem` is the mesh CA
    /// (`quiverctl trust-bundle`).
    #[arg(
        long = "inject-trust-bundle-configmap",
        env = "QUIVER_INJECT_TRUST_BUNDLE_CONFIGMAP",
        default_value = "quiver-trust-bundle",
        value_parser = object_name
    )]
    pub trust_bundle_configmap: String,
    /// The Secret (in the pod's namespace) whose `token` is the sidecar's join token;
    /// `{serviceAccount}` and `{service}` are replaced by the pod's.
    #[arg(
        long = "inject-join-token-secret",
        env = "QUIVER_INJECT_JOIN_TOKEN_SECRET",
        default_value = "quiver-join-{serviceAccount}",
        value_parser = secret_pattern
    )]
    pub join_token_secret: String,
    /// Add the transparent-capture init step (and QUIVER_CAPTURE=true): true or false.
    #[arg(
        long = "inject-capture",
        env = "QUIVER_INJECT_CAPTURE",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub capture: bool,
    /// The pod label, KEY=VALUE, that opts a pod in (the webhook's objectSelector must
    /// select the same).
    #[arg(
        long = "inject-label",
        env = "QUIVER_INJECT_LABEL",
        default_value = "quiver.dev/inject=enabled",
        value_parser = label_pair
    )]
    pub label: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            pull_policy: "IfNotPresent".into(),
            control_plane: "quiver-control.quiver-system.svc:15010".into(),
            trust_bundle_configmap: "quiver-trust-bundle".into(),
            join_token_secret: "quiver-join-{serviceAccount}".into(),
            capture: true,
            label: "quiver.dev/inject=enabled".into(),
        }
    }
}

fn host_port(s: &str) -> Result<String, String> {
    let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
        let bracketed = host.starts_with('[') == host.ends_with(']');
        !host.is_empty() && bracketed && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not HOST:PORT"))
    }
}

/// The port of a HOST:PORT [`host_port`] accepted.
fn port_of(host_port: &str) -> Option<u16> {
    host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn label_pair(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() && !v.contains('=') => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn object_name(s: &str) -> Result<String, String> {
    check_subdomain(s).map(|()| s.to_string())
}

fn secret_pattern(s: &str) -> Result<String, String> {
    let sample = s
        .replace("{serviceAccount}", "sa")
        .replace("{service}", "svc");
    if sample.contains(['{', '}']) {
        return Err(format!(
            "{s:?}: the placeholders are {{serviceAccount}} and {{service}}"
        ));
    }
    check_subdomain(&sample)
        .map(|()| s.to_string())
        .map_err(|e| format!("{s:?}: {e}"))
}

/// A Kubernetes object name (RFC 1123 subdomain): what Secret and ConfigMap names must be.
fn check_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes object name (lowercase letters, digits, '-' and '.', at \
             most 253)"
        ))
    }
}

/// An AdmissionReview from which not even `request.uid` can be read: no answer can name the
/// request, so the HTTP answer is 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// Why a request was refused: a field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// A refusal quotes the request (a label value, a port), which the API server has not
/// validated yet: bounded, so a huge value neither travels back whole nor fills the log.
const MAX_REFUSAL: usize = 512;

impl Refusal {
    fn field(path: &str, problem: &str) -> Self {
        let mut message = format!("{path}: {problem}");
        if message.len() > MAX_REFUSAL {
            let mut end = MAX_REFUSAL;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        Self(message)
    }
}

/// What the injector did with one review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed with the patch.
    Injected { pod: String, service: String },
    /// Allowed unchanged.
    Untouched { pod: String, why: String },
    /// Refused (`allowed: false`, code 400).
    Refused(Refusal),
}

/// One answered review: the AdmissionReview to send back and what it decided.
#[derive(Debug, Clone)]
pub struct Reviewed {
    pub document: Value,
    pub decision: Decision,
}

/// The injector: its settings and the mesh's trust domain (the sidecars must expect it).
#[derive(Debug, Clone)]
pub struct Injector {
    config: InjectConfig,
    trust_domain: String,
}

impl Injector {
    pub fn new(config: InjectConfig, trust_domain: &str) -> Self {
        Self {
            config,
            trust_domain: trust_domain.to_string(),
        }
    }

    /// Answer one AdmissionReview (the request body as received).
    pub fn review(&self, body: &[u8]) -> Result<Reviewed, Unreadable> {
        let doc: Value = serde_json::from_slice(body)
            .map_err(|e| Unreadable(format!("the body is not JSON: {e}")))?;
        let request = doc
            .get("request")
            .filter(|r| r.is_object())
            .ok_or_else(|| {
                Unreadable(
                    "request: missing or not an object (an AdmissionReview v1 request has one)"
                        .into(),
                )
            })?;
        let uid = request
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Unreadable("request.uid: missing or not a string".into()))?;
        let (document, decision) = match self.decide(&doc, request) {
            Ok((decision, patch)) => (allowed(uid, patch.as_ref()), decision),
            Err(refusal) => (refused(uid, &refusal), Decision::Refused(refusal)),
        };
        Ok(Reviewed { document, decision })
    }

    /// The decision and, when injecting, the patch.
    fn decide(&self, doc: &Value, request: &Value) -> Result<(Decision, Option<Patch>), Refusal> {
        match doc.get("apiVersion").and_then(Value::as_str) {
            Some(API_VERSION) => {}
            other => {
                return Err(Refusal::field(
                    "apiVersion",
                    &format!(
                        "{}; the injector speaks {API_VERSION} only (admissionReviewVersions: [v1])",
                        shown(other)
                    ),
                ));
            }
        }
        match doc.get("kind").and_then(Value::as_str) {
            Some("AdmissionReview") => {}
            other => {
                return Err(Refusal::field(
                    "kind",
                    &format!("{}; expected AdmissionReview", shown(other)),
                ));
            }
        }
        let kind = request
            .get("kind")
            .filter(|k| k.is_object())
            .ok_or_else(|| Refusal::field("request.kind", "missing"))?;
        let part = |key: &str| kind.get(key).and_then(Value::as_str).unwrap_or_default();
        if (part("group"), part("version"), part("kind")) != ("", "v1", "Pod") {
            return Err(Refusal::field(
                "request.kind",
                &format!(
                    "{:?}/{:?} {:?}; the injector mutates core/v1 Pods only (webhook rules: \
                     pods, CREATE)",
                    part("group"),
                    part("version"),
                    part("kind")
                ),
            ));
        }
        let operation = request
            .get("operation")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::field("request.operation", "missing or not a string"))?;
        let object = request.get("object").filter(|o| !o.is_null());
        if operation != "CREATE" {
            // A Pod's containers cannot change after creation: nothing to do, nothing wrong.
            let pod = object
                .and_then(|o| o.pointer("/metadata/name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let why = format!("operation {operation}: only CREATE is mutated");
            return Ok((Decision::Untouched { pod, why }, None));
        }
        let object = object.ok_or_else(|| Refusal::field("request.object", "missing"))?;
        let pod = PodView::read(object)?;
        let untouched = |why: &str| {
            Ok((
                Decision::Untouched {
                    pod: pod.name.clone(),
                    why: why.to_string(),
                },
                None,
            ))
        };
        let (label_key, label_value) = self
            .config
            .label
            .split_once('=')
            .unwrap_or((self.config.label.as_str(), ""));
        if pod.labels.get(label_key).map(String::as_str) != Some(label_value) {
            return untouched(&format!("no {label_key}={label_value} label"));
        }
        let annotation = |key: &str| pod.annotations.as_ref().and_then(|a| a.get(key));
        if annotation(OPT_OUT_ANNOTATION).map(String::as_str) == Some("false") {
            return untouched(&format!("opted out ({OPT_OUT_ANNOTATION}: \"false\")"));
        }
        if annotation(INJECTED_ANNOTATION).is_some() {
            return untouched(&format!("already injected ({INJECTED_ANNOTATION})"));
        }
        let plan = patch::Plan::new(&self.config, &self.trust_domain, &pod)?;
        let patch = Patch {
            operations: plan.operations(&pod),
            warnings: plan.warnings.clone(),
        };
        let decision = Decision::Injected {
            pod: pod.name.clone(),
            service: plan.service.clone(),
        };
        Ok((decision, Some(patch)))
    }
}

fn shown(v: Option<&str>) -> String {
    v.map_or_else(|| "missing".to_string(), |s| format!("{s:?}"))
}

/// The JSON patch for one Pod, and the warnings that go with it.
struct Patch {
    operations: Vec<Value>,
    warnings: Vec<String>,
}

/// `allowed: true`, with the patch when there is one.
fn allowed(uid: &str, patch: Option<&Patch>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch {
        // Serializing a Value built from strings, numbers and maps cannot fail.
        let bytes = serde_json::to_vec(&patch.operations).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        if !patch.warnings.is_empty() {
            response["warnings"] = json!(patch.warnings);
        }
    }
    review_document(response)
}

/// `allowed: false` with code 400 and the reason (kubectl shows the message).
fn refused(uid: &str, refusal: &Refusal) -> Value {
    review_document(json!({
        "uid": uid,
        "allowed": false,
        "status": {
            "code": 400,
            "reason": "BadRequest",
            "message": format!("quiver sidecar injector: {refusal}"),
        },
    }))
}

fn review_document(response: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
}

/// A JSON pointer token (RFC 6901): `~` as `~0`, `/` as `~1`, in that order.
pub fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests;
