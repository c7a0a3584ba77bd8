//! Control-plane mode: the proxy's side of `quiver.v1.MeshDiscovery`.
//!
//! [`Session::join`] generates a key here (it never leaves the process), exchanges a join
//! token and a CSR for an SVID, and keeps the result. Every dial of the control plane pins its
//! SPIFFE id (`ControlPlane::control_plane_id`): a workload certificate of the mesh is refused
//! in the handshake, before the join token or anything else is sent. The trust bundle starts
//! as `--ca-cert` and changes only with overlap
//! ([`quiver_api::tls::check_bundle_change`]), whether it comes in the Join answer, a Renew
//! answer or a pushed snapshot. Once the proxy is bound, three tasks run beside the data
//! path:
//! - [`follow`]: the Watch stream; each snapshot is converted ([`crate::control::pushed`]) and applied
//!   atomically, its deny-list of revoked identities included. A lost stream is retried with
//!   backoff and jitter while the proxy keeps serving on the last good snapshot.
//! - [`keep_registered`]: Register, then KeepAlive every third of the lease, each carrying
//!   what this proxy runs (the snapshot version applied, the last refused one and why, its
//!   version and certificate expiry; sent at once after each push); a lapsed lease (the
//!   control plane was away too long) is registered again.
//! - [`renew`]: a new key and certificate at two thirds of the lifetime, swapped into the
//!   QUIC endpoint for new connections without touching live ones.

pub mod pushed;
mod report;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use quiver_api::SpiffeId;
use quiver_api::tls::MeshIdentity;
use quiver_api::v1;
use quiver_api::v1::mesh_discovery_client::MeshDiscoveryClient;
use tonic::transport::Channel;

use crate::Inputs;
use crate::config::ControlPlane;

/// How long a call to the control plane may take (the Watch stream itself has no limit).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Worth retrying: the control plane may come up or become reachable.
    #[error("control plane {address} unreachable: {detail}")]
    Unreachable { address: String, detail: String },
    /// The control plane answered no (bad, used-up or expired token; bad CSR). Final.
    #[error("the control plane at {address} refused to join: {detail}")]
    Refused { address: String, detail: String },
    /// Something on this side is wrong (CA file, an answer that does not fit). Final.
    #[error("{0}")]
    Local(String),
}

impl JoinError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// The PEM material behind the current identity, kept so a new trust bundle can be combined
/// with the current certificate and key.
struct Held {
    chain_pem: String,
    key_pem: String,
    bundle_pem: String,
    identity: Arc<MeshIdentity>,
    /// When this certificate arrived: renewal is due at 2/3 of (not_after - received).
    received: SystemTime,
    not_after: SystemTime,
}

/// A joined proxy's link to the control plane.
pub struct Session {
    settings: ControlPlane,
    /// Where the control plane was last found; the name is resolved again at every dial.
    addr: Mutex<SocketAddr>,
    held: Mutex<Held>,
    channel: tokio::sync::Mutex<Option<Channel>>,
    /// The registered workload's name, for KeepAlive and Deregister.
    registered: Mutex<Option<String>>,
    /// What this proxy runs, reported with every KeepAlive (`quiverctl proxy-status`).
    status: report::ConfigStatus,
}

impl Session {
    /// Resolve the control plane, generate a key, and exchange the join token and a CSR for an
    /// SVID. One attempt: the caller decides whether to retry an [`JoinError::Unreachable`].
    pub async fn join(settings: &ControlPlane) -> Result<Self, JoinError> {
        let address = settings.address.clone();
        let unreachable = |detail: String| JoinError::Unreachable {
            address: address.clone(),
            detail,
        };
        let addr = resolve(&settings.address).await.map_err(unreachable)?;
        let ca_cert = |e: &dyn std::fmt::Display| {
            JoinError::Local(format!("--ca-cert {}: {e}", settings.ca_cert.display()))
        };
        let bundle_pem = std::fs::read_to_string(&settings.ca_cert).map_err(|e| ca_cert(&e))?;
        let configured = quiver_api::certs::certs_from_pem(&bundle_pem).map_err(|e| ca_cert(&e))?;
        let tls = quiver_api::tls::pinned_client_config_without_identity(
            &bundle_pem,
            &settings.control_plane_id,
            &[b"h2"],
        )
        .map_err(|e| ca_cert(&e))?;
        let channel = quiver_api::dial::connect(addr, tls)
            .await
            .map_err(|e| unreachable(with_causes(&e)))?;
        let (key_pem, csr_der) = quiver_api::certs::new_key_and_csr()
            .map_err(|e| JoinError::Local(format!("generating a key: {e}")))?;
        let answer = tokio::time::timeout(
            CALL_TIMEOUT,
            MeshDiscoveryClient::new(channel).join(v1::JoinRequest {
                join_token: settings.join_token.clone(),
                csr_der,
            }),
        )
        .await
        .map_err(|_| unreachable(format!("no answer to Join within {CALL_TIMEOUT:?}")))?;
        let answer = match answer {
            Ok(a) => a.into_inner(),
            Err(s) if transient(&s) => return Err(unreachable(describe(&s))),
            Err(s) => {
                return Err(JoinError::Refused {
                    address,
                    detail: describe(&s),
                });
            }
        };
        let id = SpiffeId::parse(&answer.spiffe_id).map_err(|e| {
            JoinError::Local(format!(
                "Join answered a bad spiffeId {:?}: {e}",
                answer.spiffe_id
            ))
        })?;
        if id.trust_domain() != settings.trust_domain {
            return Err(JoinError::Local(format!(
                "joined as {id}, but this proxy expects trust domain {} (--trust-domain)",
                settings.trust_domain
            )));
        }
        // The Join answer may add roots (a rotation under way) but never replaces --ca-cert:
        // it must keep one of them.
        let bundle_pem = if answer.trust_bundle_pem.is_empty() {
            bundle_pem
        } else {
            quiver_api::tls::check_bundle_change(&configured, &answer.trust_bundle_pem).map_err(
                |e| {
                    JoinError::Local(format!(
                        "the trust bundle in the Join answer is refused: {e}"
                    ))
                },
            )?;
            answer.trust_bundle_pem
        };
        let held = Held::new(answer.cert_chain_pem, key_pem, bundle_pem).map_err(|e| {
            JoinError::Local(format!("the certificate from Join does not load: {e}"))
        })?;
        tracing::info!(spiffe_id = %id, not_after = ?held.not_after, control_plane = %addr, "joined the mesh");
        Ok(Self {
            settings: settings.clone(),
            addr: Mutex::new(addr),
            held: Mutex::new(held),
            channel: tokio::sync::Mutex::new(None),
            registered: Mutex::new(None),
            status: report::ConfigStatus::default(),
        })
    }

    /// The identity to present now.
    pub fn identity(&self) -> Arc<MeshIdentity> {
        self.held().identity.clone()
    }

    pub fn settings(&self) -> &ControlPlane {
        &self.settings
    }

    /// The control plane's discovery address, as last resolved.
    pub fn address(&self) -> SocketAddr {
        *self
            .addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client on the cached channel, dialling (with the current identity) when there is none.
    async fn client(&self) -> Result<MeshDiscoveryClient<Channel>, String> {
        let mut cached = self.channel.lock().await;
        if let Some(c) = cached.as_ref() {
            return Ok(MeshDiscoveryClient::new(c.clone()));
        }
        let tls = self
            .identity()
            .pinned_client_config(&self.settings.control_plane_id, &[b"h2"])
            .map_err(|e| format!("building the client TLS config: {e}"))?;
        // Resolve again: behind one DNS name, replicas come and go.
        let addr = match resolve(&self.settings.address).await {
            Ok(a) => {
                *self
                    .addr
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = a;
                a
            }
            Err(e) => {
                tracing::debug!(error = %e, "resolving the control plane again failed; using the last address");
                self.address()
            }
        };
        let channel = quiver_api::dial::connect(addr, tls)
            .await
            .map_err(|e| with_causes(&e))?;
        *cached = Some(channel.clone());
        Ok(MeshDiscoveryClient::new(channel))
    }

    /// Note the outcome of a pushed snapshot and have it reported now.
    fn note_config(&self, version: u64, refused: Option<String>) {
        self.status.note(version, refused);
    }

    /// The report sent with a KeepAlive.
    fn report(&self) -> v1::ProxyReport {
        self.status.report(self.held().not_after)
    }

    /// Forget the channel so the next call dials again (after an error).
    async fn reset(&self) {
        *self.channel.lock().await = None;
    }

    /// Install a new certificate (and bundle) everywhere new connections look for it.
    fn install(&self, inputs: &Inputs, held: Held) -> Result<(), String> {
        inputs
            .transport
            .set_identity(&held.identity)
            .map_err(|e| e.to_string())?;
        inputs.identity_renewed(&held.identity);
        *self.held() = held;
        Ok(())
    }

    /// Deregister the workload (clean shutdown): callers stop picking this endpoint now
    /// rather than when the lease runs out.
    pub async fn deregister(&self) {
        let Some(name) = self
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let result = async {
            let mut client = self.client().await?;
            tokio::time::timeout(
                Duration::from_secs(2),
                client.deregister(v1::DeregisterRequest { name: name.clone() }),
            )
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|s| describe(&s))
        }
        .await;
        match result {
            Ok(_) => tracing::info!(workload = %name, "deregistered"),
            Err(e) => {
                tracing::warn!(workload = %name, error = %e, "deregister failed; the lease will lapse");
            }
        }
    }
}

impl Held {
    fn new(chain_pem: String, key_pem: String, bundle_pem: String) -> Result<Self, String> {
        let identity =
            MeshIdentity::from_pem(&chain_pem, &key_pem, &bundle_pem).map_err(|e| e.to_string())?;
        identity
            .server_config(&[b"h3"])
            .map_err(|e| format!("key does not match the certificate: {e}"))?;
        let not_after =
            quiver_api::certs::not_after(&identity.chain[0]).map_err(|e| e.to_string())?;
        Ok(Self {
            chain_pem,
            key_pem,
            bundle_pem,
            identity: Arc::new(identity),
            received: SystemTime::now(),
            not_after,
        })
    }

    /// When to renew: two thirds into the part of the lifetime this proxy has seen.
    fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.received)
            .unwrap_or_default();
        self.received + life * 2 / 3
    }
}

/// Follow the Watch stream for as long as the proxy runs. The first applied snapshot makes
/// the proxy ready; after that a lost stream only means no news: the last good snapshot
/// keeps serving while this reconnects with backoff and jitter.
pub async fn follow(inputs: Arc<Inputs>, session: Arc<Session>, own: Vec<SocketAddr>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(15));
    loop {
        let why = watch_once(&inputs, &session, &own, &mut backoff).await;
        inputs.metrics.control_plane_connected.set(0);
        session.reset().await;
        let wait = backoff.next_wait();
        if inputs.is_ready() {
            tracing::warn!(reason = %why, retry_in = ?wait, "lost the control plane; serving the last good config");
        } else {
            tracing::warn!(reason = %why, retry_in = ?wait, "no config from the control plane yet");
            inputs.set_waiting(Some(format!(
                "waiting for the first snapshot from the control plane: {why}"
            )));
        }
        tokio::time::sleep(wait).await;
    }
}

/// One Watch stream, until it breaks; returns why.
async fn watch_once(
    inputs: &Inputs,
    session: &Session,
    own: &[SocketAddr],
    backoff: &mut Backoff,
) -> String {
    let mut client = match session.client().await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let request = v1::ProxyWatchRequest {
        services: vec![session.settings.service.clone()],
    };
    let mut stream = match client.watch(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return describe(&s),
    };
    inputs.metrics.control_plane_connected.set(1);
    loop {
        match stream.message().await {
            Ok(Some(pushed)) => {
                apply(inputs, session, own, &pushed);
                backoff.reset();
            }
            Ok(None) => return "the control plane ended the stream".into(),
            Err(s) => return describe(&s),
        }
    }
}

/// Apply one pushed snapshot, whole or not at all (its deny-list included). `own` are this
/// proxy's TCP listeners.
fn apply(inputs: &Inputs, session: &Session, own: &[SocketAddr], pushed: &v1::ProxySnapshot) {
    let s = &session.settings;
    let converted = crate::control::pushed::snapshot(pushed, &s.zone, s.app_host, own)
        .map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>());
    // Revoked identities are checked against this proxy's own trust domain, not the push's.
    let deny = quiver_api::revocation::DenyList::parse_pushed(&pushed.revocations, &s.trust_domain)
        .map_err(|errs| {
            errs.into_iter()
                .map(|(field, reason)| format!("{field}: {reason}"))
                .collect::<Vec<_>>()
        });
    let snapshot = match (converted, deny) {
        (Ok(mut snap), Ok(deny)) => {
            snap.revocations = deny;
            snap
        }
        (converted, deny) => {
            let errs: Vec<String> = converted
                .err()
                .into_iter()
                .flatten()
                .chain(deny.err().into_iter().flatten())
                .collect();
            inputs.metrics.config_reload(false);
            tracing::warn!(version = pushed.version, errors = %errs.join("; "), "refused a pushed snapshot; keeping the current config");
            session.note_config(pushed.version, Some(errs.join("; ")));
            return;
        }
    };
    // A rotated trust bundle travels with the config: combine it with our certificate. A
    // bundle that keeps none of the roots trusted now is refused with the whole snapshot: a
    // control plane that sends one is not the mesh this proxy joined.
    if !pushed.trust_bundle_pem.is_empty() {
        let current = session.held();
        let next = (current.bundle_pem != pushed.trust_bundle_pem).then(|| {
            quiver_api::tls::check_bundle_change(&current.identity.bundle, &pushed.trust_bundle_pem)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    Held::new(
                        current.chain_pem.clone(),
                        current.key_pem.clone(),
                        pushed.trust_bundle_pem.clone(),
                    )
                })
        });
        drop(current);
        match next {
            Some(Ok(held)) => {
                if let Err(e) = session.install(inputs, held) {
                    inputs.metrics.config_reload(false);
                    tracing::warn!(version = pushed.version, error = %e, "cannot use the pushed trust bundle; keeping the current config");
                    session.note_config(
                        pushed.version,
                        Some(format!("the pushed trust bundle cannot be used: {e}")),
                    );
                    return;
                }
                tracing::info!(
                    roots = %crate::identity::trust_bundle(&session.identity()).join("; "),
                    "trust bundle updated from the control plane"
                );
            }
            Some(Err(e)) => {
                inputs.metrics.config_reload(false);
                tracing::warn!(version = pushed.version, error = %e, "refused a pushed snapshot: its trust bundle is refused; keeping the current config and bundle");
                session.note_config(
                    pushed.version,
                    Some(format!("trustBundlePem: refused: {e}")),
                );
                return;
            }
            None => {}
        }
    }
    tracing::info!(
        version = pushed.version,
        services = snapshot.services.len(),
        routes = snapshot.policy_config.routes.len(),
        "applied config from the control plane"
    );
    inputs.set_snapshot(snapshot);
    inputs.metrics.config_reload(true);
    inputs
        .metrics
        .snapshot_version
        .set(i64::try_from(pushed.version).unwrap_or(i64::MAX));
    inputs.set_waiting(None);
    session.note_config(pushed.version, None);
}

/// Register the workload and keep its lease alive until the proxy stops. `sidecar_ports` are
/// the local TCP ports this proxy listens on: the control plane refuses a registration whose
/// served ports would send inbound requests to them.
pub async fn keep_registered(
    session: Arc<Session>,
    advertise: SocketAddr,
    sidecar_ports: Vec<u16>,
) {
    let s = &session.settings;
    let registration = v1::WorkloadRegistration {
        service: s.service.clone(),
        address: advertise.to_string(),
        ports: Vec::new(),
        labels: s.labels.clone().into_iter().collect(),
        zone: s.zone.clone(),
        sidecar_ports: sidecar_ports.into_iter().map(u32::from).collect(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut lease: Option<(String, Duration)> = None;
    loop {
        let wait = match &lease {
            None => match register(&session, &registration).await {
                Ok((name, ttl)) => {
                    tracing::info!(workload = %name, address = %advertise, lease = ?ttl, "registered");
                    *session
                        .registered
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(name.clone());
                    lease = Some((name, ttl));
                    backoff.reset();
                    ttl / 3
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "register failed");
                    wait
                }
            },
            Some((name, ttl)) => {
                let ttl = *ttl;
                match keep_alive(&session, name).await {
                    Ok(()) => {
                        backoff.reset();
                        ttl / 3
                    }
                    Err(KeepAliveError::Lapsed) => {
                        tracing::warn!(workload = %name, "lease lapsed; registering again");
                        lease = None;
                        Duration::ZERO
                    }
                    Err(KeepAliveError::Failed(e)) => {
                        // Retry well inside the lease so one hiccup does not cost it.
                        let wait = backoff.next_wait().min(ttl / 6);
                        tracing::warn!(workload = %name, error = %e, retry_in = ?wait, "keep-alive failed");
                        session.reset().await;
                        wait
                    }
                }
            }
        };
        // A snapshot applied or refused is reported at once (while registered), not a
        // keep-alive later.
        if lease.is_some() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = session.status.changed() => {}
            }
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}

async fn register(
    session: &Session,
    registration: &v1::WorkloadRegistration,
) -> Result<(String, Duration), String> {
    let mut client = session.client().await?;
    let answer = tokio::time::timeout(CALL_TIMEOUT, client.register(registration.clone()))
        .await
        .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
        .map_err(|s| describe(&s))?
        .into_inner();
    let name = answer
        .workload
        .and_then(|w| w.metadata)
        .map(|m| m.name)
        .filter(|n| !n.is_empty())
        .ok_or("the answer names no workload")?;
    let ttl = quiver_api::duration::parse(&answer.lease_ttl)
        .map_err(|e| format!("leaseTtl {:?}: {e}", answer.lease_ttl))?;
    if ttl < Duration::from_millis(300) {
        return Err(format!(
            "leaseTtl {:?} is too short to keep",
            answer.lease_ttl
        ));
    }
    Ok((name, ttl))
}

enum KeepAliveError {
    Lapsed,
    Failed(String),
}

async fn keep_alive(session: &Session, name: &str) -> Result<(), KeepAliveError> {
    let mut client = session.client().await.map_err(KeepAliveError::Failed)?;
    let call = client.keep_alive(v1::KeepAliveRequest {
        name: name.into(),
        report: Some(session.report()),
    });
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => Err(KeepAliveError::Failed(format!(
            "no answer within {CALL_TIMEOUT:?}"
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Err(KeepAliveError::Lapsed),
        Ok(Err(s)) => Err(KeepAliveError::Failed(describe(&s))),
    }
}

/// Renew the certificate at two thirds of its lifetime, for as long as the proxy runs.
pub async fn renew(inputs: Arc<Inputs>, session: Arc<Session>) {
    loop {
        let due = session.held().renew_at();
        if let Ok(wait) = due.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match renew_once(&session).await {
                Ok(held) => {
                    let not_after = held.not_after;
                    match session.install(&inputs, held) {
                        Ok(()) => {
                            tracing::info!(not_after = ?not_after, "certificate renewed; new connections use it");
                            break;
                        }
                        Err(e) => {
                            inputs.metrics.identity_reload(false);
                            tracing::warn!(error = %e, "renewed certificate refused by the QUIC endpoint");
                        }
                    }
                }
                Err(e) => {
                    inputs.metrics.identity_reload(false);
                    session.reset().await;
                    let left = session
                        .held()
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tracing::warn!(error = %e, expires_in = ?left, "certificate renewal failed; retrying");
                }
            }
            tokio::time::sleep(backoff.next_wait()).await;
        }
    }
}

async fn renew_once(session: &Session) -> Result<Held, String> {
    let (key_pem, csr_der) =
        quiver_api::certs::new_key_and_csr().map_err(|e| format!("generating a key: {e}"))?;
    let mut client = session.client().await?;
    let answer = tokio::time::timeout(CALL_TIMEOUT, client.renew(v1::RenewRequest { csr_der }))
        .await
        .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
        .map_err(|s| describe(&s))?
        .into_inner();
    let current = session.identity().spiffe_id.to_string();
    if answer.spiffe_id != current {
        return Err(format!(
            "Renew answered for {:?}, not for {current}",
            answer.spiffe_id
        ));
    }
    let bundle = if answer.trust_bundle_pem.is_empty() {
        session.held().bundle_pem.clone()
    } else {
        let current = session.identity();
        quiver_api::tls::check_bundle_change(&current.bundle, &answer.trust_bundle_pem)
            .map_err(|e| format!("the trust bundle in the Renew answer is refused: {e}"))?;
        answer.trust_bundle_pem
    };
    Held::new(answer.cert_chain_pem, key_pem, bundle)
}

/// The address peers should dial: the configured one; else the QUIC listen address when it
/// is concrete; else the local IP that routes towards the control plane, with the QUIC port.
pub fn advertise_address(
    settings: &ControlPlane,
    quic: SocketAddr,
    control_plane: SocketAddr,
) -> SocketAddr {
    if let Some(a) = settings.advertise {
        return a;
    }
    if !quic.ip().is_unspecified() {
        return quic;
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel for a route.
    let unspecified: IpAddr = if control_plane.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let ip = std::net::UdpSocket::bind((unspecified, 0))
        .and_then(|s| s.connect(control_plane).map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(quic.ip());
    SocketAddr::new(ip, quic.port())
}

async fn resolve(address: &str) -> Result<SocketAddr, String> {
    match tokio::net::lookup_host(address).await {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{address} resolves to no address")),
        Err(e) => Err(format!("resolving {address}: {e}")),
    }
}

/// Statuses that say "try again later" rather than "no".
fn transient(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal
    )
}

fn describe(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// An error and the causes under it, which is where connect failures say what happened
/// (empty causes left out).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_text = c.to_string();
        if !c_text.trim().is_empty() {
            out.push(c_text);
        }
        cur = c.source();
    }
    out.join(": ")
}

/// Exponential backoff with full jitter: each wait is uniform in [base, ceiling], and the
/// ceiling doubles up to `max`. Many proxies losing one control plane do not return in step.
pub struct Backoff {
    base: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            ceiling: base,
        }
    }

    pub fn next_wait(&mut self) -> Duration {
        let hi = self.ceiling.max(self.base);
        let wait = rand::random_range(self.base..=hi);
        self.ceiling = (self.ceiling * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }
}

/// Spans per batch at most; a batch also goes out every [`SHIP_INTERVAL`].
const SHIP_BATCH: usize = 256;
const SHIP_INTERVAL: Duration = Duration::from_secs(1);

/// Ship finished spans and per-destination counts over `ReportTelemetry`: a batch every
/// second or every 256 spans, counts every `control_plane.edge_interval`, on one stream per
/// connection. While the control plane is away
/// the queue fills and spans are dropped and counted; requests never wait for this.
pub async fn ship_telemetry(inputs: Arc<Inputs>, session: Arc<Session>) {
    let Some(telemetry) = inputs.telemetry.as_ref() else {
        return;
    };
    let Some(mut queue) = telemetry.receiver() else {
        return;
    };
    let namespace = session
        .identity()
        .spiffe_id
        .workload_parts()
        .map(|(ns, _)| ns.to_string())
        .unwrap_or_default();
    let edge_interval = session.settings().edge_interval;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let mut edges_since = SystemTime::now();
    loop {
        let mut client = match session.client().await {
            Ok(c) => c,
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::debug!(error = %e, retry_in = ?wait, "telemetry: no control plane");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::TelemetryBatch>(4);
        let call = tokio::spawn(async move {
            client
                .report_telemetry(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        loop {
            let mut spans = Vec::new();
            let deadline = tokio::time::Instant::now() + SHIP_INTERVAL;
            while spans.len() < SHIP_BATCH {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(s)) => spans.push(to_proto(&s, &namespace)),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let edges = if edges_since.elapsed().unwrap_or_default() >= edge_interval {
                let start = std::mem::replace(&mut edges_since, SystemTime::now());
                edge_stats(telemetry, &namespace, start, edges_since)
            } else {
                Vec::new()
            };
            let dropped = telemetry.take_dropped();
            if spans.is_empty() && edges.is_empty() && dropped == 0 {
                if call.is_finished() {
                    break;
                }
                continue;
            }
            let n = spans.len() as u64;
            let batch = v1::TelemetryBatch {
                spans,
                edges,
                dropped_spans: dropped,
            };
            if tx.send(batch).await.is_err() {
                break;
            }
            inputs.metrics.spans_shipped.inc_by(n);
            backoff.reset();
        }
        drop(tx);
        match call.await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => tracing::debug!(error = %describe(&s), "telemetry stream ended"),
            Err(e) => tracing::debug!(error = %e, "telemetry task failed"),
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn to_proto(s: &crate::telemetry::trace::FinishedSpan, namespace: &str) -> v1::Span {
    use crate::telemetry::trace::hex;
    v1::Span {
        trace_id: hex(&s.trace_id),
        span_id: hex(&s.span_id),
        parent_span_id: s.parent_id.map(|p| hex(&p)).unwrap_or_default(),
        kind: s.kind.as_str().into(),
        namespace: namespace.into(),
        service: s.service.clone(),
        peer_service: s.peer_service.clone(),
        peer_identity: s.peer_identity.clone(),
        name: s.name.clone(),
        route: s.route.clone(),
        start_unix_nanos: unix_nanos(s.start),
        duration_nanos: i64::try_from(s.duration.as_nanos()).unwrap_or(i64::MAX),
        status_code: u32::from(s.status),
        error: s.error.into(),
        attempt: s.attempts.max(1),
        request_bytes: s.request_bytes,
        response_bytes: s.response_bytes,
        quic_connection_id: s.quic_connection_id.clone(),
        endpoint: s.endpoint.clone(),
    }
}

fn edge_stats(
    telemetry: &crate::telemetry::trace::Telemetry,
    namespace: &str,
    start: SystemTime,
    end: SystemTime,
) -> Vec<v1::EdgeStats> {
    telemetry
        .take_edges()
        .into_iter()
        .map(|(edge, c)| v1::EdgeStats {
            source_namespace: namespace.into(),
            source_service: telemetry.local_service.clone(),
            destination_service: edge.destination,
            destination_subset: edge.subset,
            requests: c.requests,
            errors: c.errors,
            latency_buckets: c.buckets.to_vec(),
            interval_start_unix_nanos: unix_nanos(start),
            interval_end_unix_nanos: unix_nanos(end),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_wait()).collect();
        for (i, w) in waits.iter().enumerate() {
            let ceiling =
                (Duration::from_millis(100) * 2u32.pow(i as u32)).min(Duration::from_secs(2));
            assert!(
                *w >= Duration::from_millis(100) && *w <= ceiling,
                "wait {i}: {w:?}"
            );
        }
        // Jitter: eight draws from widening ranges are not all equal.
        assert!(waits.iter().any(|w| *w != waits[0]));
        b.reset();
        assert_eq!(b.ceiling, Duration::from_millis(100));
    }

    #[test]
    fn renewal_is_due_at_two_thirds() {
        let ca = quiver_api::certs::CertificateAuthority::generate(
            "mesh.local",
            Duration::from_secs(3600),
        )
        .unwrap();
        let id = SpiffeId::parse("spiffe://mesh.local/ns/a/sa/b").unwrap();
        let issued = ca.issue(&id, Duration::from_secs(30)).unwrap();
        let held = Held::new(issued.chain_pem, issued.key_pem, ca.cert_pem().into()).unwrap();
        let left = held.renew_at().duration_since(held.received).unwrap();
        // 2/3 of the ~30 s the proxy sees (the certificate's own clock is second-granular).
        assert!(
            left >= Duration::from_secs(18) && left <= Duration::from_secs(21),
            "{left:?}"
        );
    }
}
