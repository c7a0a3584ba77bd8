//! `quiver-control ca export-root`: the generated root's certificate and key written to files
//! for the operator to keep offline, and its key optionally removed from the store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{CaError, KeyEncryptionKey, unix_ms};
use crate::store::{CaRole, Store};

/// The root certificate file [`export_root`] writes (PEM).
pub const ROOT_CERT_FILE: &str = "mesh-root.pem";
/// The root private key file [`export_root`] writes (PKCS#8 PEM, mode 0600).
pub const ROOT_KEY_FILE: &str = "mesh-root.key";

/// What [`export_root`] wrote.
#[derive(Debug)]
pub struct ExportedRoot {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Whether the sealed key was deleted from the store.
    pub removed: bool,
    /// When the stored intermediate expires (what the operator must renew before).
    pub intermediate_not_after: Option<SystemTime>,
}

/// Write the stored root's certificate and private key into `out` ([`ROOT_CERT_FILE`], and
/// [`ROOT_KEY_FILE`] mode 0600), never over an existing file; with `remove_key`, then delete
/// the sealed key from the store (the certificate stays the trust anchor). Refused when the
/// key is offline already.
pub async fn export_root(
    store: &dyn Store,
    kek: &KeyEncryptionKey,
    out: &Path,
    remove_key: bool,
) -> Result<ExportedRoot, CaError> {
    let root = store.ca_key(CaRole::Root).await?.ok_or(CaError::Missing)?;
    let intermediate_not_after = match store.ca_key(CaRole::Intermediate).await? {
        Some(i) => quiver_api::certs::certs_from_pem(&i.cert_pem)?
            .first()
            .map(|der| quiver_api::certs::not_after(der))
            .transpose()?,
        None => None,
    };
    if root.key_offline() {
        return Err(CaError::RootOffline {
            intermediate_not_after: intermediate_not_after
                .map(|t| crate::stored::rfc3339(unix_ms(t)))
                .unwrap_or_else(|| "none stored".into()),
        });
    }
    let key_pem = kek.open(CaRole::Root, &root.key_sealed)?;
    let (cert, key) = (out.join(ROOT_CERT_FILE), out.join(ROOT_KEY_FILE));
    // Both refused before either is written.
    for path in [&cert, &key] {
        if path.exists() {
            return Err(CaError::Exists {
                path: path.display().to_string(),
            });
        }
    }
    std::fs::create_dir_all(out).map_err(|source| CaError::Write {
        path: out.display().to_string(),
        source,
    })?;
    write_new(&key, &key_pem, 0o600)?;
    write_new(&cert, &root.cert_pem, 0o644)?;
    let removed = remove_key && store.remove_ca_key(CaRole::Root).await?;
    if removed {
        tracing::info!(out = %out.display(), "exported the mesh root and removed its key from the store");
    }
    Ok(ExportedRoot {
        cert,
        key,
        removed,
        intermediate_not_after,
    })
}

/// Create `path` (failing if it exists) with `mode` from the start, and write `text`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    let failed = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AlreadyExists => CaError::Exists {
            path: path.display().to_string(),
        },
        _ => CaError::Write {
            path: path.display().to_string(),
            source,
        },
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)
}
