//! Certificates minted at run time for tests and the benchmark.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use quiver_api::SpiffeId;
use quiver_api::certs::{CertificateAuthority, IssuedCert};

/// Paths of one proxy's identity files.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// A mesh CA writing identities into a directory.
pub struct Pki {
    pub ca: CertificateAuthority,
    pub dir: PathBuf,
    pub trust_domain: String,
}

impl Pki {
    /// A fresh CA for `mesh.local` writing under a new temp dir.
    pub fn new() -> Self {
        Self::with_trust_domain("mesh.local")
    }

    pub fn with_trust_domain(td: &str) -> Self {
        let dir = temp_dir("pki");
        let ca = CertificateAuthority::generate(td, Duration::from_secs(86400)).expect("CA");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write ca");
        Self {
            ca,
            dir,
            trust_domain: td.to_string(),
        }
    }

    pub fn id(&self, sa: &str) -> SpiffeId {
        SpiffeId::workload(&self.trust_domain, "default", sa).expect("valid id")
    }

    /// A valid 1 h SVID for `spiffe://<td>/ns/default/sa/<sa>`.
    pub fn issue(&self, sa: &str) -> IdentityFiles {
        let leaf = self
            .ca
            .issue(&self.id(sa), Duration::from_secs(3600))
            .expect("issue");
        self.write(sa, &leaf, self.ca.cert_pem())
    }

    /// A valid 1 h SVID for `spiffe://<td>/ns/<namespace>/sa/<sa>` (files under
    /// `<namespace>.<sa>`).
    pub fn issue_in(&self, namespace: &str, sa: &str) -> IdentityFiles {
        let id = SpiffeId::workload(&self.trust_domain, namespace, sa).expect("valid id");
        let leaf = self
            .ca
            .issue(&id, Duration::from_secs(3600))
            .expect("issue");
        self.write(&format!("{namespace}.{sa}"), &leaf, self.ca.cert_pem())
    }

    /// An SVID that expired an hour ago.
    pub fn issue_expired(&self, sa: &str) -> IdentityFiles {
        let now = SystemTime::now();
        let leaf = self
            .ca
            .issue_between(
                &self.id(sa),
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
            .expect("issue");
        self.write(&format!("{sa}-expired"), &leaf, self.ca.cert_pem())
    }

    /// Files for `name` holding `leaf`, trusting `bundle_pem`.
    pub fn write(&self, name: &str, leaf: &IssuedCert, bundle_pem: &str) -> IdentityFiles {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let files = IdentityFiles {
            cert: d.join("cert.pem"),
            key: d.join("key.pem"),
            bundle: d.join("bundle.pem"),
        };
        std::fs::write(&files.cert, &leaf.chain_pem).expect("write");
        write_private(&files.key, &leaf.key_pem);
        std::fs::write(&files.bundle, bundle_pem).expect("write");
        files
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A new, unique temp directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "quiver-{tag}-{}-{:016x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&d).expect("mkdir temp");
    d
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Render a path for YAML.
pub fn yaml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Write a private key readable by its owner only (mode 0600), as a proxy requires.
pub fn write_private(path: &Path, pem: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A server verifier that trusts any certificate: only for playing hostile peers in tests
/// (a client with no certificate, a flood of half-open handshakes). The proxy's own, which
/// its HTTPS app probes use.
pub use quiver_proxy::app_health::UnverifiedServer as AnyServer;

/// A TLS client config (ring, safe defaults, no client certificate) that trusts the CA
/// certificates in `ca_pem`: for tests that call an HTTPS endpoint of ours as its clients do.
pub fn client_trusting(ca_pem: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::str::from_utf8(ca_pem).expect("CA PEM is text");
    for cert in quiver_api::certs::certs_from_pem(pem).expect("CA PEM parses") {
        roots.add(cert).expect("CA certificate accepted as a root");
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}
