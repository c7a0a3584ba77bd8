//! SPIFFE ids (`spiffe://<trust-domain>/<path>`), parsed strictly per the SPIFFE-ID spec.
//!
//! Quiver's workload ids use the path `ns/<namespace>/sa/<service-account>`, like Istio's.
//! The namespace [`SYSTEM_NAMESPACE`] is the control plane's own: no workload, Service or join
//! token may live there, so no workload certificate can ever carry the control plane's id.

use std::fmt;
use std::str::FromStr;

/// The control plane's namespace: reserved, nothing users create may live in it.
pub const SYSTEM_NAMESPACE: &str = "quiver-system";
/// The control plane's service account in [`SYSTEM_NAMESPACE`].
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "control-plane";

/// Why `namespace` may not hold anything a user creates (`None`: it may). The one rule the
/// API (resources, join tokens, registrations) and the console check.
pub fn reserved_namespace(namespace: &str) -> Option<String> {
    (namespace == SYSTEM_NAMESPACE)
        .then(|| format!("{SYSTEM_NAMESPACE:?} is reserved for the control plane's own identity"))
}

/// Why a string is not a SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("must start with \"spiffe://\"")]
    Scheme,
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain may only hold lowercase letters, digits, '.', '-' and '_' (got {0:?})")]
    TrustDomainChar(char),
    #[error("path segment is empty (no '//' and no trailing '/')")]
    EmptySegment,
    #[error("path segment may not be '.' or '..'")]
    DotSegment,
    #[error("path may only hold letters, digits, '.', '-' and '_' (got {0:?})")]
    PathChar(char),
    #[error("may not carry a query, fragment, port or user info")]
    Extra,
    #[error("longer than 2048 bytes")]
    TooLong,
}

/// A validated SPIFFE id. Compared and hashed as its canonical string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    // Byte offset in `uri` where the path starts (the '/' after the trust domain), or uri.len().
    path_at: usize,
}

impl SpiffeId {
    /// Parse and validate `s`.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        for c in td.chars() {
            if matches!(c, '?' | '#' | ':' | '@') {
                return Err(SpiffeIdError::Extra);
            }
            if !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')) {
                return Err(SpiffeIdError::TrustDomainChar(c));
            }
        }
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(SpiffeIdError::EmptySegment);
                }
                if seg == "." || seg == ".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                for c in seg.chars() {
                    if matches!(c, '?' | '#') {
                        return Err(SpiffeIdError::Extra);
                    }
                    if !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
                        return Err(SpiffeIdError::PathChar(c));
                    }
                }
            }
        }
        Ok(SpiffeId {
            uri: s.to_string(),
            path_at: "spiffe://".len() + td.len(),
        })
    }

    /// The id of a workload: `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The control plane's id in `trust_domain`,
    /// `spiffe://<td>/ns/quiver-system/sa/control-plane`: what the discovery listener presents
    /// and what every client of it pins by default.
    pub fn control_plane(trust_domain: &str) -> Result<Self, SpiffeIdError> {
        Self::workload(
            trust_domain,
            SYSTEM_NAMESPACE,
            CONTROL_PLANE_SERVICE_ACCOUNT,
        )
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.path_at]
    }

    /// The path, with its leading '/', or "" for a trust-domain id.
    pub fn path(&self) -> &str {
        &self.uri[self.path_at..]
    }

    /// `(namespace, service_account)` when the path has Quiver's workload shape.
    pub fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id = SpiffeId::parse("spiffe://mesh.local/ns/default/sa/reviews").unwrap();
        assert_eq!(id.trust_domain(), "mesh.local");
        assert_eq!(id.path(), "/ns/default/sa/reviews");
        assert_eq!(id.workload_parts(), Some(("default", "reviews")));
        assert_eq!(
            SpiffeId::workload("mesh.local", "default", "reviews").unwrap(),
            id
        );
        let td = SpiffeId::parse("spiffe://mesh.local").unwrap();
        assert_eq!(td.path(), "");
        assert_eq!(td.workload_parts(), None);
    }

    #[test]
    fn refuses_malformed_ids() {
        use SpiffeIdError::*;
        for (s, want) in [
            ("https://mesh.local/ns/a", Scheme),
            ("spiffe:///ns/a", EmptyTrustDomain),
            ("spiffe://Mesh.local/ns/a", TrustDomainChar('M')),
            ("spiffe://mesh.local:443/ns/a", Extra),
            ("spiffe://u@mesh.local/ns/a", Extra),
            ("spiffe://mesh.local/ns//a", EmptySegment),
            ("spiffe://mesh.local/ns/a/", EmptySegment),
            ("spiffe://mesh.local/ns/../a", DotSegment),
            ("spiffe://mesh.local/ns/a?x=1", Extra),
            ("spiffe://mesh.local/ns/a b", PathChar(' ')),
        ] {
            assert_eq!(SpiffeId::parse(s), Err(want), "{s}");
        }
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://td/{}", "a".repeat(2100))),
            Err(TooLong)
        );
    }
}
