//! `quiverctl trust-bundle`: the mesh CA certificates a proxy needs for `--ca-cert` (it
//! verifies the discovery listener with them before it has an identity of its own).

use std::path::Path;

use anyhow::{Context, bail};
use quiver_api::v1;

use super::Connection;
use super::client::{self, describe};

/// Fetch the trust bundle (any token role) and print it, or write it to `out`.
pub async fn trust_bundle(conn: &Connection, out: Option<&Path>) -> anyhow::Result<()> {
    let mut c = client::connect(conn).await?;
    let bundle = c
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?
        .into_inner();
    let certificates = bundle.pem.matches("-----BEGIN CERTIFICATE-----").count();
    if certificates == 0 {
        // A proxy given this file would refuse every server; say so here instead.
        bail!("the control plane returned a trust bundle without certificates");
    }
    match out {
        None => print!("{}", bundle.pem),
        Some(path) => {
            // Public certificates: no special mode, unlike the keys `certs` writes.
            std::fs::write(path, &bundle.pem)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} ({certificates} certificate(s), trust domain {})",
                path.display(),
                bundle.trust_domain
            );
        }
    }
    Ok(())
}
