//! Start-up wiring of the `quiver-control` server: configuration (and the start-up checks
//! that refuse an exposed plaintext API or a short admin token), store, CA, first admin
//! token, change feed, mesh view, revocations in force, lease sweeper and trace retention
//! sweeper; the API listener (native gRPC, gRPC-web, reflection, `/metrics` and the sidecar
//! injector's `/inject`; plaintext on
//! loopback, else TLS with the operator's certificate or one from the mesh CA) and the
//! discovery listener
//! (MeshDiscovery over TLS, client certificates from the mesh CA).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::header::{HeaderName, HeaderValue};
use prometheus_client::registry::Registry;
use quiver_api::v1;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::{AdminApi, DiscoveryApi, Inputs};
use crate::auth;
use crate::ca::{CaError, MeshCa};
use crate::discovery::revocations::RevocationView;
use crate::discovery::{MeshView, listener, sweeper};
use crate::metrics::{self, Metrics};
use crate::store::{self, Feed, now_ms};
use crate::stored::rfc3339;
use crate::telemetry::otlp::{self, OtlpEndpoint, OtlpHeader};

/// `quiver-control` flags. Every flag also reads a `QUIVER_*` environment variable.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(
    name = "quiver-control",
    version,
    about = "The Quiver control plane",
    after_help = "Also: `quiver-demo` (`cargo run --release -- demo` from the repository root) \
                  runs a whole sample mesh on this machine."
)]
pub struct Config {
    /// Address of the API port: gRPC, gRPC-web, reflection, /metrics and the console.
    /// Loopback by default; any other address needs TLS (--tls-mesh-ca, or --tls-cert and
    /// --tls-key) or --insecure-plaintext.
    #[arg(long, env = "QUIVER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve the API in plaintext on a non-loopback --listen address anyway: bearer tokens
    /// then cross the network readable (for a trusted network or a TLS-terminating proxy).
    #[arg(long, env = "QUIVER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// Serve the API over TLS with a certificate the mesh CA issues at every start, for the
    /// control plane's SPIFFE id and the --tls-name names. The CA certificate clients verify
    /// it with is written to <data-dir>/api-ca.pem (`quiverctl --ca-file`).
    #[arg(long, env = "QUIVER_TLS_MESH_CA", conflicts_with = "tls_cert")]
    pub tls_mesh_ca: bool,
    /// A DNS name or IP address clients use to reach the API, put in the --tls-mesh-ca
    /// certificate. Repeatable; the environment variable takes a comma-separated list.
    /// Default: localhost, 127.0.0.1, ::1 and the --listen address when it is not unspecified.
    #[arg(
        long = "tls-name",
        env = "QUIVER_TLS_NAMES",
        value_name = "NAME",
        value_delimiter = ',',
        requires = "tls_mesh_ca"
    )]
    pub tls_names: Vec<String>,
    /// Address of the discovery listener: MeshDiscovery for proxies, TLS with a server
    /// certificate from the mesh CA and optional client certificates (mTLS).
    #[arg(long, env = "QUIVER_DISCOVERY_LISTEN", default_value = "0.0.0.0:15010")]
    pub discovery_listen: SocketAddr,
    /// How long a registered workload stays an endpoint without a keep-alive.
    #[arg(long, env = "QUIVER_LEASE_TTL", default_value = "30s", value_parser = lease_ttl)]
    #[serde(with = "quiver_api::duration::serde_human")]
    pub lease_ttl: Duration,
    /// The IPv4 range Services' virtual IPs come from (ServiceStatus.virtualIp): what captured
    /// app traffic and the mesh DNS names reach Services by. A Service keeps its address until
    /// it is deleted, also across a change of this flag.
    #[arg(long, env = "QUIVER_SERVICE_VIP_RANGE", default_value_t = crate::addresses::AddressRange::default())]
    #[serde(serialize_with = "display")]
    pub service_vip_range: crate::addresses::AddressRange,
    /// Postgres URL (postgres://user@host/db). Without it, SQLite in --data-dir is used.
    #[arg(long, env = "QUIVER_DATABASE_URL")]
    #[serde(serialize_with = "redact")]
    pub database_url: Option<String>,
    /// Directory for the embedded SQLite store.
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = "./quiver-data")]
    pub data_dir: PathBuf,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, env = "QUIVER_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,
    /// Operator CA certificate (PEM); with --ca-key, used instead of a generated root.
    #[arg(long, env = "QUIVER_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Operator CA private key (PKCS#8 PEM, mode 0600).
    #[arg(long, env = "QUIVER_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// File (mode 0600) holding the key that seals the generated CA's private keys in the
    /// store: 32 random bytes as 64 hex characters (`openssl rand -hex 32`). Required with
    /// --database-url (every replica needs the same one); with SQLite it defaults to
    /// DATA_DIR/ca-key-encryption.key, created on first start.
    #[arg(long, env = "QUIVER_CA_KEY_ENCRYPTION_KEY")]
    pub ca_key_encryption_key: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM) instead of plaintext h2c/HTTP/1.1.
    #[arg(long, env = "QUIVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key for --tls-cert.
    #[arg(long, env = "QUIVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Lifetime of issued workload certificates (MeshConfig spec.svidTtl overrides it).
    #[arg(long, env = "QUIVER_SVID_TTL", default_value = "24h", value_parser = quiver_api::duration::parse)]
    #[serde(with = "quiver_api::duration::serde_human")]
    pub svid_ttl: Duration,
    /// Make sure this secret (at least 32 characters) is an admin token, instead of
    /// generating one at first start.
    #[arg(long, env = "QUIVER_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// Watch streams one proxy identity (SPIFFE id) may hold open at once on this replica;
    /// all proxies of one service account share an identity, so keep it above their count.
    #[arg(long, env = "QUIVER_MAX_WATCHES_PER_IDENTITY", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_watches_per_identity: u32,
    /// Live workloads (endpoints) one proxy identity may register; all proxies of one
    /// service account share an identity, so keep it above their count.
    #[arg(long, env = "QUIVER_MAX_ENDPOINTS_PER_IDENTITY", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_endpoints_per_identity: u32,
    /// Let one proxy identity register QUIC addresses in a network other than the source
    /// address of its connection (NAT, a gateway advertising another interface), as
    /// SPIFFE_ID=CIDR, e.g. spiffe://mesh.local/ns/edge/sa/gateway=10.20.0.0/16. Repeatable;
    /// the environment variable takes a comma-separated list.
    #[arg(
        long = "registration-exception",
        env = "QUIVER_REGISTRATION_EXCEPTIONS",
        value_name = "SPIFFE_ID=CIDR",
        value_delimiter = ',',
        value_parser = crate::api::AddressException::parse
    )]
    #[serde(serialize_with = "exceptions")]
    pub registration_exceptions: Vec<crate::api::AddressException>,
    /// How long spans and edge statistics reported by proxies are kept.
    #[arg(long, env = "QUIVER_TRACE_RETENTION", default_value = "24h", value_parser = positive_duration)]
    #[serde(with = "quiver_api::duration::serde_human")]
    pub trace_retention: Duration,
    /// At most this many spans are kept; the oldest go first, a reported batch (up to 256
    /// spans) at a time.
    #[arg(long, env = "QUIVER_TRACE_MAX_SPANS", default_value_t = 1_000_000)]
    pub trace_max_spans: u64,
    /// How often the trace retention sweeper runs (tests shorten it).
    #[arg(long, env = "QUIVER_TRACE_SWEEP_INTERVAL", default_value = "30s", value_parser = positive_duration, hide = true)]
    #[serde(with = "quiver_api::duration::serde_human")]
    pub trace_sweep_interval: Duration,
    /// Serve the web console from this directory (console/build.sh writes console/dist)
    /// instead of the bundle embedded in the binary: for console development.
    #[arg(long, env = "QUIVER_CONSOLE_DIR")]
    pub console_dir: Option<PathBuf>,
    /// An origin, besides the API's own, whose pages may call the API from a browser
    /// (gRPC-web, CORS), as scheme://host[:port]. Repeatable; the environment variable takes
    /// a comma-separated list. The console is served from the API's own origin and needs none.
    #[arg(
        long = "cors-origin",
        env = "QUIVER_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ',',
        value_parser = cors_origin
    )]
    pub cors_origins: Vec<String>,
    /// Also export every accepted span over OTLP/gRPC to this endpoint (an OpenTelemetry
    /// Collector, Jaeger, Tempo): http://host:4317, or https://host[:port] verified against
    /// the system's CA certificates. See docs/otlp-export.md.
    #[arg(long, env = "QUIVER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// A gRPC header sent with every OTLP export, as name=value (e.g. authorization=Bearer
    /// <token>). Repeatable; the environment variable takes a comma-separated list.
    #[arg(
        long = "otlp-header",
        env = "QUIVER_OTLP_HEADERS",
        value_name = "NAME=VALUE",
        value_delimiter = ',',
        requires = "otlp_endpoint",
        hide_env_values = true
    )]
    #[serde(serialize_with = "header_names")]
    pub otlp_headers: Vec<OtlpHeader>,
    /// How long one OTLP export call (and connecting for it) may take.
    #[arg(long, env = "QUIVER_OTLP_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    #[serde(with = "quiver_api::duration::serde_human")]
    pub otlp_timeout: Duration,
    /// Spans waiting for the OTLP exporter, at most; beyond it new spans are dropped and
    /// counted. The default holds two of the span writer's largest commits.
    #[arg(
        long,
        env = "QUIVER_OTLP_QUEUE",
        default_value_t = crate::telemetry::otlp::QUEUE_SPANS as u64,
        value_parser = clap::value_parser!(u64).range(1..=10_000_000),
        requires = "otlp_endpoint"
    )]
    pub otlp_queue: u64,
    /// Log format: text or json.
    #[arg(long, env = "QUIVER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// The sidecar injector (POST /inject on the API port): what it puts in pods.
    #[command(flatten)]
    pub inject: crate::inject::InjectConfig,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn exceptions<S: serde::Serializer>(
    list: &[crate::api::AddressException],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(ToString::to_string))
}

/// Why the configuration was refused at start (each names its flag).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--listen {0}: not a loopback address, and the API would be plaintext (bearer tokens \
         readable on the network); serve it over TLS with --tls-mesh-ca (or --tls-cert and \
         --tls-key), or pass --insecure-plaintext to accept that"
    )]
    ExposedPlaintext(SocketAddr),
    #[error(
        "--admin-token (QUIVER_ADMIN_TOKEN): {0} characters; an admin token must be at least \
         {min} characters (generate one with `openssl rand -base64 32`)",
        min = auth::MIN_TOKEN_LEN
    )]
    ShortAdminToken(usize),
}

impl Config {
    /// The checks that need more than one flag, or that must not echo a secret (clap's
    /// errors quote the value).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.check_listen(self.listen)?;
        if let Some(token) = &self.admin_token
            && token.chars().count() < auth::MIN_TOKEN_LEN
        {
            return Err(ConfigError::ShortAdminToken(token.chars().count()));
        }
        Ok(())
    }

    fn tls(&self) -> bool {
        self.tls_mesh_ca || self.tls_cert.is_some()
    }

    fn check_listen(&self, addr: SocketAddr) -> Result<(), ConfigError> {
        if addr.ip().is_loopback() || self.tls() || self.insecure_plaintext {
            Ok(())
        } else {
            Err(ConfigError::ExposedPlaintext(addr))
        }
    }

    /// The names the --tls-mesh-ca certificate carries.
    fn tls_names(&self, addr: SocketAddr) -> Vec<String> {
        if !self.tls_names.is_empty() {
            return self.tls_names.clone();
        }
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
            names.push(addr.ip().to_string());
        }
        names
    }
}

/// Where `quiver-control` writes the first admin token when stdout is not a terminal.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Where `--tls-mesh-ca` writes the CA certificate clients verify the API with.
pub const API_CA_FILE: &str = "api-ca.pem";

/// Write `contents` to `path` readable by its owner only (mode 0600), replacing the file.
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())
}

fn lease_ttl(s: &str) -> Result<Duration, String> {
    match quiver_api::duration::parse(s)? {
        d if d < Duration::from_secs(1) => Err("must be at least 1s".into()),
        d => Ok(d),
    }
}

/// `scheme://host[:port]` as a browser sends it in `Origin` (no path, no trailing slash).
fn cors_origin(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or_default();
    if !matches!(scheme, "http" | "https") || uri.authority().is_none() {
        return Err(format!(
            "{s:?}: an origin is http:// or https:// and a host"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{s:?}: an origin has no path or query"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match quiver_api::duration::parse(s)? {
        d if d.is_zero() => Err("must be longer than 0s".into()),
        d => Ok(d),
    }
}

/// Header names only: values are often credentials.
fn header_names<S: serde::Serializer>(headers: &[OtlpHeader], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(headers.iter().map(|h| format!("{}=***", h.name())))
}

fn redact<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    // Show the engine and host, never a password.
    let shown = url
        .as_deref()
        .map(|u| u.split('?').next().unwrap_or_default())
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &u[..scheme], &u[at + 1..])
            }
            _ => u.to_string(),
        });
    s.serialize_some(&shown)
}

/// How long a shutdown waits for in-flight calls.
const DRAIN: Duration = Duration::from_secs(2);

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    /// Where MeshDiscovery is served over TLS.
    pub discovery_addr: SocketAddr,
    /// An admin token created by this start (first start, no QUIVER_ADMIN_TOKEN): shown once.
    pub new_admin_token: Option<String>,
    /// With --tls-mesh-ca: the file holding the CA certificate clients verify the API with.
    pub api_ca_file: Option<PathBuf>,
    pub store_engine: &'static str,
    shutdown: Option<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    /// The lease sweeper; stopped with the server.
    _sweeper: AbortOnDrop,
    /// Re-reads the stored CA (rotations made on other replicas); stopped with the server.
    _ca_refresh: AbortOnDrop,
    _ca_expiry: AbortOnDrop,
    /// Rebuilds the discovery listener's TLS when the CA changes.
    _discovery_tls: AbortOnDrop,
    _api_tls: Option<AbortOnDrop>,
    /// The trace retention sweeper; stopped with the server.
    _trace_sweeper: AbortOnDrop,
    /// The canary controller; stopped with the server.
    _canaries: AbortOnDrop,
    /// The OTLP exporter, when --otlp-endpoint is set; stopped (queue and all) with the server.
    _otlp: Option<AbortOnDrop>,
    /// The span writer; stopped with the server (spans it had not committed are lost).
    _span_writer: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Running {
    /// Wait until the server stops (on error, or after [`Running::shutdown`]).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("server task")??;
        Ok(())
    }

    /// Stop accepting and give in-flight calls [`DRAIN`] to finish; Watch streams never
    /// finish on their own, so whatever is left then is cut off.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        match tokio::time::timeout(DRAIN, self.wait()).await {
            Ok(result) => result,
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// Open everything and start serving on `config.listen`.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", config.listen))?;
    start_on(config, listener).await
}

/// As [`start`], on a listener the caller bound (tests use 127.0.0.1:0).
pub async fn start_on(config: &Config, listener: TcpListener) -> anyhow::Result<Running> {
    let addr = listener.local_addr().context("listener address")?;
    config.check()?;
    config.check_listen(addr)?;
    let discovery_listener = TcpListener::bind(config.discovery_listen)
        .await
        .with_context(|| {
            format!(
                "--discovery-listen {}: cannot bind",
                config.discovery_listen
            )
        })?;
    let discovery_addr = discovery_listener
        .local_addr()
        .context("discovery listener address")?;
    let store = store::open(config.database_url.as_deref(), &config.data_dir)
        .await
        .context("opening the store")?;
    let operator_ca = match (&config.ca_cert, &config.ca_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => return Err(CaError::HalfConfigured.into()),
    };
    let kek = crate::ca::KeyEncryptionKey::load(
        config.ca_key_encryption_key.as_deref(),
        &config.data_dir,
        config.database_url.is_some(),
    )?;
    let ca = Arc::new(
        MeshCa::load_or_create(store.as_ref(), &config.trust_domain, operator_ca, kek)
            .await
            .context("loading the mesh CA")?,
    );
    let ca_refresh = AbortOnDrop(tokio::spawn(crate::ca::keep_refreshed(
        ca.clone(),
        store.clone(),
    )));

    // Services stored before virtual IPs existed get theirs now, not on their next Apply.
    match crate::addresses::backfill(store.as_ref(), config.service_vip_range).await {
        Ok(assigned) if assigned > 0 => {
            tracing::info!(services = assigned, range = %config.service_vip_range, "virtual IPs given to Services stored without one");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "Services stored without a virtual IP keep none until their next Apply");
        }
    }

    let new_admin_token = match &config.admin_token {
        Some(secret) => {
            auth::ensure_admin_token(store.as_ref(), secret).await?;
            None
        }
        None if store.count_api_tokens().await? == 0 => {
            let (_, secret) = auth::create_token(
                store.as_ref(),
                auth::Role::Admin,
                "first start",
                store::NEVER,
            )
            .await?;
            Some(secret)
        }
        None => None,
    };

    let feed = Feed::start(store.clone()).await?;
    let view = MeshView::start(store.clone(), &feed, ca.trust_domain()).await?;
    let discovery_tls =
        listener::ListenerTls::new(ca.clone()).context("discovery listener certificate")?;
    let discovery_tls_task = AbortOnDrop(tokio::spawn(discovery_tls.clone().keep_current()));
    let sweeper = AbortOnDrop(tokio::spawn(sweeper::run(
        store.clone(),
        sweeper::interval(config.lease_ttl),
    )));
    // This replica's name in controller leases: unique per process.
    let holder = format!("replica-{:016x}", rand::random::<u64>());
    let canaries = AbortOnDrop(tokio::spawn(crate::canary::run(
        store.clone(),
        view.subscribe(),
        holder,
    )));
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let registry = Arc::new(registry);
    let ca_expiry = AbortOnDrop(tokio::spawn(crate::ca::report_expiry(
        ca.subscribe(),
        metrics.ca_expiry(),
    )));
    let trace_sweeper = AbortOnDrop(tokio::spawn(crate::telemetry::sweeper::run(
        store.clone(),
        crate::telemetry::sweeper::Retention {
            max_age: config.trace_retention,
            max_spans: config.trace_max_spans,
            every: config.trace_sweep_interval,
        },
        metrics.clone(),
    )));
    let (otlp_export, otlp_task) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let (export, task) = otlp::start(
                otlp::OtlpConfig {
                    endpoint: endpoint.clone(),
                    headers: config.otlp_headers.clone(),
                    timeout: config.otlp_timeout,
                    // At most 10,000,000 (checked by the parser): fits any usize we run on.
                    queue: usize::try_from(config.otlp_queue).unwrap_or(usize::MAX),
                },
                metrics.otlp(),
            )?;
            tracing::info!(otlp.endpoint = %endpoint, "exporting accepted spans over OTLP/gRPC");
            (Some(export), Some(AbortOnDrop(task)))
        }
        None => (None, None),
    };
    let (span_writer, span_writer_task) =
        crate::telemetry::writer::SpanWriter::start(store.clone(), metrics.clone(), otlp_export);
    let store_engine = store.engine();
    let revocations = RevocationView::start(store.clone(), metrics.revocations()).await?;
    let inputs = Arc::new(Inputs {
        tokens: auth::Tokens::new(store.clone(), metrics.clone()),
        limits: crate::api::Limits {
            watches_per_identity: usize::try_from(config.max_watches_per_identity)
                .unwrap_or(usize::MAX),
            endpoints_per_identity: usize::try_from(config.max_endpoints_per_identity)
                .unwrap_or(usize::MAX),
            address_exceptions: config.registration_exceptions.clone(),
        },
        watches: crate::api::Watches::default(),
        store,
        feed,
        ca,
        metrics,
        svid_ttl: config.svid_ttl,
        lease_ttl: config.lease_ttl,
        service_vips: config.service_vip_range,
        view,
        revocations,
        started_at: rfc3339(now_ms()),
        spans: span_writer,
        pushed: crate::discovery::pushed::PushLog::default(),
    });

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("reflection service")?;
    let metrics_routes = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: http::HeaderMap| {
            let registry = registry.clone();
            async move {
                use quiver_api::exposition;
                let accept = headers
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                match metrics::encode(&registry) {
                    Ok(body) if exposition::wants_openmetrics(accept) => (
                        http::StatusCode::OK,
                        [(http::header::CONTENT_TYPE, exposition::OPENMETRICS)],
                        body,
                    ),
                    Ok(body) => (
                        http::StatusCode::OK,
                        [(http::header::CONTENT_TYPE, exposition::PROMETHEUS_TEXT)],
                        exposition::to_prometheus_text(&body),
                    ),
                    Err(_) => (
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(http::header::CONTENT_TYPE, "text/plain")],
                        "metrics encoding failed".to_string(),
                    ),
                }
            }
        }),
    );
    // gRPC-web applies to the gRPC services only: its layer answers 400 to any other HTTP/1.1
    // request, which would break /metrics scrapes (and the console).
    let grpc = tonic::service::Routes::new(v1::mesh_admin_server::MeshAdminServer::new(
        AdminApi::new(inputs.clone()),
    ))
    .add_service(v1::mesh_discovery_server::MeshDiscoveryServer::new(
        DiscoveryApi::new(inputs.clone()),
    ))
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha)
    .prepare()
    .into_axum_router()
    .layer(tonic_web::GrpcWebLayer::new());
    // The Kubernetes sidecar injector (a mutating admission webhook): no token, no store.
    let inject_routes = crate::inject::http::routes(Arc::new(crate::inject::Injector::new(
        config.inject.clone(),
        inputs.ca.trust_domain(),
    )));
    let console = crate::console::Console::new(config.console_dir.as_deref());
    let routes = tonic::service::Routes::from(
        console.mount(metrics_routes.merge(inject_routes).merge(grpc)),
    );

    // TLS on the API is done by `listener::incoming` (certificates replaced while running),
    // not by tonic, whose config is fixed at start.
    let mut api_ca_file = None;
    let api_tls = if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        Some(
            listener::ListenerTls::from_files(inputs.ca.clone(), cert.clone(), key.clone())
                .context("--tls-cert/--tls-key")?,
        )
    } else if config.tls_mesh_ca {
        let path = config.data_dir.join(API_CA_FILE);
        let tls =
            listener::ListenerTls::for_api(inputs.ca.clone(), config.tls_names(addr), path.clone())
                .context("--tls-mesh-ca: the API certificate")?;
        api_ca_file = Some(path);
        Some(tls)
    } else {
        None
    };
    let api_tls_task = api_tls
        .clone()
        .map(|tls| AbortOnDrop(tokio::spawn(tls.keep_current())));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(cors(config.cors_origins.clone()))
        .add_routes(routes);
    let server: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match api_tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            listener::incoming(listener, tls),
            stopped(shutdown_rx.clone()),
        )),
        None => Box::pin(
            router.serve_with_incoming_shutdown(incoming(listener), stopped(shutdown_rx.clone())),
        ),
    };
    let discovery = tonic::transport::Server::builder()
        // Find proxies that vanished without closing their Watch.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(v1::mesh_discovery_server::MeshDiscoveryServer::new(
            DiscoveryApi::new(inputs.clone()),
        ))
        .serve_with_incoming_shutdown(
            listener::incoming(discovery_listener, discovery_tls),
            stopped(shutdown_rx),
        );
    let task = tokio::spawn(async move {
        tokio::try_join!(server, discovery)?;
        Ok(())
    });
    Ok(Running {
        addr,
        discovery_addr,
        _sweeper: sweeper,
        _ca_refresh: ca_refresh,
        _ca_expiry: ca_expiry,
        _discovery_tls: discovery_tls_task,
        _api_tls: api_tls_task,
        _trace_sweeper: trace_sweeper,
        _canaries: canaries,
        _otlp: otlp_task,
        _span_writer: AbortOnDrop(span_writer_task),
        new_admin_token,
        api_ca_file,
        store_engine,
        shutdown: Some(shutdown_tx),
        task,
    })
}

/// Accepted connections with TCP_NODELAY: `serve_with_incoming` ignores the builder's
/// `tcp_nodelay`, and without it a small answer (a GetTrace, a receipt) waited ~40 ms for the
/// peer's delayed ACK (Nagle).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// CORS for browser clients speaking gRPC-web from another origin: only the API's own origin
/// (the console; same-origin requests need no CORS, but browsers send `Origin` on them) and
/// the operator's `--cors-origin` list. A page anywhere else cannot read an answer, so a
/// token in a browser cannot be used by another site.
fn cors(allowed: Vec<String>) -> CorsLayer {
    let names = |list: &[&'static str]| -> Vec<HeaderName> {
        list.iter().map(|h| HeaderName::from_static(h)).collect()
    };
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(
            move |origin: &HeaderValue, req: &http::request::Parts| {
                let Ok(origin) = origin.to_str() else {
                    return false;
                };
                let own = req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri.authority().map(http::uri::Authority::as_str))
                    .is_some_and(|host| {
                        origin
                            .strip_prefix("http://")
                            .or_else(|| origin.strip_prefix("https://"))
                            == Some(host)
                    });
                own || allowed.iter().any(|a| a == origin)
            },
        ))
        .allow_methods([http::Method::POST, http::Method::GET, http::Method::OPTIONS])
        .allow_headers(names(&[
            "content-type",
            "x-grpc-web",
            "x-user-agent",
            "grpc-timeout",
            "authorization",
        ]))
        .expose_headers(names(&[
            "grpc-status",
            "grpc-message",
            "grpc-status-details-bin",
        ]))
        .max_age(Duration::from_secs(3600))
        .vary([HeaderName::from_static("origin")])
}
