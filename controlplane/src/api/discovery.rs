//! `quiver.v1.MeshDiscovery`, the proxies' API.
//!
//! Join and GetTrustBundle need no client certificate: the join token inside the request is
//! the credential (checked and used up atomically in the store). Every other call acts for
//! the SPIFFE id of the caller's client certificate ([`super::peer`]) and is refused without
//! one, so it only works on the discovery listener (mTLS). One identity holds at most
//! `--max-watches-per-identity` Watch streams on a replica ([`Watches`]). KeepAlive carries
//! the proxy's status report and every push is noted for it ([`super::proxies`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::Stream;
use quiver_api::v1;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::{
    Inputs, is_dns_label, peer, redeem_status, revocations, rfc3339, svid_ttl, trust_bundle,
    workloads,
};
use crate::auth::hash_secret;
use crate::discovery::view::service_account;
use crate::discovery::{Caller, snapshot};
use crate::store::now_ms;

/// How long a new Watch waits for this replica's view to reach the store's version.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// What Watch returns.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<v1::ProxySnapshot, Status>> + Send>>;

/// Watch streams open on this replica, per SPIFFE id.
#[derive(Debug, Default)]
pub struct Watches(Arc<Mutex<HashMap<String, usize>>>);

/// One open Watch of an identity; dropping it (the stream ended) frees the slot.
pub struct WatchSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    id: String,
}

impl Watches {
    /// A slot for one more Watch of `id`, unless it already holds `limit`.
    fn open(&self, id: &str, limit: usize) -> Option<WatchSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(id.to_string()).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(WatchSlot {
            open: self.0.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        // A count only goes wrong if a panic interrupted this very update; keep going.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.id);
            }
        }
    }
}

#[derive(Clone)]
pub struct DiscoveryApi {
    pub(super) inputs: Arc<Inputs>,
}

impl DiscoveryApi {
    pub fn new(inputs: Arc<Inputs>) -> Self {
        Self { inputs }
    }

    /// Who calls, refused when a revocation covers its certificate (`method` labels the
    /// refusal).
    pub(super) fn caller<T>(
        &self,
        req: &Request<T>,
        method: &'static str,
    ) -> Result<Caller, Status> {
        let caller = peer::caller(req, self.inputs.ca.trust_domain())?;
        revocations::check_caller(&self.inputs, &caller, peer::not_before(req)?, method)?;
        Ok(caller)
    }

    /// Run a handler and count its outcome by method and code.
    async fn call<T>(
        &self,
        method: &'static str,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        super::answer(&self.inputs, method, f).await
    }

    async fn join(&self, req: v1::JoinRequest) -> Result<v1::JoinResponse, Status> {
        // Refuse a malformed CSR before the token is used up.
        check_csr(&req.csr_der)?;
        let grant = self
            .inputs
            .store
            .redeem_join_token(&hash_secret(&req.join_token), now_ms())
            .await
            .map_err(redeem_status)?;
        let spiffe_id = quiver_api::SpiffeId::workload(
            self.inputs.ca.trust_domain(),
            &grant.namespace,
            &grant.service_account,
        )
        .map_err(|e| Status::internal(format!("the join token's identity: {e}")))?;
        revocations::check_join(&self.inputs, &grant, spiffe_id.as_str()).await?;
        let signed = self
            .sign(&req.csr_der, &grant.namespace, &grant.service_account, None)
            .await?;
        tracing::info!(spiffe.id = %signed.id, token.id = %grant.id, "proxy joined");
        Ok(v1::JoinResponse {
            spiffe_id: signed.id.to_string(),
            cert_chain_pem: signed.chain_pem,
            trust_bundle_pem: signed.state.bundle_pem().into(),
            expires_at: rfc3339(unix_ms(signed.not_after)),
        })
    }

    async fn renew(&self, req: Request<v1::RenewRequest>) -> Result<v1::RenewResponse, Status> {
        let caller = self.caller(&req, "Renew")?;
        // Renewable only while entitled: not revoked (checked in the store, not the view) and
        // a Service still runs as the identity.
        revocations::check_renewal(&self.inputs, &caller, peer::not_before(&req)?).await?;
        // The certificate this proxy renews away from: it no longer holds its root.
        let replaces = req
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| crate::ca::fingerprint(c)));
        let req = req.into_inner();
        check_csr(&req.csr_der)?;
        // The identity is the certificate's, never anything the CSR says.
        let signed = self
            .sign(
                &req.csr_der,
                &caller.namespace,
                &caller.service_account,
                replaces.as_deref(),
            )
            .await?;
        tracing::info!(spiffe.id = %signed.id, "SVID renewed");
        Ok(v1::RenewResponse {
            spiffe_id: signed.id.to_string(),
            cert_chain_pem: signed.chain_pem,
            trust_bundle_pem: signed.state.bundle_pem().into(),
            expires_at: rfc3339(unix_ms(signed.not_after)),
        })
    }

    /// Sign and record the SVID (`svids`: who holds which root, for `quiverctl ca retire`).
    async fn sign(
        &self,
        csr_der: &[u8],
        namespace: &str,
        service_account: &str,
        replaces: Option<&str>,
    ) -> Result<crate::ca::Signed, Status> {
        let ttl = svid_ttl(&self.inputs).await;
        let id = quiver_api::SpiffeId::workload(
            self.inputs.ca.trust_domain(),
            namespace,
            service_account,
        )
        .map_err(|e| Status::invalid_argument(format!("serviceAccount: {e}")))?;
        let floor = revocations::not_before_floor(&self.inputs, id.as_str()).await?;
        let signed = self
            .inputs
            .ca
            .sign(csr_der, namespace, service_account, ttl, floor)
            .map_err(|e| Status::invalid_argument(format!("csrDer: {e}")))?;
        if !self.inputs.ca.is_operator() {
            let leaf = quiver_api::certs::certs_from_pem(&signed.chain_pem)
                .ok()
                .and_then(|c| c.first().map(|c| crate::ca::fingerprint(c)))
                .ok_or_else(|| Status::internal("the signed chain has no certificate"))?;
            let record = crate::store::SvidRecord {
                fingerprint: leaf,
                spiffe_id: signed.id.to_string(),
                root: signed.state.fingerprint_of_root(),
                not_after: unix_ms(signed.not_after),
            };
            self.inputs
                .store
                .record_svid(&record, replaces)
                .await
                .map_err(super::store_status)?;
        }
        Ok(signed)
    }

    async fn watch(&self, req: Request<v1::ProxyWatchRequest>) -> Result<SnapshotStream, Status> {
        let caller = self.caller(&req, "Watch")?;
        let cert_not_before = peer::not_before(&req)?;
        let fronts = req.into_inner().services;
        let mut errors = Vec::new();
        for (i, s) in fronts.iter().enumerate() {
            if !is_dns_label(s) {
                errors.push(format!("services[{i}]: {s:?} is not a DNS label"));
            }
        }
        if !errors.is_empty() {
            return Err(Status::invalid_argument(errors.join("; ")));
        }
        let limit = self.inputs.limits.watches_per_identity;
        let Some(slot) = self.inputs.watches.open(&caller.spiffe_id, limit) else {
            self.inputs.metrics.watch_refused();
            return Err(Status::resource_exhausted(format!(
                "{} already has {limit} Watch streams open on this control plane, the limit \
                 (--max-watches-per-identity)",
                caller.spiffe_id
            )));
        };
        // Read-your-writes: the first snapshot reflects everything committed before this
        // call (the feed delivers local writes at once, other replicas' within its poll).
        let committed = self
            .inputs
            .store
            .current_version()
            .await
            .map_err(super::store_status)?;
        if tokio::time::timeout(CATCH_UP, self.inputs.view.caught_up(committed))
            .await
            .is_err()
        {
            tracing::warn!(
                version = committed,
                "the mesh view is behind the store; sending the state it has"
            );
        }
        let mut states = self.inputs.view.subscribe();
        let mut revoked = self.inputs.revocations.subscribe();
        {
            let state = states.borrow();
            if let Some(ns) = state.namespaces.get(&caller.namespace) {
                for (i, name) in fronts.iter().enumerate() {
                    if let Some(svc) = ns.services.get(name) {
                        let sa = service_account(svc);
                        if sa != caller.service_account {
                            return Err(Status::permission_denied(format!(
                                "services[{i}]: {}/{name} runs as service account {sa:?}; the \
                                 caller is {}",
                                caller.namespace, caller.spiffe_id
                            )));
                        }
                    }
                }
            }
        }
        // One in flight: a slow proxy skips intermediate states instead of queueing them.
        let (tx, rx) = mpsc::channel(1);
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _guard = inputs.metrics.watcher();
            let mut ca = inputs.ca.subscribe();
            let mut last: Option<v1::ProxySnapshot> = None;
            loop {
                let state = states.borrow_and_update().clone();
                let deny = revoked.borrow_and_update().clone();
                let bundle = ca.borrow_and_update().bundle_pem().to_string();
                // A proxy revoked while it watches is told so, and hears nothing more.
                if let Some(r) = deny.covering(&caller.spiffe_id, cert_not_before) {
                    inputs.metrics.revoked_refusal("Watch");
                    let _ = tx
                        .send(Err(revocations::revoked_status(&caller.spiffe_id, r)))
                        .await;
                    return;
                }
                let mut snap = snapshot::build(&state, &caller, &fronts, &bundle);
                snap.revocations.clone_from(&deny.pushed);
                if last
                    .as_ref()
                    .is_none_or(|l| !snapshot::same_content(l, &snap))
                {
                    // The version only grows on a stream, also when only the deny-list
                    // (which moves no store version) changed.
                    if let Some(l) = &last {
                        snap.version = snap.version.max(l.version + 1);
                    }
                    // Remembered before it leaves: the proxy's report of it may come back
                    // before this task runs again.
                    inputs
                        .pushed
                        .record(&caller.spiffe_id, &fronts, &snap, now_ms());
                    if tx.send(Ok(snap.clone())).await.is_err() {
                        return;
                    }
                    // The store's copy (for other replicas' status view) is written off the
                    // stream's path: a slow store delays the status view, never a push.
                    let (status_inputs, status_caller, status_fronts, pushed_snap) =
                        (inputs.clone(), caller.clone(), fronts.clone(), snap.clone());
                    tokio::spawn(async move {
                        super::proxies::pushed(
                            &status_inputs,
                            &status_caller,
                            &status_fronts,
                            &pushed_snap,
                        )
                        .await;
                    });
                    last = Some(snap);
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = states.changed() => if changed.is_err() {
                        let _ = tx.send(Err(Status::unavailable("server is shutting down"))).await;
                        return;
                    },
                    changed = revoked.changed() => if changed.is_err() {
                        let _ = tx.send(Err(Status::unavailable("server is shutting down"))).await;
                        return;
                    },
                    // A root rotation or retirement: the new bundle goes out at once.
                    changed = ca.changed() => if changed.is_err() {
                        let _ = tx.send(Err(Status::unavailable("server is shutting down"))).await;
                        return;
                    },
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

fn check_csr(csr_der: &[u8]) -> Result<(), Status> {
    rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(format!("csrDer: not a valid CSR: {e}")))
}

#[tonic::async_trait]
impl v1::mesh_discovery_server::MeshDiscovery for DiscoveryApi {
    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        self.call("Join", DiscoveryApi::join(self, req.into_inner()))
            .await
    }

    async fn get_trust_bundle(
        &self,
        _req: Request<v1::GetTrustBundleRequest>,
    ) -> Result<Response<v1::TrustBundle>, Status> {
        Ok(Response::new(trust_bundle(&self.inputs.ca)))
    }

    async fn renew(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        self.call("Renew", DiscoveryApi::renew(self, req)).await
    }

    async fn register(
        &self,
        req: Request<v1::WorkloadRegistration>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        self.call("Register", async {
            let caller = self.caller(&req, "Register")?;
            let cert_not_before = peer::not_before(&req)?;
            let source = req.remote_addr();
            workloads::register(
                &self.inputs,
                &caller,
                cert_not_before,
                source,
                req.into_inner(),
            )
            .await
        })
        .await
    }

    async fn keep_alive(
        &self,
        req: Request<v1::KeepAliveRequest>,
    ) -> Result<Response<v1::KeepAliveResponse>, Status> {
        self.call("KeepAlive", async {
            let caller = self.caller(&req, "KeepAlive")?;
            let req = req.into_inner();
            let report = req.report.clone();
            let name = req.name.clone();
            let answer = workloads::keep_alive(&self.inputs, &caller, req).await?;
            // The lease is renewed whatever happens to the report: a status view that lags
            // must not cost the proxy its endpoint.
            if let Some(report) = report
                && let Err(e) = super::proxies::report(&self.inputs, &caller, &name, &report).await
            {
                tracing::warn!(error = %e.message(), workload = %name, "recording a proxy's status report failed");
            }
            Ok(answer)
        })
        .await
    }

    async fn deregister(
        &self,
        req: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        self.call("Deregister", async {
            let caller = self.caller(&req, "Deregister")?;
            workloads::deregister(&self.inputs, &caller, req.into_inner()).await
        })
        .await
    }

    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        req: Request<v1::ProxyWatchRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.call("Watch", DiscoveryApi::watch(self, req)).await
    }

    async fn report_telemetry(
        &self,
        req: Request<tonic::Streaming<v1::TelemetryBatch>>,
    ) -> Result<Response<v1::ReportTelemetryResponse>, Status> {
        self.call("ReportTelemetry", DiscoveryApi::report_telemetry(self, req))
            .await
    }
}

fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
