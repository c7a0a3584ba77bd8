//! Minting and reading mesh certificates.
//!
//! A [`CertificateAuthority`] issues SVIDs: leaf certificates whose only subject alternative
//! name is one SPIFFE URI, usable both as TLS server and TLS client (every proxy is both). The
//! SPIFFE id always comes from the caller's entitlement, never from a CSR.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate could not be minted or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    #[error("certificate carries no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("certificate carries {0} URI SANs; an SVID carries exactly one")]
    ManyUris(usize),
    #[error("certificate URI SAN is not a valid SPIFFE id: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    #[error("PEM holds no {0}")]
    EmptyPem(&'static str),
    #[error("PEM is malformed: {0}")]
    Pem(String),
    #[error("CA certificate is not a CA (basicConstraints cA=false or missing)")]
    NotCa,
}

/// A freshly issued leaf and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The leaf first, then any intermediates up to (not including) the root.
    pub chain_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never goes into logs.
        f.debug_struct("IssuedCert")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A signing CA: a self-signed mesh root (which signs intermediates), the control plane's
/// online intermediate ([`CertificateAuthority::issue_intermediate`]), or an operator's
/// intermediate.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    /// Certificates that go after the leaf in an issued chain (the CA itself when it is an
    /// intermediate; nothing when it is the root, which peers already hold in their bundle).
    chain_tail_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own expiry: no leaf outlives it.
    not_after: SystemTime,
}

impl CertificateAuthority {
    /// Generate a new self-signed ECDSA P-256 root for `trust_domain`.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Quiver");
        dn.push(
            DnType::CommonName,
            format!("Quiver mesh root {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_offset(now - Duration::from_secs(60));
        params.not_after = to_offset(now + validity);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Issue a new intermediate CA under this one (a new P-256 key, `pathLenConstraint` 0: it
    /// signs SVIDs only), valid from a minute ago for `validity` but never past this CA. The
    /// result appends its own certificate to every chain it issues; peers trust only the root.
    pub fn issue_intermediate(
        &self,
        trust_domain: &str,
        validity: Duration,
    ) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Quiver");
        dn.push(
            DnType::CommonName,
            format!("Quiver mesh intermediate {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = to_offset(now - Duration::from_secs(60));
        params.not_after = to_offset(self.leaf_expiry(now, validity));
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// When this CA stops being valid.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Load a CA from its certificate and PKCS#8 private key (PEM). When the certificate is not
    /// self-signed it is an intermediate and is appended to every chain it issues.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = first_cert_der(cert_pem)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CertError::Parse(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(CertError::NotCa);
        }
        let self_signed = parsed.subject() == parsed.issuer();
        let ca_not_after = u64::try_from(parsed.validity().not_after.timestamp())
            .ok()
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
            .ok_or_else(|| CertError::Parse("the CA's notAfter is out of range".into()))?;
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            chain_tail_pem: if self_signed {
                String::new()
            } else {
                cert_pem.to_string()
            },
            issuer,
            not_after: ca_not_after,
        })
    }

    /// When a leaf issued now for `ttl` expires: `now + ttl`, never past the CA's own expiry
    /// (and without overflow for any `ttl`).
    fn leaf_expiry(&self, now: SystemTime, ttl: Duration) -> SystemTime {
        now.checked_add(ttl)
            .map_or(self.not_after, |t| t.min(self.not_after))
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM). Callers persist it with mode 0600.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issue an SVID for `id` with a new key, valid from a minute ago for `ttl`.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedCert, CertError> {
        let now = SystemTime::now();
        self.issue_between(
            id,
            now - Duration::from_secs(60),
            self.leaf_expiry(now, ttl),
        )
    }

    /// Issue a server certificate for `id` that also names `hosts` (DNS names, or IP addresses
    /// when they parse as one), so that ordinary TLS clients verifying the host name against
    /// this CA accept it (the control plane's API listener). Valid from a minute ago for `ttl`.
    pub fn issue_for_hosts(
        &self,
        id: &SpiffeId,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<IssuedCert, CertError> {
        let mut names = Vec::with_capacity(hosts.len());
        for host in hosts {
            names.push(match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.as_str().try_into()?),
            });
        }
        let now = SystemTime::now();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let not_after = self.leaf_expiry(now, ttl);
        let chain_pem =
            self.sign_names(&key, id, names, now - Duration::from_secs(60), not_after)?;
        Ok(IssuedCert {
            chain_pem,
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Issue an SVID for `id` with a new key and an explicit validity window (tests use this to
    /// mint expired certificates).
    pub fn issue_between(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let chain_pem = self.sign(&key, id, not_before, not_after)?;
        Ok(IssuedCert {
            chain_pem,
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Sign a CSR's public key into an SVID for `id`. Nothing but the public key is taken from
    /// the CSR: names, extensions and validity come from us. Returns the chain PEM and the
    /// leaf's expiry (`ttl` from now, never past the CA's own).
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<(String, SystemTime), CertError> {
        self.sign_csr_not_before(csr_der, id, ttl, SystemTime::UNIX_EPOCH)
    }

    /// [`Self::sign_csr`] with a floor for notBefore: the leaf is valid from a minute ago (clock
    /// skew) but never from before `floor`. The control plane passes the instant its identity
    /// was last revoked from, so that a certificate issued after a revocation is never covered
    /// by it (`crate::revocation::covers`).
    pub fn sign_csr_not_before(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        ttl: Duration,
        floor: SystemTime,
    ) -> Result<(String, SystemTime), CertError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der.to_vec(),
        ))?;
        let now = SystemTime::now();
        let not_after = self.leaf_expiry(now, ttl);
        let not_before = (now - Duration::from_secs(60)).max(floor);
        let chain = self.sign(&csr.public_key, id, not_before, not_after)?;
        Ok((chain, not_after))
    }

    fn sign(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, CertError> {
        self.sign_names(public_key, id, Vec::new(), not_before, not_after)
    }

    /// [`Self::sign`] with more subject alternative names after the SPIFFE id.
    fn sign_names(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        more_names: Vec<SanType>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        params.subject_alt_names.extend(more_names);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(public_key, &self.issuer)?;
        let mut pem = cert.pem();
        pem.push_str(&self.chain_tail_pem);
        Ok(pem)
    }
}

/// A new PKCS#8 P-256 key and a CSR for it (the proxy side of joining: the key never leaves).
pub fn new_key_and_csr() -> Result<(String, Vec<u8>), CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// The single SPIFFE id in a certificate's URI SANs. Anything else (no URI, several URIs, a
/// URI that is not a SPIFFE id) is refused: an SVID carries exactly one.
pub fn spiffe_id_of(cert_der: &[u8]) -> Result<SpiffeId, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(e.to_string()))?
        .ok_or(CertError::NoSpiffeId)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(CertError::NoSpiffeId),
        [one] => Ok(SpiffeId::parse(one)?),
        many => Err(CertError::ManyUris(many.len())),
    }
}

/// A certificate in a few words, for logs, errors and `/config`: its subject and serial
/// (`CN=Quiver mesh root mesh.local, serial 3f1c...`). Enough to tell roots apart; not a
/// secret and not a fingerprint to pin.
pub fn describe(cert_der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(cert_der) {
        Ok((_, cert)) => format!(
            "{}, serial {}",
            cert.subject(),
            cert.tbs_certificate.raw_serial_as_string().replace(':', "")
        ),
        Err(e) => format!("(unreadable certificate: {e})"),
    }
}

/// When a certificate stops being valid.
pub fn not_after(cert_der: &[u8]) -> Result<SystemTime, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// When a certificate starts being valid, in Unix seconds (what revocations compare).
pub fn not_before_unix(cert_der: &[u8]) -> Result<i64, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(cert.validity().not_before.timestamp())
}

/// Every certificate in a PEM string, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::EmptyPem("CERTIFICATE"));
    }
    Ok(certs)
}

pub(crate) fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, CertError> {
    certs_from_pem(pem)?
        .into_iter()
        .next()
        .ok_or(CertError::EmptyPem("CERTIFICATE"))
}

fn random_serial() -> SerialNumber {
    // 16 random bytes with the top bit cleared keep the DER INTEGER positive (RFC 5280 4.1.2.2).
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}
/// The permission bits of a private-key file when group or others may read or write it
/// (`Ok(None)` when it is the owner's alone). The one rule for the control plane's CA key and
/// a static-mode proxy's key.
pub fn shared_key_mode(path: &std::path::Path) -> std::io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        Ok((mode & 0o077 != 0).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| None)
    }
}
