//! The static config file (`quiver-proxy --config FILE`) and its validation.
//!
//! The file is parsed once into [`ProxyConfig`]: a [`Bootstrap`] (what the process binds and
//! who it is) and a [`Snapshot`] (what it serves and may call). The control plane's pushed
//! snapshot lands in the same `Snapshot` type, so the data path never knows where its
//! config came from. Validation reports every problem in one pass, each naming its field.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use quiver_api::SpiffeId;
use quiver_api::duration::serde_human;
use quiver_api::validate::check_dns_label;
use serde::{Deserialize, Serialize};

use crate::app_health::AppProbes;
use crate::snapshot::{Endpoint, LocalPort, Protocol, RemoteService, Snapshot};

/// One problem in a config file: where (the field path) and why. The same type the API's
/// validation and the policy compiler report.
pub use quiver_api::validate::FieldError;

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---- the file schema ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    identity: Option<IdentityFile>,
    #[serde(default)]
    control_plane: Option<ControlPlaneFile>,
    #[serde(default)]
    listen: ListenFile,
    #[serde(default = "default_drain", with = "serde_human")]
    drain_timeout: Duration,
    #[serde(default)]
    inbound: Vec<InboundFile>,
    #[serde(default)]
    outbound: Vec<OutboundFile>,
    #[serde(default)]
    services: Vec<ServiceFile>,
    /// The zone this proxy runs in, for locality-aware balancing.
    #[serde(default)]
    zone: String,
    #[serde(default)]
    routes: Vec<quiver_api::v1::RouteSpec>,
    #[serde(default)]
    authorization: Vec<quiver_policy::authz::NamedPolicy>,
    #[serde(default)]
    mesh: quiver_api::v1::MeshConfigSpec,
    /// Static mode's deny-list (control-plane mode is sent one).
    #[serde(default)]
    revocations: Vec<RevocationFile>,
    #[serde(default)]
    tuning: Tuning,
    /// Transparent capture's listeners (docs/deploy.md); absent: off.
    #[serde(default)]
    capture: Option<CaptureFile>,
    /// The app's probes the admin listener checks for kubelet (`/app-health/...` paths to
    /// Kubernetes probe handlers; the injector sets them with `--app-probes`).
    #[serde(default)]
    app_probes: Option<serde_json::Value>,
}

/// `capture:`: where the capture rules' redirects arrive and what happens to them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureFile {
    #[serde(default = "default_capture_outbound")]
    outbound_listen: SocketAddr,
    #[serde(default = "default_capture_inbound")]
    inbound_listen: SocketAddr,
    /// The local DNS resolver; `null` turns it off.
    #[serde(default = "default_capture_dns")]
    dns_listen: Option<SocketAddr>,
    /// Resolvers for names outside the mesh [default: /etc/resolv.conf's nameservers].
    #[serde(default)]
    dns_upstreams: Vec<SocketAddr>,
    #[serde(default = "default_egress")]
    egress: Egress,
    #[serde(default = "default_plaintext")]
    inbound_plaintext: Plaintext,
    #[serde(default = "default_detect", with = "serde_human")]
    detect_timeout: Duration,
}

impl Default for CaptureFile {
    fn default() -> Self {
        Self {
            outbound_listen: default_capture_outbound(),
            inbound_listen: default_capture_inbound(),
            dns_listen: default_capture_dns(),
            dns_upstreams: Vec::new(),
            egress: default_egress(),
            inbound_plaintext: default_plaintext(),
            detect_timeout: default_detect(),
        }
    }
}

fn default_capture_outbound() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15002))
}
fn default_capture_inbound() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15006))
}
#[allow(clippy::unnecessary_wraps)] // serde's default for an Option field
fn default_capture_dns() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 15053)))
}
fn default_egress() -> Egress {
    Egress::Allow
}
fn default_plaintext() -> Plaintext {
    Plaintext::Refuse
}
fn default_detect() -> Duration {
    Duration::from_millis(100)
}

/// A revoked identity in a static file: certificates of `spiffe_id` whose notBefore is
/// earlier than `not_before_unix` (Unix seconds) are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationFile {
    spiffe_id: String,
    not_before_unix: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    cert: PathBuf,
    key: PathBuf,
    trust_bundle: PathBuf,
    #[serde(default = "default_reload", with = "serde_human")]
    reload_interval: Duration,
}

fn default_reload() -> Duration {
    Duration::from_secs(10)
}

/// `control_plane:`: join a control plane instead of reading `identity` and `services` from
/// the file. Every field may also come from a command-line flag ([`Overrides`]).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneFile {
    /// The discovery listener, `host:port` (an `https://` prefix is accepted).
    pub address: Option<String>,
    /// One-time token from `quiverctl join-token create`.
    pub join_token: Option<String>,
    /// PEM file with the mesh CA: the control plane's certificate must chain to it.
    pub ca_cert: Option<PathBuf>,
    /// The mesh's trust domain (default `mesh.local`).
    pub trust_domain: Option<String>,
    /// The SPIFFE id the control plane must prove (default
    /// `spiffe://<trust_domain>/ns/quiver-system/sa/control-plane`): any other certificate of
    /// the mesh, a workload's included, is refused as the control plane.
    pub control_plane_id: Option<String>,
    /// The Service this workload is an endpoint of.
    pub service: Option<String>,
    /// Workload labels, matched by the Service's subsets (e.g. `version: v2`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `ip:port` peers dial to reach this proxy (default: the QUIC listen address, or, when
    /// that is 0.0.0.0, the local IP that routes to the control plane, with the QUIC port).
    pub advertise: Option<SocketAddr>,
    /// Where the local app listens (default 127.0.0.1): inbound requests go to
    /// `app_host:targetPort` of the Service's ports.
    pub app_host: Option<IpAddr>,
    /// Spans held for the control plane while it is slow or away (default 8192); beyond
    /// that new spans are dropped and counted, never waited for.
    pub span_queue: Option<usize>,
    /// How often per-destination request counts are sent (default 10s, 1s..60s): what
    /// canary checks are judged by, so at most a check's interval.
    #[serde(default, with = "quiver_api::duration::serde_human_opt")]
    pub edge_interval: Option<std::time::Duration>,
}

/// How often a joined proxy sends per-destination request counts by default.
pub const DEFAULT_EDGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Spans a joined proxy holds for the control plane by default.
pub const DEFAULT_SPAN_QUEUE: usize = 8192;
/// The largest span queue accepted (a span is a few hundred bytes).
pub const MAX_SPAN_QUEUE: usize = 1_000_000;

/// Command-line flags that override (or, without a file, replace) the config file's fields.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub control_plane: ControlPlaneFile,
    pub quic_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub http_proxy_listen: Option<SocketAddr>,
    pub zone: Option<String>,
    pub drain_timeout: Option<Duration>,
    /// Added after the file's `outbound` entries: (listen, service, port, protocol).
    pub outbound: Vec<(SocketAddr, String, Option<u16>, Protocol)>,
    /// Turn the transparent listeners on (with the file's `capture:` settings, or defaults).
    pub capture: bool,
    pub egress: Option<Egress>,
    pub inbound_plaintext: Option<Plaintext>,
    /// Replaces the file's `app_probes:`.
    pub app_probes: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFile {
    #[serde(default = "default_quic")]
    quic: SocketAddr,
    #[serde(default = "default_admin")]
    admin: SocketAddr,
    #[serde(default)]
    http_proxy: Option<SocketAddr>,
}

impl Default for ListenFile {
    fn default() -> Self {
        Self {
            quic: default_quic(),
            admin: default_admin(),
            http_proxy: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InboundFile {
    service: String,
    port: u16,
    protocol: Protocol,
    app: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboundFile {
    listen: SocketAddr,
    service: String,
    #[serde(default)]
    port: Option<u16>,
    protocol: Protocol,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    name: String,
    #[serde(default)]
    subsets: Vec<quiver_policy::Subset>,
    #[serde(default)]
    endpoints: Vec<EndpointFile>,
    /// Where captured app connections reach it (the control plane assigns these).
    #[serde(default, rename = "virtualIp")]
    virtual_ip: Option<std::net::Ipv4Addr>,
    /// Its ports and what each speaks, for captured connections to `virtualIp`.
    #[serde(default)]
    ports: Vec<ServicePortFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicePortFile {
    port: u16,
    protocol: Protocol,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFile {
    address: SocketAddr,
    identity: String,
    #[serde(default)]
    labels: quiver_policy::Labels,
    #[serde(default)]
    zone: String,
}

fn default_quic() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15443))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15020))
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}

/// Knobs with defaults that suit a sidecar; every field may be omitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Largest request/response header block accepted from apps and peers, in bytes.
    pub max_header_bytes: usize,
    /// Concurrent request streams a peer may open on one QUIC connection.
    pub max_concurrent_streams: u32,
    /// Congestion control and flow-control windows per path class (loopback, zone, region).
    pub paths: crate::mesh::paths::PathClasses,
    /// Requested UDP socket SO_RCVBUF/SO_SNDBUF, bytes (the kernel caps it at rmem_max/wmem_max).
    pub udp_socket_buffer: usize,
    /// A QUIC connection with no traffic for this long is closed.
    #[serde(with = "serde_human")]
    pub idle_timeout: Duration,
    /// QUIC keep-alive ping interval (keeps pooled connections and NAT bindings alive).
    #[serde(with = "serde_human")]
    pub keep_alive: Duration,
    /// Time allowed for a QUIC handshake with a peer, or a TCP connect to the local app.
    #[serde(with = "serde_human")]
    pub connect_timeout: Duration,
    /// Time allowed between sending a request and receiving the response head.
    #[serde(with = "serde_human")]
    pub response_timeout: Duration,
    /// Tokio worker threads (0: one per core).
    pub workers: usize,
    /// Load balancing, circuit breaking and outlier detection (see docs/traffic.md).
    pub balancing: quiver_policy::balance::BalanceConfig,
    /// Retry mechanics the Route does not carry: body buffering, backoff, budget window.
    pub retries: quiver_policy::retry::RetryTuning,
    /// How request paths are normalized before routes and authorization see them
    /// (`quiver_policy::path`; docs/security.md).
    pub request_paths: quiver_policy::path::PathRules,
    /// Connection, handshake and stream limits and the timeouts of slow callers
    /// ([`crate::limits`]; docs/security.md).
    pub limits: crate::limits::Limits,
    /// Write request query strings into access logs (off by default: they often carry
    /// tokens and personal data). Span names never carry them.
    pub access_log_query: bool,
}

impl Tuning {
    /// What the QUIC transport takes from the tuning.
    pub fn transport(&self) -> crate::mesh::transport::Settings {
        crate::mesh::transport::Settings {
            paths: self.paths.clone(),
            max_concurrent_streams: self.max_concurrent_streams,
            idle_timeout: self.idle_timeout,
            keep_alive: self.keep_alive,
            udp_socket_buffer: self.udp_socket_buffer,
            connect_timeout: self.connect_timeout,
            max_header_bytes: self.max_header_bytes,
            limits: self.limits.clone(),
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 4096,
            paths: Default::default(),
            udp_socket_buffer: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            workers: 0,
            balancing: Default::default(),
            retries: Default::default(),
            request_paths: Default::default(),
            limits: Default::default(),
            access_log_query: false,
        }
    }
}

// ---- the parsed config ----

/// Everything a proxy needs to start: who it is, what it binds, what it serves.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyConfig {
    pub bootstrap: Bootstrap,
    pub snapshot: Snapshot,
}

/// Process-level settings: fixed for the life of the process.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    /// Static mode: the identity files. `None` in control-plane mode.
    pub identity: Option<IdentityPaths>,
    /// Control-plane mode: whom to join and as what. `None` in static mode.
    pub control_plane: Option<ControlPlane>,
    pub quic_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub http_proxy_listen: Option<SocketAddr>,
    #[serde(with = "serde_human")]
    pub drain_timeout: Duration,
    pub outbound: Vec<OutboundListener>,
    pub tuning: Tuning,
    /// Transparent capture's listeners, when on.
    pub capture: Option<CaptureSettings>,
    /// The app's probes, checked on the admin listener for kubelet.
    pub app_probes: AppProbes,
}

/// What happens to captured connections to destinations outside the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Passed through as plain TCP (counted).
    Allow,
    /// Closed (counted).
    Deny,
}

/// What happens to plaintext TCP from outside the pod to the workload's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plaintext {
    /// Strict: only mesh (mTLS over QUIC) traffic reaches the app.
    Refuse,
    /// Permissive: handed to the app as it came (for a migration into the mesh).
    Allow,
}

/// The transparent listeners' settings (`capture:` in the config, `--capture` and friends).
#[derive(Debug, Clone, Serialize)]
pub struct CaptureSettings {
    /// Where captured outbound TCP arrives (the rules' `--outbound-port`).
    pub outbound_listen: SocketAddr,
    /// Where captured inbound TCP arrives (the rules' `--inbound-port`).
    pub inbound_listen: SocketAddr,
    /// The local DNS resolver (UDP and TCP; the rules' `--dns-port`), or none.
    pub dns_listen: Option<SocketAddr>,
    /// Where names outside the mesh are resolved (empty: /etc/resolv.conf's nameservers).
    pub dns_upstreams: Vec<SocketAddr>,
    pub egress: Egress,
    pub inbound_plaintext: Plaintext,
    /// How long a connection about to be denied is read to learn its protocol.
    #[serde(with = "quiver_api::duration::serde_human")]
    pub detect_timeout: Duration,
}

/// Where the identity lives on disk. The key's contents never enter the config (nor `/config`).
#[derive(Debug, Clone, Serialize)]
pub struct IdentityPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
    /// How often the files are checked for a rotation (0: never).
    #[serde(with = "serde_human")]
    pub reload_interval: Duration,
}

/// Control-plane mode settings, validated.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlane {
    /// `host:port` of the discovery listener.
    pub address: String,
    /// Never shown on `/config` or in logs.
    #[serde(skip)]
    pub join_token: String,
    pub ca_cert: PathBuf,
    pub trust_domain: String,
    /// The id the control plane must prove in every handshake with it.
    pub control_plane_id: SpiffeId,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub advertise: Option<SocketAddr>,
    pub app_host: IpAddr,
    pub zone: String,
    pub span_queue: usize,
    #[serde(with = "serde_human")]
    pub edge_interval: std::time::Duration,
}

/// An app-facing listener bound to one remote service (Consul-style explicit upstream).
#[derive(Debug, Clone, Serialize)]
pub struct OutboundListener {
    pub listen: SocketAddr,
    pub service: String,
    pub port: Option<u16>,
    pub protocol: Protocol,
}

impl ProxyConfig {
    /// Read, parse and validate `path`. Relative file paths inside are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::load_with(path, Overrides::default())
    }

    /// Parse and validate YAML text; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigErrors> {
        Self::parse_with(text, base, Overrides::default())
    }

    /// A config from flags alone (control-plane mode without a file).
    pub fn from_overrides(overrides: Overrides) -> Result<Self, ConfigErrors> {
        Self::parse_with("{}", Path::new("."), overrides)
    }

    /// Read `path` and apply `overrides` (flags win over the file).
    pub fn load_with(path: &Path, overrides: Overrides) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![FieldError {
                path: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_with(&text, base, overrides)
    }

    /// Parse YAML text, apply `overrides`, validate.
    pub fn parse_with(text: &str, base: &Path, overrides: Overrides) -> Result<Self, ConfigErrors> {
        // serde_path_to_error names the field for every type error, including those raised by
        // custom deserializers (durations, SPIFFE ids) that serde_yaml alone reports without one.
        let de = serde_yaml::Deserializer::from_str(text);
        let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let location = inner
                .location()
                .map(|l| format!(" (line {} column {})", l.line(), l.column()))
                .unwrap_or_default();
            let field = if path.is_empty() || path == "." {
                "document".to_string()
            } else {
                path
            };
            ConfigErrors(vec![FieldError {
                path: field,
                reason: format!("{inner}{location}"),
            }])
        })?;
        validate(apply(file, overrides), base)
    }
}

/// Flags over file: a flag that is set replaces the field; outbound flags are appended.
fn apply(mut file: File, o: Overrides) -> File {
    let c = o.control_plane;
    let cp_flags = c.address.is_some()
        || c.join_token.is_some()
        || c.ca_cert.is_some()
        || c.service.is_some()
        || c.trust_domain.is_some()
        || c.control_plane_id.is_some()
        || !c.labels.is_empty()
        || c.advertise.is_some()
        || c.app_host.is_some()
        || c.span_queue.is_some()
        || c.edge_interval.is_some();
    if cp_flags {
        let f = file.control_plane.get_or_insert_with(Default::default);
        f.address = c.address.or(f.address.take());
        f.join_token = c.join_token.or(f.join_token.take());
        f.ca_cert = c.ca_cert.or(f.ca_cert.take());
        f.trust_domain = c.trust_domain.or(f.trust_domain.take());
        f.control_plane_id = c.control_plane_id.or(f.control_plane_id.take());
        f.service = c.service.or(f.service.take());
        f.labels.extend(c.labels);
        f.advertise = c.advertise.or(f.advertise);
        f.app_host = c.app_host.or(f.app_host);
        f.span_queue = c.span_queue.or(f.span_queue);
        f.edge_interval = c.edge_interval.or(f.edge_interval);
    }
    if let Some(a) = o.quic_listen {
        file.listen.quic = a;
    }
    if let Some(a) = o.admin_listen {
        file.listen.admin = a;
    }
    if let Some(a) = o.http_proxy_listen {
        file.listen.http_proxy = Some(a);
    }
    if let Some(z) = o.zone {
        file.zone = z;
    }
    if let Some(d) = o.drain_timeout {
        file.drain_timeout = d;
    }
    if o.capture || o.egress.is_some() || o.inbound_plaintext.is_some() {
        let c = file.capture.get_or_insert_with(CaptureFile::default);
        if let Some(e) = o.egress {
            c.egress = e;
        }
        if let Some(p) = o.inbound_plaintext {
            c.inbound_plaintext = p;
        }
    }
    if let Some(p) = o.app_probes {
        file.app_probes = Some(p);
    }
    file.outbound.extend(
        o.outbound
            .into_iter()
            .map(|(listen, service, port, protocol)| OutboundFile {
                listen,
                service,
                port,
                protocol,
            }),
    );
    file
}

/// The default HTTP proxy listener in control-plane mode (off in static mode).
pub const DEFAULT_HTTP_PROXY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15001);

/// Check the `control_plane:` section; in this mode the snapshot fields must be absent.
fn validate_control_plane(
    c: &ControlPlaneFile,
    file: &File,
    resolve: &dyn Fn(&Path) -> PathBuf,
    err: &mut dyn FnMut(String, String),
) -> Option<ControlPlane> {
    let missing = |flag: &str| format!("required (flag {flag})");
    let address = match c.address.as_deref().map(str::trim) {
        None | Some("") => {
            err("control_plane.address".into(), missing("--control-plane"));
            None
        }
        Some(a) => {
            let a = a
                .strip_prefix("https://")
                .unwrap_or(a)
                .trim_end_matches('/');
            match a.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                Some((h, Ok(p))) if !h.is_empty() && p > 0 => Some(a.to_string()),
                _ => {
                    err(
                        "control_plane.address".into(),
                        format!("{a:?} is not host:port (e.g. quiver-control:15010)"),
                    );
                    None
                }
            }
        }
    };
    let join_token = match c.join_token.as_deref().map(str::trim) {
        None | Some("") => {
            err("control_plane.join_token".into(), missing("--join-token"));
            None
        }
        Some(t) => Some(t.to_string()),
    };
    let ca_cert = match &c.ca_cert {
        None => {
            err("control_plane.ca_cert".into(), missing("--ca-cert"));
            None
        }
        Some(p) => {
            let p = resolve(p);
            match std::fs::read_to_string(&p) {
                Err(e) => {
                    err(
                        "control_plane.ca_cert".into(),
                        format!("{}: {e}", p.display()),
                    );
                    None
                }
                Ok(pem) => match quiver_api::certs::certs_from_pem(&pem) {
                    Ok(c) if !c.is_empty() => Some(p),
                    Ok(_) => {
                        err(
                            "control_plane.ca_cert".into(),
                            format!("{}: no PEM certificate in it", p.display()),
                        );
                        None
                    }
                    Err(e) => {
                        err(
                            "control_plane.ca_cert".into(),
                            format!("{}: {e}", p.display()),
                        );
                        None
                    }
                },
            }
        }
    };
    let trust_domain = c
        .trust_domain
        .clone()
        .unwrap_or_else(|| "mesh.local".into());
    let control_plane_id = match (&c.control_plane_id, SpiffeId::control_plane(&trust_domain)) {
        (_, Err(e)) => {
            err(
                "control_plane.trust_domain".into(),
                format!("{trust_domain:?}: {e}"),
            );
            None
        }
        (None, Ok(default)) => Some(default),
        (Some(given), Ok(_)) => match SpiffeId::parse(given) {
            Err(e) => {
                err(
                    "control_plane.control_plane_id".into(),
                    format!("{given:?}: {e}"),
                );
                None
            }
            Ok(id) if id.trust_domain() != trust_domain => {
                err(
                    "control_plane.control_plane_id".into(),
                    format!(
                        "{given:?} is not in the trust domain {trust_domain:?} \
                         (control_plane.trust_domain / --trust-domain)"
                    ),
                );
                None
            }
            Ok(id) => Some(id),
        },
    };
    let service = match c.service.as_deref() {
        None | Some("") => {
            err("control_plane.service".into(), missing("--service"));
            None
        }
        Some(s) => match check_dns_label(s) {
            Ok(()) => Some(s.to_string()),
            Err(r) => {
                err("control_plane.service".into(), r);
                None
            }
        },
    };
    for (k, v) in &c.labels {
        let ok = |x: &str| {
            !x.is_empty()
                && x.len() <= 63
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        };
        if !ok(k) || !ok(v) {
            err(
                format!("control_plane.labels.{k}"),
                format!("{k}={v:?}: keys and values are 1-63 of a-z, A-Z, 0-9, '-', '_', '.', '/'"),
            );
        }
    }
    let span_queue = c.span_queue.unwrap_or(DEFAULT_SPAN_QUEUE);
    if !(1..=MAX_SPAN_QUEUE).contains(&span_queue) {
        err(
            "control_plane.span_queue".into(),
            format!("{span_queue}: must be 1 to {MAX_SPAN_QUEUE} spans"),
        );
    }
    let edge_interval = c.edge_interval.unwrap_or(DEFAULT_EDGE_INTERVAL);
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(60))
        .contains(&edge_interval)
    {
        err(
            "control_plane.edge_interval".into(),
            format!(
                "{}: must be 1s to 60s",
                quiver_api::duration::format(edge_interval)
            ),
        );
    }
    if let Some(a) = c.advertise
        && (a.ip().is_unspecified() || a.port() == 0)
    {
        err(
            "control_plane.advertise".into(),
            format!("{a}: needs a concrete IP and port peers can dial"),
        );
    }
    for (field, set) in [
        ("services", !file.services.is_empty()),
        ("inbound", !file.inbound.is_empty()),
        ("routes", !file.routes.is_empty()),
        ("authorization", !file.authorization.is_empty()),
        ("revocations", !file.revocations.is_empty()),
    ] {
        if set {
            err(
                field.into(),
                "comes from the control plane in control-plane mode; remove it from the file"
                    .into(),
            );
        }
    }
    Some(ControlPlane {
        address: address?,
        join_token: join_token?,
        ca_cert: ca_cert?,
        trust_domain,
        control_plane_id: control_plane_id?,
        service: service?,
        labels: c.labels.clone(),
        advertise: c.advertise,
        app_host: c.app_host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        zone: file.zone.clone(),
        span_queue,
        edge_interval,
    })
}

fn validate(file: File, base: &Path) -> Result<ProxyConfig, ConfigErrors> {
    let mut errs = Vec::new();
    let mut err = |field: String, reason: String| {
        errs.push(FieldError {
            path: field,
            reason,
        });
    };

    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    // Static mode reads the identity from files; control-plane mode obtains it by joining.
    let mut identity = None;
    let mut control_plane = None;
    let mut trust_domain = None;
    // The namespace of the identity: authorization scopes callers by it.
    let mut namespace = None;
    match (&file.identity, &file.control_plane) {
        (Some(_), Some(_)) => err(
            "control_plane".into(),
            "cannot be combined with identity: remove one (identity for static mode, \
             control_plane to join a control plane)"
                .into(),
        ),
        (None, None) => err(
            "identity".into(),
            "required in static mode (or give control_plane / --control-plane to join a \
             control plane)"
                .into(),
        ),
        (None, Some(c)) => {
            control_plane = validate_control_plane(c, &file, &resolve, &mut err);
            trust_domain = control_plane.as_ref().map(|c| c.trust_domain.clone());
        }
        (Some(f), None) => {
            let paths = IdentityPaths {
                cert: resolve(&f.cert),
                key: resolve(&f.key),
                trust_bundle: resolve(&f.trust_bundle),
                reload_interval: f.reload_interval,
            };
            // Load the identity now so a bad certificate is a config error, not a start-up crash.
            for (field, p) in [
                ("identity.cert", &paths.cert),
                ("identity.key", &paths.key),
                ("identity.trust_bundle", &paths.trust_bundle),
            ] {
                if let Err(e) = std::fs::metadata(p) {
                    err(field.into(), format!("{}: {e}", p.display()));
                }
            }
            // A missing key is reported above; here only one that others can read.
            if let Ok(Some(mode)) = quiver_api::certs::shared_key_mode(&paths.key) {
                err(
                    "identity.key".into(),
                    format!(
                        "{}: mode {mode:o} lets group or others read the private key \
                         (chmod 600 it)",
                        paths.key.display()
                    ),
                );
            }
            if paths.cert.exists() && paths.key.exists() && paths.trust_bundle.exists() {
                match quiver_api::tls::MeshIdentity::from_files(
                    &paths.cert,
                    &paths.key,
                    &paths.trust_bundle,
                ) {
                    Ok(id) => {
                        if let Err(e) = id.server_config(&[b"h3"]) {
                            err(
                                "identity.key".into(),
                                format!("does not match identity.cert: {e}"),
                            );
                        }
                        trust_domain = Some(id.trust_domain().to_string());
                        namespace = id.spiffe_id.workload_parts().map(|(ns, _)| ns.to_string());
                    }
                    Err(e) => err("identity".into(), e.to_string()),
                }
            }
            let reload = f.reload_interval;
            if !reload.is_zero() && reload < Duration::from_millis(100) {
                err(
                    "identity.reload_interval".into(),
                    "must be 0s (off) or at least 100ms".into(),
                );
            }
            identity = Some(paths);
        }
    }
    let http_proxy_listen = match (&control_plane, file.listen.http_proxy) {
        (_, Some(a)) => Some(a),
        (Some(_), None) => Some(DEFAULT_HTTP_PROXY),
        (None, None) => None,
    };

    let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut claim = |addr: SocketAddr, field: String, errs: &mut Vec<FieldError>| {
        if addr.port() == 0 {
            // Port 0 asks the kernel for a fresh port each time: never a clash.
            return;
        }
        if let Some(prev) = listens.get(&addr) {
            errs.push(FieldError {
                path: field.clone(),
                reason: format!("{addr} is already used by {prev}"),
            });
        } else {
            listens.insert(addr, field);
        }
    };
    let mut tcp_errs = Vec::new();
    claim(file.listen.admin, "listen.admin".into(), &mut tcp_errs);
    if let Some(a) = http_proxy_listen {
        claim(a, "listen.http_proxy".into(), &mut tcp_errs);
    }
    for (i, o) in file.outbound.iter().enumerate() {
        claim(o.listen, format!("outbound[{i}].listen"), &mut tcp_errs);
    }
    if let Some(c) = &file.capture {
        claim(
            c.outbound_listen,
            "capture.outbound_listen".into(),
            &mut tcp_errs,
        );
        claim(
            c.inbound_listen,
            "capture.inbound_listen".into(),
            &mut tcp_errs,
        );
        if let Some(d) = c.dns_listen {
            claim(d, "capture.dns_listen".into(), &mut tcp_errs);
        }
        if c.detect_timeout.is_zero() || c.detect_timeout > Duration::from_secs(10) {
            tcp_errs.push(FieldError {
                path: "capture.detect_timeout".into(),
                reason: "must be more than 0s and at most 10s".into(),
            });
        }
    }
    errs.extend(tcp_errs);
    let mut err = |field: String, reason: String| {
        errs.push(FieldError {
            path: field,
            reason,
        });
    };

    if file.drain_timeout > Duration::from_secs(3600) {
        err("drain_timeout".into(), "must be at most 1h".into());
    }
    // The app's probes go where inbound requests go: the app's address.
    let probe_host = control_plane
        .as_ref()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.app_host);
    let app_probes = match &file.app_probes {
        None => AppProbes::default(),
        Some(v) => AppProbes::parse(v, probe_host, "app_probes").unwrap_or_else(|e| {
            for f in e {
                err(f.path, f.reason);
            }
            AppProbes::default()
        }),
    };
    let t = &file.tuning;
    if t.max_header_bytes < 1024 {
        err(
            "tuning.max_header_bytes".into(),
            "must be at least 1024".into(),
        );
    }
    if t.max_concurrent_streams == 0 {
        err(
            "tuning.max_concurrent_streams".into(),
            "must be at least 1".into(),
        );
    }
    // Beyond a day these are mistakes, and unbounded ones overflow clock arithmetic.
    for (field, d) in [
        ("tuning.idle_timeout", t.idle_timeout),
        ("tuning.keep_alive", t.keep_alive),
        ("tuning.connect_timeout", t.connect_timeout),
        ("tuning.response_timeout", t.response_timeout),
    ] {
        if d > Duration::from_secs(86_400) {
            err(field.into(), "must be at most 24h".into());
        }
    }
    if t.idle_timeout.is_zero() {
        err("tuning.idle_timeout".into(), "must be more than 0s".into());
    }
    if t.connect_timeout.is_zero() {
        err(
            "tuning.connect_timeout".into(),
            "must be more than 0s".into(),
        );
    }
    if t.response_timeout.is_zero() {
        err(
            "tuning.response_timeout".into(),
            "must be more than 0s".into(),
        );
    }
    if !t.keep_alive.is_zero() && t.keep_alive >= t.idle_timeout {
        err(
            "tuning.keep_alive".into(),
            "must be shorter than tuning.idle_timeout (or 0s to disable)".into(),
        );
    }
    t.paths.validate(&mut errs);
    t.limits.validate(&mut errs);
    let mut err = |field: String, reason: String| {
        errs.push(FieldError {
            path: field,
            reason,
        });
    };

    let mut inbound = Vec::new();
    let mut seen_ports = HashSet::new();
    for (i, p) in file.inbound.iter().enumerate() {
        let f = format!("inbound[{i}]");
        if let Err(r) = check_dns_label(&p.service) {
            err(format!("{f}.service"), r);
        }
        if p.port == 0 {
            err(format!("{f}.port"), "must be 1-65535".into());
        }
        if !seen_ports.insert((p.service.clone(), p.port)) {
            err(
                format!("{f}.port"),
                format!("service {} port {} is listed twice", p.service, p.port),
            );
        }
        if p.app.port() == 0 {
            err(format!("{f}.app"), "needs a port".into());
        }
        inbound.push(LocalPort {
            service: p.service.clone(),
            port: p.port,
            protocol: p.protocol,
            app: p.app,
        });
    }

    let mut services = BTreeMap::new();
    for (i, s) in file.services.iter().enumerate() {
        let f = format!("services[{i}]");
        if let Err(r) = check_dns_label(&s.name) {
            err(format!("{f}.name"), r);
        }
        if services.contains_key(&s.name) {
            err(
                format!("{f}.name"),
                format!("service {} is listed twice", s.name),
            );
        }
        let mut endpoints = Vec::new();
        let mut seen = HashSet::new();
        for (j, e) in s.endpoints.iter().enumerate() {
            let ef = format!("{f}.endpoints[{j}]");
            if e.address.port() == 0 || e.address.ip().is_unspecified() {
                err(
                    format!("{ef}.address"),
                    "needs a concrete IP and port (not 0.0.0.0 or port 0)".into(),
                );
            }
            if !seen.insert(e.address) {
                err(
                    format!("{ef}.address"),
                    format!("{} is listed twice", e.address),
                );
            }
            match SpiffeId::parse(&e.identity) {
                Ok(id) => {
                    if let Some(td) = &trust_domain
                        && id.trust_domain() != td
                    {
                        err(
                            format!("{ef}.identity"),
                            format!(
                                "trust domain {} differs from ours ({td}): it could never be accepted",
                                id.trust_domain()
                            ),
                        );
                    }
                    endpoints.push(Endpoint {
                        address: e.address,
                        identity: id,
                        labels: e.labels.clone(),
                        zone: e.zone.clone(),
                    });
                }
                Err(r) => err(format!("{ef}.identity"), format!("{:?}: {r}", e.identity)),
            }
        }
        let mut ports = BTreeMap::new();
        for (j, p) in s.ports.iter().enumerate() {
            if p.port == 0 {
                err(format!("{f}.ports[{j}].port"), "0 is not 1-65535".into());
            } else if ports.insert(p.port, p.protocol).is_some() {
                err(
                    format!("{f}.ports[{j}].port"),
                    format!("{} is listed twice", p.port),
                );
            }
        }
        if s.virtual_ip.is_some() && ports.is_empty() {
            err(
                format!("{f}.ports"),
                "a service with a virtualIp needs its ports (and their protocols)".into(),
            );
        }
        services.insert(
            s.name.clone(),
            RemoteService::new(s.name.clone(), endpoints, s.subsets.clone())
                .with_address(s.virtual_ip, ports),
        );
    }

    let mut outbound = Vec::new();
    for (i, o) in file.outbound.iter().enumerate() {
        let f = format!("outbound[{i}]");
        if control_plane.is_none() && !services.contains_key(&o.service) {
            err(
                format!("{f}.service"),
                format!("{:?} is not in services", o.service),
            );
        }
        if o.port == Some(0) {
            err(format!("{f}.port"), "must be 1-65535".into());
        }
        outbound.push(OutboundListener {
            listen: o.listen,
            service: o.service.clone(),
            port: o.port,
            protocol: o.protocol,
        });
    }

    // The trust domain is known once the identity loaded; without it the identity error is
    // the one to fix first.
    let mut revocations = BTreeMap::new();
    if let Some(td) = &trust_domain {
        match quiver_api::revocation::DenyList::parse(
            file.revocations
                .iter()
                .map(|r| (r.spiffe_id.as_str(), r.not_before_unix)),
            td,
        ) {
            Ok(parsed) => revocations = parsed,
            Err(errors) => {
                for e in errors {
                    let field = match e.field {
                        quiver_api::revocation::EntryField::SpiffeId => "spiffe_id",
                        quiver_api::revocation::EntryField::NotBefore => "not_before_unix",
                    };
                    errs.push(FieldError {
                        path: format!("revocations[{}].{field}", e.index),
                        reason: e.reason,
                    });
                }
            }
        }
    }
    let policy = quiver_policy::plan::PolicyConfig {
        routes: file.routes,
        authorization: file.authorization,
        mesh: file.mesh,
        namespace,
    };
    // The file lists every service this proxy may call: a route naming another is a mistake.
    let snapshot = Snapshot::build(
        "static".into(),
        file.zone,
        inbound,
        services,
        policy,
        quiver_policy::services::Unknown::Refuse,
    );
    let snapshot = match snapshot {
        Ok(mut s) => {
            s.revocations = revocations;
            Some(s)
        }
        Err(e) => {
            errs.extend(e);
            None
        }
    };
    match snapshot {
        Some(snapshot) if errs.is_empty() => Ok(ProxyConfig {
            bootstrap: Bootstrap {
                identity,
                control_plane,
                quic_listen: file.listen.quic,
                admin_listen: file.listen.admin,
                http_proxy_listen,
                drain_timeout: file.drain_timeout,
                outbound,
                tuning: file.tuning,
                capture: file.capture.map(|c| CaptureSettings {
                    outbound_listen: c.outbound_listen,
                    inbound_listen: c.inbound_listen,
                    dns_listen: c.dns_listen,
                    dns_upstreams: c.dns_upstreams,
                    egress: c.egress,
                    inbound_plaintext: c.inbound_plaintext,
                    detect_timeout: c.detect_timeout,
                }),
                app_probes,
            },
            snapshot,
        }),
        _ => Err(ConfigErrors(errs)),
    }
}

#[cfg(test)]
mod tests;
