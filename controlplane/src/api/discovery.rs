//! `quiver.v1.MeshDiscovery`, the proxies' API. So far: proxies join with a one-time join
//! token and a CSR. The join token is the credential here (not a bearer API token); it is
//! checked and used up atomically in the store.

use std::sync::Arc;

use quiver_api::v1;
use tonic::{Request, Response, Status};

use super::{Inputs, redeem_status, rfc3339, svid_ttl, trust_bundle};
use crate::auth::hash_secret;
use crate::store::now_ms;

#[derive(Clone)]
pub struct DiscoveryApi {
    inputs: Arc<Inputs>,
}

impl DiscoveryApi {
    pub fn new(inputs: Arc<Inputs>) -> Self {
        Self { inputs }
    }
}

#[tonic::async_trait]
impl v1::mesh_discovery_server::MeshDiscovery for DiscoveryApi {
    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let req = req.into_inner();
        // Refuse a malformed CSR before the token is used up.
        rcgen::CertificateSigningRequestParams::from_der(&req.csr_der.clone().into())
            .map_err(|e| Status::invalid_argument(format!("csrDer: not a valid CSR: {e}")))?;
        let grant = self
            .inputs
            .store
            .redeem_join_token(&hash_secret(&req.join_token), now_ms())
            .await
            .map_err(redeem_status)?;
        let ttl = svid_ttl(&self.inputs).await;
        let (id, chain, not_after) = self
            .inputs
            .ca
            .sign(&req.csr_der, &grant.namespace, &grant.service_account, ttl)
            .map_err(|e| Status::invalid_argument(format!("csrDer: {e}")))?;
        tracing::info!(spiffe.id = %id, token.id = %grant.id, "proxy joined");
        let expires_ms = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        Ok(Response::new(v1::JoinResponse {
            spiffe_id: id.to_string(),
            cert_chain_pem: chain,
            trust_bundle_pem: self.inputs.ca.bundle_pem().into(),
            expires_at: rfc3339(expires_ms),
        }))
    }

    async fn get_trust_bundle(
        &self,
        _req: Request<v1::GetTrustBundleRequest>,
    ) -> Result<Response<v1::TrustBundle>, Status> {
        Ok(Response::new(trust_bundle(&self.inputs.ca)))
    }
}
