//! The static config file (`quiver-proxy --config FILE`) and its validation.
//!
//! The file is parsed once into [`ProxyConfig`]: a [`Bootstrap`] (what the process binds and
//! who it is) and a [`Snapshot`] (what it serves and may call). The control plane's pushed
//! snapshot lands in the same `Snapshot` type, so the data path never knows where its
//! config came from. Validation reports every problem in one pass, each naming its field.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quiver_api::SpiffeId;
use quiver_api::duration::serde_human;
use serde::{Deserialize, Serialize};

use crate::snapshot::{Endpoint, LocalPort, Protocol, RemoteService, Snapshot};

/// One problem in a config file: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

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
    identity: IdentityFile,
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
    routes: Vec<crate::policy::route::Route>,
    #[serde(default)]
    authorization: Vec<crate::policy::authz::AuthorizationPolicy>,
    #[serde(default)]
    mesh: crate::policy::authz::MeshConfig,
    #[serde(default)]
    tuning: Tuning,
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
    subsets: Vec<crate::policy::Subset>,
    #[serde(default)]
    endpoints: Vec<EndpointFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFile {
    address: SocketAddr,
    identity: String,
    #[serde(default)]
    labels: crate::policy::Labels,
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
    /// Per-stream QUIC receive window, bytes.
    pub stream_receive_window: u32,
    /// Per-connection QUIC receive window, bytes.
    pub connection_receive_window: u32,
    /// QUIC send window, bytes.
    pub send_window: u64,
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
    pub balancing: crate::policy::balance::BalanceConfig,
    /// Retry mechanics the Route does not carry: body buffering, backoff, budget window.
    pub retries: crate::policy::retry::RetryTuning,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 4096,
            stream_receive_window: 8 * 1024 * 1024,
            connection_receive_window: 32 * 1024 * 1024,
            send_window: 32 * 1024 * 1024,
            udp_socket_buffer: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            workers: 0,
            balancing: Default::default(),
            retries: Default::default(),
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
    pub identity: IdentityPaths,
    pub quic_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub http_proxy_listen: Option<SocketAddr>,
    #[serde(with = "serde_human")]
    pub drain_timeout: Duration,
    pub outbound: Vec<OutboundListener>,
    pub tuning: Tuning,
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
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![FieldError {
                field: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Parse and validate YAML text; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigErrors> {
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
                field,
                reason: format!("{inner}{location}"),
            }])
        })?;
        validate(file, base)
    }
}

fn validate(file: File, base: &Path) -> Result<ProxyConfig, ConfigErrors> {
    let mut errs = Vec::new();
    let mut err = |field: String, reason: String| errs.push(FieldError { field, reason });

    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let identity = IdentityPaths {
        cert: resolve(&file.identity.cert),
        key: resolve(&file.identity.key),
        trust_bundle: resolve(&file.identity.trust_bundle),
        reload_interval: file.identity.reload_interval,
    };
    // Load the identity now so a bad certificate is a config error, not a start-up crash.
    let mut trust_domain = None;
    for (field, p) in [
        ("identity.cert", &identity.cert),
        ("identity.key", &identity.key),
        ("identity.trust_bundle", &identity.trust_bundle),
    ] {
        if let Err(e) = std::fs::metadata(p) {
            err(field.into(), format!("{}: {e}", p.display()));
        }
    }
    if identity.cert.exists() && identity.key.exists() && identity.trust_bundle.exists() {
        match quiver_api::tls::MeshIdentity::from_files(
            &identity.cert,
            &identity.key,
            &identity.trust_bundle,
        ) {
            Ok(id) => {
                if let Err(e) = id.server_config(&[b"h3"]) {
                    err(
                        "identity.key".into(),
                        format!("does not match identity.cert: {e}"),
                    );
                }
                trust_domain = Some(id.trust_domain().to_string());
            }
            Err(e) => err("identity".into(), e.to_string()),
        }
    }

    let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut claim = |addr: SocketAddr, field: String, errs: &mut Vec<FieldError>| {
        if addr.port() == 0 {
            // Port 0 asks the kernel for a fresh port each time: never a clash.
            return;
        }
        if let Some(prev) = listens.get(&addr) {
            errs.push(FieldError {
                field: field.clone(),
                reason: format!("{addr} is already used by {prev}"),
            });
        } else {
            listens.insert(addr, field);
        }
    };
    let mut tcp_errs = Vec::new();
    claim(file.listen.admin, "listen.admin".into(), &mut tcp_errs);
    if let Some(a) = file.listen.http_proxy {
        claim(a, "listen.http_proxy".into(), &mut tcp_errs);
    }
    for (i, o) in file.outbound.iter().enumerate() {
        claim(o.listen, format!("outbound[{i}].listen"), &mut tcp_errs);
    }
    errs.extend(tcp_errs);
    let mut err = |field: String, reason: String| errs.push(FieldError { field, reason });

    let reload = file.identity.reload_interval;
    if !reload.is_zero() && reload < Duration::from_millis(100) {
        err(
            "identity.reload_interval".into(),
            "must be 0s (off) or at least 100ms".into(),
        );
    }
    if file.drain_timeout > Duration::from_secs(3600) {
        err("drain_timeout".into(), "must be at most 1h".into());
    }
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
    if t.stream_receive_window < 16 * 1024 {
        err(
            "tuning.stream_receive_window".into(),
            "must be at least 16384".into(),
        );
    }
    if t.connection_receive_window < t.stream_receive_window {
        err(
            "tuning.connection_receive_window".into(),
            "must be at least tuning.stream_receive_window".into(),
        );
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

    let mut inbound = Vec::new();
    let mut seen_ports = HashSet::new();
    for (i, p) in file.inbound.iter().enumerate() {
        let f = format!("inbound[{i}]");
        if let Err(r) = check_service_name(&p.service) {
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
        if let Err(r) = check_service_name(&s.name) {
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
        services.insert(
            s.name.clone(),
            RemoteService::new(s.name.clone(), endpoints, s.subsets.clone()),
        );
    }

    let mut outbound = Vec::new();
    for (i, o) in file.outbound.iter().enumerate() {
        let f = format!("outbound[{i}]");
        if !services.contains_key(&o.service) {
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

    let policy = crate::policy::plan::PolicyConfig {
        routes: file.routes,
        authorization: file.authorization,
        mesh: file.mesh,
    };
    let snapshot = Snapshot::build("static".into(), file.zone, inbound, services, policy);
    let snapshot = match snapshot {
        Ok(s) => Some(s),
        Err(e) => {
            errs.extend(e);
            None
        }
    };
    match snapshot {
        Some(snapshot) if errs.is_empty() => Ok(ProxyConfig {
            bootstrap: Bootstrap {
                identity,
                quic_listen: file.listen.quic,
                admin_listen: file.listen.admin,
                http_proxy_listen: file.listen.http_proxy,
                drain_timeout: file.drain_timeout,
                outbound,
                tuning: file.tuning,
            },
            snapshot,
        }),
        _ => Err(ConfigErrors(errs)),
    }
}

/// Service names are DNS labels: they travel as HTTP authorities and TLS server names.
pub fn check_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')"
        ))
    }
}

#[cfg(test)]
mod tests;
