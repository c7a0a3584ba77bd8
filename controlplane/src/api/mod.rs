//! The gRPC API: `quiver.v1.MeshAdmin` (bearer tokens, roles) and `quiver.v1.MeshDiscovery`
//! (join tokens and CSRs). Handlers authorise, call the store or the CA, and map errors to gRPC
//! status codes; they own no state beyond [`Inputs`].

use std::sync::Arc;
use std::time::Duration;

use quiver_api::resource::{DEFAULT_NAMESPACE, Kind};
use quiver_api::v1;
use tonic::{Request, Response, Status};

use crate::auth::{self, Role};
use crate::ca::MeshCa;
use crate::discovery::MeshView;
use crate::discovery::revocations::RevocationView;
use crate::metrics::Metrics;
use crate::store::{Feed, RedeemError, Store, StoreError, now_ms};
use crate::stored::rfc3339;

mod admin;
mod ca;
mod canaries;
mod discovery;
mod dry_run;
mod peer;
mod proxies;
mod resources;
mod revocations;
mod telemetry;
mod tokens;
mod workloads;

pub use discovery::{DiscoveryApi, SnapshotStream, Watches};
pub use resources::{WatchStream, decode};
pub use workloads::{AddressException, workload_name};

/// Everything the handlers share.
pub struct Inputs {
    pub store: Arc<dyn Store>,
    /// Checks the admin API's bearer tokens (from memory when it can).
    pub tokens: auth::Tokens,
    /// Bounds on what one proxy identity may hold (Watch streams, endpoints).
    pub limits: Limits,
    /// Watch streams open per identity on this replica.
    pub watches: Watches,
    pub feed: Feed,
    pub ca: Arc<MeshCa>,
    pub metrics: Metrics,
    /// SVID lifetime unless MeshConfig `spec.svidTtl` says otherwise.
    pub svid_ttl: Duration,
    /// How long a registered workload stays live without a keep-alive.
    pub lease_ttl: Duration,
    /// The range Services' virtual IPs are assigned from.
    pub service_vips: crate::addresses::AddressRange,
    /// This replica's view of what proxies are sent.
    pub view: MeshView,
    /// This replica's revocations in force (the deny-list proxies are sent).
    pub revocations: RevocationView,
    pub started_at: String,
    /// What this replica's Watch streams pushed (for proxies' status reports).
    pub pushed: crate::discovery::pushed::PushLog,
    /// Stores what proxies report, in group commits (and exports it, with `--otlp-endpoint`).
    pub spans: crate::telemetry::writer::SpanWriter,
}

/// What one proxy identity may hold at once, and the registration exceptions the operator
/// granted.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Watch streams open at once per SPIFFE id on this replica.
    pub watches_per_identity: usize,
    /// Live registered workloads per SPIFFE id.
    pub endpoints_per_identity: usize,
    /// Identities that may register addresses in these networks whatever their source
    /// address (NAT, a gateway advertising another interface).
    pub address_exceptions: Vec<AddressException>,
}

/// `quiver.v1.MeshAdmin`.
#[derive(Clone)]
pub struct AdminApi {
    inputs: Arc<Inputs>,
}

/// Run a handler of either service: count its outcome by method and code, and bound its
/// error message ([`bounded`]).
pub(crate) async fn answer<T>(
    inputs: &Inputs,
    method: &'static str,
    f: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let result = f.await;
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    inputs.metrics.call(method, code);
    result.map(Response::new).map_err(bounded)
}

/// The longest line of an error message, and the most lines, that a caller gets back.
const MAX_MESSAGE_LINE: usize = 256;
const MAX_MESSAGE_LINES: usize = 64;

/// `status` with a message that cannot echo unbounded input: every line (a field error, or
/// the first line naming the object) is cut at [`MAX_MESSAGE_LINE`] bytes and at most
/// [`MAX_MESSAGE_LINES`] lines are kept, so a 100 KB name does not come back in
/// `grpc-message`. The line structure the console and quiverctl read is kept.
fn bounded(status: Status) -> Status {
    let message = status.message();
    let too_long = message.lines().count() > MAX_MESSAGE_LINES
        || message.lines().any(|l| l.len() > MAX_MESSAGE_LINE);
    if !too_long {
        return status;
    }
    let mut out = String::new();
    for (i, line) in message.lines().enumerate() {
        if i == MAX_MESSAGE_LINES {
            out.push_str("\n  ... (more errors left out)");
            break;
        }
        if i > 0 {
            out.push('\n');
        }
        if line.len() > MAX_MESSAGE_LINE {
            let mut cut = MAX_MESSAGE_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&line[..cut]);
            out.push_str(&format!("... ({} bytes)", line.len()));
        } else {
            out.push_str(line);
        }
    }
    Status::new(status.code(), out)
}

impl AdminApi {
    pub fn new(inputs: Arc<Inputs>) -> Self {
        Self { inputs }
    }

    /// Run a handler and count its outcome by method and code.
    async fn call<T>(
        &self,
        method: &'static str,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        answer(&self.inputs, method, f).await
    }

    async fn status(&self, req: Request<v1::StatusRequest>) -> Result<v1::StatusResponse, Status> {
        let store = self.inputs.store.as_ref();
        let role = self
            .inputs
            .tokens
            .authorize(req.metadata(), Role::Viewer, "Status")
            .await?;
        let counts = store.counts().await.map_err(store_status)?;
        Ok(v1::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            store: store.engine().into(),
            trust_domain: self.inputs.ca.trust_domain().into(),
            resource_version: store.current_version().await.map_err(store_status)?,
            counts: resources::counts_by_kind(counts),
            watchers: self.inputs.metrics.watchers(),
            started_at: self.inputs.started_at.clone(),
            role: role.as_str().into(),
        })
    }

    async fn trust_bundle(
        &self,
        req: Request<v1::GetTrustBundleRequest>,
    ) -> Result<v1::TrustBundle, Status> {
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Viewer, "GetTrustBundle")
            .await?;
        Ok(trust_bundle(&self.inputs.ca))
    }
}

impl AdminApi {
    /// Keep only workloads whose lease is live (the sweeper deletes lapsed ones within a
    /// second; this hides them meanwhile) and fill in `status.leaseExpiresAt`.
    async fn with_leases(
        &self,
        items: Vec<v1::Workload>,
        namespace: Option<&str>,
    ) -> Result<Vec<v1::Workload>, Status> {
        let leases = self
            .inputs
            .store
            .leases(namespace)
            .await
            .map_err(store_status)?;
        let now = now_ms();
        let live: std::collections::HashMap<(&str, &str), i64> = leases
            .iter()
            .filter(|l| l.expires_at > now)
            .map(|l| ((l.namespace.as_str(), l.name.as_str()), l.expires_at))
            .collect();
        Ok(items
            .into_iter()
            .filter_map(|mut w| {
                let meta = w.metadata.as_ref()?;
                let expires = *live.get(&(meta.namespace.as_str(), meta.name.as_str()))?;
                w.status
                    .get_or_insert_with(Default::default)
                    .lease_expires_at = rfc3339(expires);
                Some(w)
            })
            .collect())
    }
}

fn trust_bundle(ca: &MeshCa) -> v1::TrustBundle {
    v1::TrustBundle {
        trust_domain: ca.trust_domain().into(),
        pem: ca.bundle_pem(),
    }
}

fn is_dns_label(s: &str) -> bool {
    quiver_api::validate::check_dns_label(s).is_ok()
}

/// Map a store error to the status a client can act on.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict { .. } => Status::aborted(e.to_string()),
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        other => {
            tracing::error!(error = %other, "store call failed");
            Status::unavailable("the store is unavailable; try again")
        }
    }
}

fn redeem_status(e: RedeemError) -> Status {
    match e {
        RedeemError::Unknown => Status::unauthenticated("join token is not known"),
        RedeemError::Expired | RedeemError::UsedUp(_) => Status::permission_denied(e.to_string()),
        RedeemError::Store(e) => store_status(e),
    }
}

/// The SVID lifetime: MeshConfig `spec.svidTtl` when set, else the server default; never
/// more than the API accepts (a MeshConfig stored before the maximum existed is clamped).
async fn svid_ttl(inputs: &Inputs) -> Duration {
    let stored = inputs
        .store
        .get(Kind::MeshConfig, DEFAULT_NAMESPACE, "mesh")
        .await
        .ok()
        .flatten();
    stored
        .and_then(|s| decode::<v1::MeshConfig>(&s).ok())
        .and_then(|m| m.spec)
        .and_then(|s| quiver_api::duration::parse(&s.svid_ttl).ok())
        .unwrap_or(inputs.svid_ttl)
        .min(quiver_policy::mesh::MAX_SVID_TTL)
}
