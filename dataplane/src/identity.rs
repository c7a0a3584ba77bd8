//! The proxy's own identity over time: what it currently presents, and (in static mode) a
//! watcher that reloads the identity files when an external tool rotates them — the same
//! swap the control plane's renewals will drive. A bad new file never replaces a good
//! identity: the proxy keeps serving with the old one and counts the failure.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use quiver_api::tls::MeshIdentity;
use serde::Serialize;

use crate::Inputs;
use crate::config::IdentityPaths;

/// What `/config` shows about the identity in use.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityStatus {
    pub spiffe_id: String,
    pub cert_not_after_unix: Option<u64>,
    /// The certificate chain presented (leaf, then intermediates), each as subject and
    /// serial: which intermediate (and so which root) the SVID in use comes from.
    pub cert_chain: Vec<String>,
    /// The roots trusted now, each as subject and serial: an operator (or a test) sees a
    /// rotation arrive and a refused bundle not arrive.
    pub trust_bundle: Vec<String>,
    /// Where it comes from: "files" (static mode) or "control-plane" (joined, renewed).
    pub source: &'static str,
    /// Static mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<IdentityPaths>,
    pub private_key: &'static str,
    /// How many times a new identity has been loaded (or renewed) since start.
    pub reloads: u64,
}

impl IdentityStatus {
    pub fn of(identity: &MeshIdentity, files: Option<&IdentityPaths>, reloads: u64) -> Self {
        Self {
            spiffe_id: identity.spiffe_id.to_string(),
            cert_not_after_unix: not_after_unix(identity),
            cert_chain: identity
                .chain
                .iter()
                .map(|c| quiver_api::certs::describe(c))
                .collect(),
            trust_bundle: trust_bundle(identity),
            source: if files.is_some() {
                "files"
            } else {
                "control-plane"
            },
            files: files.cloned(),
            private_key: "<redacted>",
            reloads,
        }
    }
}

/// The trust bundle's roots, each described by subject and serial.
pub fn trust_bundle(identity: &MeshIdentity) -> Vec<String> {
    identity
        .bundle
        .iter()
        .map(|c| quiver_api::certs::describe(c))
        .collect()
}

pub fn not_after_unix(identity: &MeshIdentity) -> Option<u64> {
    quiver_api::certs::not_after(&identity.chain[0])
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// The bytes of the three identity files, to notice any change (mtimes can lie).
fn read_all(files: &IdentityPaths) -> std::io::Result<Vec<u8>> {
    let mut out = std::fs::read(&files.cert)?;
    out.extend(std::fs::read(&files.key)?);
    out.extend(std::fs::read(&files.trust_bundle)?);
    Ok(out)
}

/// Poll the identity files every `interval`; when their contents change and form a valid
/// identity, switch new connections to it. Runs until the task is aborted.
pub async fn watch_files(inputs: Arc<Inputs>, files: IdentityPaths, interval: Duration) {
    let mut last = read_all(&files).ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // Mid-rotation (a file briefly missing) is normal; try again next tick.
        let Ok(now) = read_all(&files) else { continue };
        if last.as_ref() == Some(&now) {
            continue;
        }
        match MeshIdentity::from_files(&files.cert, &files.key, &files.trust_bundle)
            .map_err(|e| e.to_string())
            .and_then(|id| {
                inputs
                    .transport
                    .set_identity(&id)
                    .map(|()| id)
                    .map_err(|e| e.to_string())
            }) {
            Ok(id) => {
                last = Some(now);
                inputs.identity_reloaded(&id, Some(&files));
                tracing::info!(
                    spiffe_id = %id.spiffe_id,
                    not_after = ?not_after_unix(&id),
                    "identity reloaded; new connections use it"
                );
            }
            Err(e) => {
                // Half-written files look like this too; the next tick retries.
                inputs.metrics.identity_reload(false);
                tracing::warn!(error = %e, "identity files changed but do not load; keeping the current identity");
            }
        }
    }
}
