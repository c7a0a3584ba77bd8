//! The deny-list of revoked identities, and the one check every side runs against it.
//!
//! A revocation names a SPIFFE id and an instant: every certificate of that id whose notBefore
//! is earlier is denied ([`covers`]). The control plane issues every later certificate of the
//! id with notBefore at or after the instant, so a proxy that joins again with a fresh token is
//! not caught by it. Both rustls verifiers ([`crate::tls`]) call [`DenyList::check`] on the
//! peer's leaf (the server on the client's, the client on the server's); the proxy calls it
//! again after a handshake, which also covers resumed sessions (no verifier runs on those), and
//! on every live connection when a new list arrives. This module decides nothing else: who
//! may revoke, how long entries are kept and how they travel belong to the control plane.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::certs::{self, CertError};
use crate::spiffe::SpiffeId;
use crate::v1;

/// Whether a revocation from `revoked_not_before` (Unix seconds) covers a certificate whose
/// notBefore is `cert_not_before` (Unix seconds): it does when the certificate is older.
pub fn covers(revoked_not_before: i64, cert_not_before: i64) -> bool {
    cert_not_before < revoked_not_before
}

/// Why a certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "the certificate of {spiffe_id} (notBefore {cert_not_before}) is revoked: its identity's \
         certificates issued before {revoked_not_before} (Unix seconds) are denied"
    )]
    Revoked {
        spiffe_id: String,
        cert_not_before: i64,
        revoked_not_before: i64,
    },
    #[error("the peer certificate cannot be read for the revocation check: {0}")]
    Unreadable(String),
}

/// Which field of a revocation entry is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryField {
    SpiffeId,
    NotBefore,
}

/// A refused revocation entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    /// Its position in the list.
    pub index: usize,
    pub field: EntryField,
    pub reason: String,
}

/// Revoked identities: SPIFFE id -> the notBefore (Unix seconds) below which its certificates
/// are denied. Cheap to clone: clones share the list, so the verifiers built into TLS configs
/// see a replaced list at once.
#[derive(Debug, Clone, Default)]
pub struct DenyList {
    entries: Arc<RwLock<Arc<BTreeMap<String, i64>>>>,
}

impl DenyList {
    /// Validate revocations (SPIFFE id, notBefore in Unix seconds), from a push or a static
    /// file: every entry names a SPIFFE id of `trust_domain` and a positive instant. Each
    /// error says which entry and which of its two fields; the caller names them in its own
    /// spelling.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (&'a str, i64)>,
        trust_domain: &str,
    ) -> Result<BTreeMap<String, i64>, Vec<EntryError>> {
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for (index, (spiffe_id, not_before)) in entries.into_iter().enumerate() {
            let mut fail = |field, reason| {
                errors.push(EntryError {
                    index,
                    field,
                    reason,
                });
            };
            match SpiffeId::parse(spiffe_id) {
                Ok(id) if id.trust_domain() == trust_domain => {}
                Ok(id) => fail(
                    EntryField::SpiffeId,
                    format!("{id} is not in trust domain {trust_domain}"),
                ),
                Err(e) => fail(EntryField::SpiffeId, format!("{spiffe_id:?}: {e}")),
            }
            if not_before <= 0 {
                fail(
                    EntryField::NotBefore,
                    format!("{not_before} is not a positive Unix time"),
                );
            }
            // Two entries for one id: the later instant covers the earlier one.
            let slot = out.entry(spiffe_id.to_string()).or_insert(not_before);
            *slot = (*slot).max(not_before);
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// [`Self::parse`] for a pushed `quiver.v1.ProxySnapshot.revocations`, with its field
    /// paths (`revocations[i].spiffeId`).
    pub fn parse_pushed(
        revocations: &[v1::Revocation],
        trust_domain: &str,
    ) -> Result<BTreeMap<String, i64>, Vec<(String, String)>> {
        Self::parse(
            revocations
                .iter()
                .map(|r| (r.spiffe_id.as_str(), r.not_before_unix)),
            trust_domain,
        )
        .map_err(|errors| {
            errors
                .into_iter()
                .map(|e| {
                    let field = match e.field {
                        EntryField::SpiffeId => "spiffeId",
                        EntryField::NotBefore => "notBeforeUnix",
                    };
                    (format!("revocations[{}].{field}", e.index), e.reason)
                })
                .collect()
        })
    }

    /// Replace the list; true when it changed.
    pub fn replace(&self, entries: BTreeMap<String, i64>) -> bool {
        let mut current = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if **current == entries {
            return false;
        }
        *current = Arc::new(entries);
        true
    }

    /// How many identities are revoked.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    fn current(&self) -> Arc<BTreeMap<String, i64>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Refuse `leaf` (DER) when its SPIFFE id is revoked from after its notBefore. The list
    /// is read once, so a check never sees half of a replacement.
    pub fn check(&self, leaf: &[u8]) -> Result<(), Denied> {
        let entries = self.current();
        if entries.is_empty() {
            return Ok(());
        }
        let unreadable = |e: CertError| Denied::Unreadable(e.to_string());
        let id = certs::spiffe_id_of(leaf).map_err(unreadable)?;
        let Some(&revoked_not_before) = entries.get(id.as_str()) else {
            return Ok(());
        };
        let cert_not_before = certs::not_before_unix(leaf).map_err(unreadable)?;
        if covers(revoked_not_before, cert_not_before) {
            return Err(Denied::Revoked {
                spiffe_id: id.to_string(),
                cert_not_before,
                revoked_not_before,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::certs::CertificateAuthority;

    fn unix(t: SystemTime) -> i64 {
        i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()).unwrap()
    }

    #[test]
    fn a_revocation_denies_older_certificates_of_its_identity_only() {
        let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
        let a = SpiffeId::workload("mesh.local", "default", "a").unwrap();
        let b = SpiffeId::workload("mesh.local", "default", "b").unwrap();
        let now = SystemTime::now();
        let old = ca
            .issue_between(
                &a,
                now - Duration::from_secs(100),
                now + Duration::from_secs(600),
            )
            .unwrap();
        let fresh = ca
            .issue_between(&a, now, now + Duration::from_secs(600))
            .unwrap();
        let other = ca
            .issue_between(
                &b,
                now - Duration::from_secs(100),
                now + Duration::from_secs(600),
            )
            .unwrap();
        let der = |pem: &str| certs::certs_from_pem(pem).unwrap().remove(0);
        let list = DenyList::default();
        assert!(list.check(&der(&old.chain_pem)).is_ok(), "empty list");
        let pushed = vec![v1::Revocation {
            spiffe_id: a.to_string(),
            not_before_unix: unix(now),
            ..Default::default()
        }];
        assert!(list.replace(DenyList::parse_pushed(&pushed, "mesh.local").unwrap()));
        assert!(!list.replace(DenyList::parse_pushed(&pushed, "mesh.local").unwrap()));
        let denied = list.check(&der(&old.chain_pem)).unwrap_err();
        assert!(
            denied
                .to_string()
                .contains("spiffe://mesh.local/ns/default/sa/a")
        );
        assert!(
            list.check(&der(&fresh.chain_pem)).is_ok(),
            "issued at the instant"
        );
        assert!(
            list.check(&der(&other.chain_pem)).is_ok(),
            "another identity"
        );
        assert!(list.replace(BTreeMap::new()));
        assert!(list.check(&der(&old.chain_pem)).is_ok(), "list emptied");
    }

    #[test]
    fn bad_pushed_entries_are_refused_naming_the_field() {
        let bad = vec![
            v1::Revocation {
                spiffe_id: "spiffe://other.td/ns/default/sa/a".into(),
                not_before_unix: 10,
                ..Default::default()
            },
            v1::Revocation {
                spiffe_id: "not a uri".into(),
                not_before_unix: 0,
                ..Default::default()
            },
        ];
        let errors = DenyList::parse_pushed(&bad, "mesh.local").unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "revocations[0].spiffeId",
                "revocations[1].spiffeId",
                "revocations[1].notBeforeUnix"
            ]
        );
        assert!(
            errors[0].1.contains("not in trust domain mesh.local"),
            "{errors:?}"
        );
    }
}
