//! quiver-proxy: the sidecar. Apps speak plain HTTP/1.1, h2c, gRPC or TCP to it on localhost;
//! it carries everything to peer proxies over mutually authenticated HTTP/3.
//!
//! [`proxy`] is the request path, [`mesh`] what lies between proxies, [`telemetry`] what the
//! proxy reports, [`control`] control-plane mode. ARCHITECTURE.md at the repository root has
//! the map: every file, both request paths step by step, and the config flow.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app_health;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod drain;
pub mod errors;
pub mod identity;
pub mod limits;
pub mod mesh;
pub mod proxy;
pub mod snapshot;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use prometheus_client::registry::Registry;
use quiver_api::tls::MeshIdentity;
use tokio::net::TcpListener;

use crate::config::{ProxyConfig, Tuning};
use crate::drain::Drain;
use crate::mesh::transport::Transport;
use crate::snapshot::{Snapshot, Target};
use crate::telemetry::metrics::Metrics;

/// Everything the data path shares, passed as one `Arc`.
pub struct Inputs {
    /// The installed snapshot with its services' runtime state ([`upstream`]).
    routing: RwLock<Arc<proxy::upstream::Routing>>,
    pub transport: Transport,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub tuning: Tuning,
    pub apps: proxy::inbound::AppClients,
    identity: RwLock<identity::IdentityStatus>,
    /// Why the proxy is not ready to serve yet (`None`: ready). Control-plane mode starts
    /// with "waiting for the first snapshot"; static mode starts ready.
    waiting: tokio::sync::watch::Sender<Option<String>>,
    /// Spans and edge counts for the control plane (control-plane mode only).
    pub telemetry: Option<telemetry::trace::Telemetry>,
    /// This proxy's own service: `--service` when joined, else the service account of its
    /// SPIFFE id. The `source` of its outbound requests in metrics.
    pub local_service: String,
}

impl Inputs {
    /// The current snapshot (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.routing().snapshot.clone()
    }

    /// The current snapshot with its services' runtime state (cheap: an `Arc` clone).
    pub fn routing(&self) -> Arc<proxy::upstream::Routing> {
        self.routing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Install a snapshot, carrying each service's balancer and budget state over by name;
    /// requests already decided keep the routing they started with. Its deny-list is enforced
    /// first: live connections of peers it revokes are closed before anything routes on it.
    pub fn set_snapshot(&self, s: Snapshot) {
        let closed = self.transport.set_revocations(s.revocations.clone());
        if closed > 0 {
            tracing::warn!(closed, "closed live connections of revoked peers");
        }
        let mut cur = self
            .routing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cur = Arc::new(proxy::upstream::Routing::install(
            Arc::new(s),
            Some(&cur),
            &self.tuning.balancing,
            std::time::Instant::now(),
        ));
    }

    /// The identity currently presented to new peers.
    pub fn identity(&self) -> identity::IdentityStatus {
        self.identity
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn identity_reloaded(&self, id: &MeshIdentity, files: Option<&config::IdentityPaths>) {
        let mut cur = self
            .identity
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cur = identity::IdentityStatus::of(id, files, cur.reloads + 1);
        self.metrics.identity_reload(true);
        self.metrics.identity_expiry(identity::not_after_unix(id));
    }

    /// A certificate renewed through the control plane is in use.
    pub(crate) fn identity_renewed(&self, id: &MeshIdentity) {
        self.identity_reloaded(id, None);
    }

    /// `None` once the proxy may serve; otherwise what it is waiting for (shown by `/readyz`).
    pub fn waiting_for(&self) -> Option<String> {
        self.waiting.borrow().clone()
    }

    pub fn is_ready(&self) -> bool {
        self.waiting.borrow().is_none()
    }

    pub(crate) fn set_waiting(&self, why: Option<String>) {
        self.waiting.send_if_modified(|w| {
            let changed = *w != why;
            *w = why;
            changed
        });
    }
}

/// The addresses a started proxy actually bound (ports may have been 0 in the config).
#[derive(Debug, Clone)]
pub struct Bound {
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub http_proxy: Option<SocketAddr>,
    /// One per `outbound` listener, in config order.
    pub outbound: Vec<SocketAddr>,
    /// Transparent capture's TCP listeners (outbound, inbound, DNS), when on.
    pub capture: Vec<SocketAddr>,
}

impl Bound {
    /// The TCP listeners of this proxy itself (admin, HTTP proxy, upstream listeners): no
    /// app port may be one of them.
    pub fn own_listeners(&self) -> Vec<SocketAddr> {
        let mut own = vec![self.admin];
        own.extend(self.http_proxy);
        own.extend(self.outbound.iter().copied());
        own.extend(self.capture.iter().copied());
        own
    }
}

/// Transparent capture's sockets (`proxy/transparent.rs`, `proxy/dns.rs`), bound.
struct Capture {
    settings: Arc<config::CaptureSettings>,
    outbound: TcpListener,
    inbound: TcpListener,
    dns: Option<(tokio::net::UdpSocket, TcpListener)>,
    /// The namespace whose mesh names the resolver answers.
    namespace: String,
}

impl Capture {
    async fn bind(settings: &config::CaptureSettings, namespace: String) -> anyhow::Result<Self> {
        let outbound = TcpListener::bind(settings.outbound_listen)
            .await
            .with_context(|| {
                format!(
                    "binding capture.outbound_listen {}",
                    settings.outbound_listen
                )
            })?;
        let inbound = TcpListener::bind(settings.inbound_listen)
            .await
            .with_context(|| {
                format!("binding capture.inbound_listen {}", settings.inbound_listen)
            })?;
        let dns = match settings.dns_listen {
            Some(a) => {
                let udp = tokio::net::UdpSocket::bind(a)
                    .await
                    .with_context(|| format!("binding capture.dns_listen {a} (UDP)"))?;
                // The TCP side on the port UDP got (a config's port 0 included).
                let tcp_at = udp.local_addr()?;
                let tcp = TcpListener::bind(tcp_at)
                    .await
                    .with_context(|| format!("binding capture.dns_listen {tcp_at} (TCP)"))?;
                Some((udp, tcp))
            }
            None => None,
        };
        let mut settings = settings.clone();
        if settings.dns_upstreams.is_empty()
            && let Some((udp, _)) = &dns
        {
            let own = udp.local_addr()?;
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            settings.dns_upstreams = proxy::dns::upstreams_from_resolv_conf(&text, own);
        }
        Ok(Self {
            settings: Arc::new(settings),
            outbound,
            inbound,
            dns,
            namespace,
        })
    }

    fn addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        let mut v = vec![self.outbound.local_addr()?, self.inbound.local_addr()?];
        if let Some((_, tcp)) = &self.dns {
            v.push(tcp.local_addr()?);
        }
        Ok(v)
    }

    fn spawn(self, inputs: &Arc<Inputs>, tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
        tasks.push(tokio::spawn(proxy::transparent::serve_outbound(
            inputs.clone(),
            self.outbound,
            self.settings.clone(),
        )));
        tasks.push(tokio::spawn(proxy::transparent::serve_inbound(
            inputs.clone(),
            self.inbound,
            self.settings.clone(),
        )));
        if let Some((udp, tcp)) = self.dns {
            let names = inputs.clone();
            let lookup: proxy::dns::Lookup = Arc::new(move |service: &str| {
                names
                    .snapshot()
                    .services
                    .get(service)
                    .and_then(|s| s.virtual_ip)
            });
            let resolver = Arc::new(
                proxy::dns::Resolver::new(
                    self.namespace,
                    lookup,
                    self.settings.dns_upstreams.clone(),
                    std::time::Duration::from_secs(2),
                )
                .with_counters(proxy::dns::Counters::on(inputs.metrics.dns_queries.clone())),
            );
            tasks.push(tokio::spawn(
                resolver.clone().serve_udp(udp, inputs.drain.clone()),
            ));
            tasks.push(tokio::spawn(resolver.serve_tcp(tcp, inputs.drain.clone())));
        }
    }
}

/// A proxy whose sockets are bound, ready to [`Proxy::run`].
pub struct Proxy {
    inputs: Arc<Inputs>,
    admin: Arc<admin::Admin>,
    admin_listener: TcpListener,
    http_proxy: Option<TcpListener>,
    outbound: Vec<(TcpListener, proxy::outbound::Entry, snapshot::Protocol)>,
    capture: Option<Capture>,
    drain_timeout: std::time::Duration,
    identity_files: Option<config::IdentityPaths>,
    /// Control-plane mode: the joined session.
    session: Option<Arc<control::Session>>,
    bootstrap: config::Bootstrap,
    /// The file to re-read for live snapshot changes, and how often.
    config_file: Option<(std::path::PathBuf, std::time::Duration)>,
    bound: Bound,
}

impl Proxy {
    /// Static mode: load the identity files and bind every socket. Fails (with context) if a
    /// port is taken.
    pub async fn bind(config: ProxyConfig) -> anyhow::Result<Self> {
        let Some(files) = config.bootstrap.identity.clone() else {
            anyhow::bail!(
                "this config joins a control plane: use Proxy::bind_joined with a control::Session"
            );
        };
        let identity = MeshIdentity::from_files(&files.cert, &files.key, &files.trust_bundle)
            .context("loading identity")?;
        Self::bind_with(config, &identity, None).await
    }

    /// Control-plane mode: bind every socket with the identity `session` obtained by joining.
    /// The proxy is not ready (and serves no app traffic) until the first snapshot arrives.
    pub async fn bind_joined(
        config: ProxyConfig,
        session: control::Session,
    ) -> anyhow::Result<Self> {
        let identity = session.identity();
        Self::bind_with(config, &identity, Some(Arc::new(session))).await
    }

    async fn bind_with(
        config: ProxyConfig,
        identity: &MeshIdentity,
        session: Option<Arc<control::Session>>,
    ) -> anyhow::Result<Self> {
        let b = &config.bootstrap;
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let transport = Transport::bind(
            b.quic_listen,
            identity,
            &b.tuning.transport(),
            metrics.clone(),
        )
        .context("starting QUIC")?;
        // A static file's deny-list holds from the first handshake (later ones arrive through
        // `set_snapshot`).
        transport.set_revocations(config.snapshot.revocations.clone());
        let quic = transport.local_addr().context("QUIC local address")?;
        let admin_listener = TcpListener::bind(b.admin_listen)
            .await
            .with_context(|| format!("binding admin {}", b.admin_listen))?;
        let http_proxy = match b.http_proxy_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding http_proxy {a}"))?,
            ),
            None => None,
        };
        let mut outbound = Vec::new();
        for o in &b.outbound {
            let l = TcpListener::bind(o.listen)
                .await
                .with_context(|| format!("binding outbound listener {}", o.listen))?;
            let entry = proxy::outbound::Entry::Fixed(Target {
                service: o.service.clone(),
                port: o.port,
            });
            outbound.push((l, entry, o.protocol));
        }
        let capture = match &b.capture {
            Some(settings) => {
                let namespace = identity
                    .spiffe_id
                    .workload_parts()
                    .map(|(ns, _)| ns.to_string())
                    .unwrap_or_default();
                Some(Capture::bind(settings, namespace).await?)
            }
            None => None,
        };
        let bound = Bound {
            quic,
            admin: admin_listener.local_addr()?,
            http_proxy: http_proxy
                .as_ref()
                .map(tokio::net::TcpListener::local_addr)
                .transpose()?,
            outbound: outbound
                .iter()
                .map(|(l, _, _)| l.local_addr())
                .collect::<Result<_, _>>()?,
            capture: capture
                .as_ref()
                .map(Capture::addresses)
                .transpose()?
                .unwrap_or_default(),
        };
        let config_json = serde_json::json!({
            "bound": {
                "quic": quic.to_string(),
                "admin": bound.admin.to_string(),
                "http_proxy": bound.http_proxy.map(|a| a.to_string()),
                "outbound": bound.outbound.iter().map(std::string::ToString::to_string).collect::<Vec<_>>(),
                "capture": bound.capture.iter().map(std::string::ToString::to_string).collect::<Vec<_>>(),
            },
            "bootstrap": &config.bootstrap,
        });
        metrics.identity_expiry(identity::not_after_unix(identity));
        let local_service = match &session {
            Some(s) => s.settings().service.clone(),
            None => identity
                .spiffe_id
                .workload_parts()
                .map(|(_, sa)| sa.to_string())
                .unwrap_or_default(),
        };
        let inputs = Arc::new(Inputs {
            routing: RwLock::new(Arc::new(proxy::upstream::Routing::install(
                Arc::new(config.snapshot.clone()),
                None,
                &b.tuning.balancing,
                std::time::Instant::now(),
            ))),
            transport,
            metrics,
            drain: Drain::new(),
            tuning: b.tuning.clone(),
            apps: proxy::inbound::AppClients::default(),
            identity: RwLock::new(identity::IdentityStatus::of(
                identity,
                b.identity.as_ref(),
                0,
            )),
            waiting: tokio::sync::watch::Sender::new(
                session
                    .as_ref()
                    .map(|_| "waiting for the first snapshot from the control plane".to_string()),
            ),
            telemetry: session.as_ref().map(|s| {
                telemetry::trace::Telemetry::new(
                    s.settings().service.clone(),
                    s.settings().span_queue,
                )
            }),
            local_service,
        });
        let admin = Arc::new(admin::Admin {
            inputs: inputs.clone(),
            registry,
            config_json,
            app_probes: b.app_probes.clone(),
        });
        Ok(Self {
            inputs,
            admin,
            admin_listener,
            http_proxy,
            outbound,
            capture,
            drain_timeout: b.drain_timeout,
            identity_files: b.identity.clone(),
            session,
            bootstrap: config.bootstrap.clone(),
            config_file: None,
            bound,
        })
    }

    pub fn bound(&self) -> &Bound {
        &self.bound
    }

    /// Re-read `path` every `interval` and apply changes to services, routes, authorization
    /// and mesh defaults live (in-flight requests keep the snapshot they started with).
    /// Bootstrap fields (identity paths, listeners, tuning) need a restart: a change to them
    /// is logged and otherwise ignored.
    pub fn reload_config_from(
        mut self,
        path: std::path::PathBuf,
        interval: std::time::Duration,
    ) -> Self {
        self.config_file = Some((path, interval));
        self
    }

    pub fn inputs(&self) -> &Arc<Inputs> {
        &self.inputs
    }

    /// Serve until `shutdown` resolves, then drain: stop accepting, let in-flight requests
    /// finish (up to the drain timeout), and close peer connections with an application code.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let inputs = self.inputs;
        // SIGTERM (the caller's future) or `POST /quitquitquit` from the pod, whichever
        // comes first: a Job's pod finishes when its app asks its sidecar to go.
        let stop = inputs.drain.clone();
        let shutdown = async move {
            tokio::select! {
                () = shutdown => {}
                () = stop.stop_requested() => tracing::info!("stop requested on /quitquitquit"),
            }
        };
        let admin = tokio::spawn(admin::serve(self.admin, self.admin_listener));
        let mut tasks = Vec::new();
        let mut shutdown = std::pin::pin!(shutdown);
        if let Some(session) = &self.session {
            // Serve nothing until the first snapshot: an app's early connections wait in the
            // listen backlog instead of meeting an empty config.
            tasks.push(tokio::spawn(control::follow(
                inputs.clone(),
                session.clone(),
                self.bound.own_listeners(),
            )));
            tasks.push(tokio::spawn(control::renew(
                inputs.clone(),
                session.clone(),
            )));
            tasks.push(tokio::spawn(control::ship_telemetry(
                inputs.clone(),
                session.clone(),
            )));
            let mut waiting = inputs.waiting.subscribe();
            tokio::select! {
                _ = waiting.wait_for(Option::is_none) => {}
                _ = &mut shutdown => {
                    tracing::info!("stopped before the first snapshot arrived");
                    for t in tasks {
                        t.abort();
                    }
                    admin.abort();
                    return;
                }
            }
        }
        tasks.push(tokio::spawn(proxy::inbound::serve(inputs.clone())));
        if let Some(files) = &self.identity_files
            && !files.reload_interval.is_zero()
        {
            tasks.push(tokio::spawn(identity::watch_files(
                inputs.clone(),
                files.clone(),
                files.reload_interval,
            )));
        }
        if let Some((path, interval)) = self.config_file.clone() {
            tasks.push(tokio::spawn(watch_config(
                inputs.clone(),
                path,
                interval,
                self.bootstrap.clone(),
            )));
        }
        if let Some(l) = self.http_proxy {
            tasks.push(tokio::spawn(proxy::outbound::serve(
                inputs.clone(),
                l,
                proxy::outbound::Entry::HttpProxy,
                snapshot::Protocol::Http1,
            )));
        }
        for (l, entry, protocol) in self.outbound {
            tasks.push(tokio::spawn(proxy::outbound::serve(
                inputs.clone(),
                l,
                entry,
                protocol,
            )));
        }
        if let Some(capture) = self.capture {
            capture.spawn(&inputs, &mut tasks);
        }
        // Registered only now that every listener serves: callers never see an endpoint that
        // cannot answer yet.
        let lease = self.session.as_ref().map(|session| {
            let advertise =
                control::advertise_address(session.settings(), self.bound.quic, session.address());
            let own = self
                .bound
                .own_listeners()
                .iter()
                .map(SocketAddr::port)
                .collect();
            tokio::spawn(control::keep_registered(session.clone(), advertise, own))
        });
        tracing::info!(
            quic = %self.bound.quic,
            admin = %self.bound.admin,
            "proxy ready"
        );
        shutdown.await;
        if let (Some(session), Some(lease)) = (&self.session, lease) {
            // Leave the endpoint lists first, so callers stop choosing us while we drain (the
            // lease task goes first, or it would register again).
            lease.abort();
            session.deregister().await;
        }
        tracing::info!(inflight = inputs.drain.inflight(), timeout = ?self.drain_timeout, "draining");
        let left = inputs.drain.drain(self.drain_timeout).await;
        if left > 0 {
            tracing::warn!(left, "drain timeout: aborting requests still in flight");
        }
        for t in tasks {
            t.abort();
        }
        inputs
            .transport
            .close(std::time::Duration::from_secs(1))
            .await;
        admin.abort();
        tracing::info!("proxy stopped");
    }
}

/// Poll the config file; apply a changed, valid snapshot. An invalid file is logged with
/// every problem and counted; the proxy keeps running on its current snapshot.
async fn watch_config(
    inputs: Arc<Inputs>,
    path: std::path::PathBuf,
    interval: std::time::Duration,
    bootstrap: config::Bootstrap,
) {
    let mut last = std::fs::read(&path).ok();
    let running = serde_json::to_string(&bootstrap).unwrap_or_default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Ok(now) = std::fs::read(&path) else {
            continue;
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now);
        match ProxyConfig::load(&path) {
            Ok(c) => {
                if serde_json::to_string(&c.bootstrap).unwrap_or_default() != running {
                    tracing::warn!(
                        "config file changed bootstrap fields (identity, listen, outbound, tuning, drain_timeout): restart to apply them; applying the rest"
                    );
                }
                tracing::info!(
                    services = c.snapshot.services.len(),
                    routes = c.snapshot.policy_config.routes.len(),
                    "config reloaded"
                );
                inputs.set_snapshot(c.snapshot);
                inputs.metrics.config_reload(true);
            }
            Err(errs) => {
                inputs.metrics.config_reload(false);
                tracing::warn!(errors = %errs, "config file changed but is invalid; keeping the running config");
            }
        }
    }
}
