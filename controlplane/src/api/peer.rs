//! Who is calling `MeshDiscovery`: the SPIFFE id of the client certificate presented on the
//! discovery listener. The TLS layer has already checked that the chain leads to the mesh CA
//! and is within its validity; here the leaf must be an SVID of our trust domain with
//! Quiver's workload shape (`/ns/<namespace>/sa/<service-account>`), and its notBefore is what
//! revocations are compared with.

use tonic::{Request, Status};

use crate::discovery::Caller;

/// The caller's identity, or UNAUTHENTICATED / PERMISSION_DENIED saying why not.
pub fn caller<T>(req: &Request<T>, trust_domain: &str) -> Result<Caller, Status> {
    let certs = req.peer_certs().filter(|c| !c.is_empty()).ok_or_else(|| {
        Status::unauthenticated(
            "a client certificate (this proxy's SVID) is required: call over mTLS on the \
             discovery listener",
        )
    })?;
    let id = quiver_api::tls::peer_spiffe_id(&certs)
        .map_err(|e| Status::unauthenticated(format!("client certificate is not an SVID: {e}")))?;
    if id.trust_domain() != trust_domain {
        return Err(Status::permission_denied(format!(
            "{id} is not in trust domain {trust_domain}"
        )));
    }
    let (namespace, service_account) = id.workload_parts().ok_or_else(|| {
        Status::permission_denied(format!(
            "{id} is not a workload identity (spiffe://<td>/ns/<namespace>/sa/<account>)"
        ))
    })?;
    Ok(Caller {
        namespace: namespace.into(),
        service_account: service_account.into(),
        spiffe_id: id.to_string(),
    })
}

/// The notBefore (Unix seconds) of the caller's client certificate: what revocations are
/// compared with.
pub fn not_before<T>(req: &Request<T>) -> Result<i64, Status> {
    let certs = req.peer_certs().filter(|c| !c.is_empty()).ok_or_else(|| {
        Status::unauthenticated("a client certificate (this proxy's SVID) is required")
    })?;
    quiver_api::certs::not_before_unix(&certs[0])
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
}
