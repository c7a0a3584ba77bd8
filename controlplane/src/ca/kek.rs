//! The key-encryption key: the AES-256-GCM key that seals the CA's private keys in the store,
//! from the operator's file or (SQLite only) generated into the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead;

use super::{CaError, read_private};
use crate::store::CaRole;

/// The key-encryption key generated for a SQLite store without `--ca-key-encryption-key`.
pub const GENERATED_KEK_FILE: &str = "ca-key-encryption.key";

/// The key that seals the CA's private keys in the store (AES-256-GCM). Each sealed key is
/// bound to its role, so a root's ciphertext cannot be passed off as an intermediate's.
pub struct KeyEncryptionKey {
    key: aead::LessSafeKey,
    /// Where it came from, for `/config`-style reports and errors.
    pub source: PathBuf,
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncryptionKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl KeyEncryptionKey {
    /// The operator's key file when given; otherwise, for SQLite only, `data_dir/`
    /// [`GENERATED_KEK_FILE`], created (mode 0600) on first start. A Postgres store is shared
    /// by replicas, which must all hold the same key: there the flag is required.
    pub fn load(
        given: Option<&Path>,
        data_dir: &Path,
        shared_store: bool,
    ) -> Result<Self, CaError> {
        let path = match given {
            Some(p) => p.to_path_buf(),
            None if shared_store => return Err(CaError::KekRequired),
            None => {
                let p = data_dir.join(GENERATED_KEK_FILE);
                if !p.exists() {
                    generate_kek_file(&p)?;
                    tracing::info!(path = %p.display(), "generated the CA key-encryption key (keep it with the database's backups, apart from them)");
                }
                p
            }
        };
        let bad = |reason: String| CaError::BadKek {
            path: path.display().to_string(),
            reason,
        };
        let text = read_private(&path)?;
        let bytes = from_hex(text.trim()).ok_or_else(|| bad("not hex".into()))?;
        if bytes.len() != 32 {
            return Err(bad(format!("{} bytes; it must be 32", bytes.len())));
        }
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, &bytes)
            .map_err(|_| bad("not an AES-256 key".into()))?;
        Ok(Self {
            key: aead::LessSafeKey::new(key),
            source: path,
        })
    }

    /// `v1:<nonce hex>:<ciphertext and tag hex>`.
    pub(super) fn seal(&self, role: CaRole, key_pem: &str) -> String {
        let nonce: [u8; aead::NONCE_LEN] = rand::random();
        let mut data = key_pem.as_bytes().to_vec();
        // Sealing in memory with a fresh nonce cannot fail (ring errors only on lengths
        // beyond 2^36 bytes); a failure would leave `data` empty and fail to open later.
        let _ = self.key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(role.as_str().as_bytes()),
            &mut data,
        );
        format!("v1:{}:{}", to_hex(&nonce), to_hex(&data))
    }

    pub(super) fn open(&self, role: CaRole, sealed: &str) -> Result<String, CaError> {
        let unseal = || CaError::Unseal {
            role: role.as_str(),
        };
        let mut parts = sealed.split(':');
        let (Some("v1"), Some(nonce), Some(data), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unseal());
        };
        let nonce: [u8; aead::NONCE_LEN] = from_hex(nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(unseal)?;
        let mut data = from_hex(data).ok_or_else(unseal)?;
        let plain = self
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(role.as_str().as_bytes()),
                &mut data,
            )
            .map_err(|_| unseal())?;
        String::from_utf8(plain.to_vec()).map_err(|_| unseal())
    }
}

fn generate_kek_file(path: &Path) -> Result<(), CaError> {
    let failed = |source: std::io::Error| CaError::Read {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let key: [u8; 32] = rand::random();
    let mut file = options.open(path).map_err(failed)?;
    writeln!(file, "{}", to_hex(&key)).map_err(failed)
}

pub(super) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
