//! The words of validation every crate shares: a [`FieldError`] names one field by its path
//! and says what is wrong with it; [`Invalid`] is every problem with one document; and the
//! one DNS-label rule. Validating a resource is compiling it: `quiver_policy::validate`.

use std::fmt;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the document root, e.g. `spec.rules[0].match.path.regex`.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// The one DNS-label rule (RFC 1123 label: 1-63 lowercase letters, digits and '-', starting
/// and ending with a letter or digit). Names of namespaces, services, service accounts and
/// subsets follow it: they travel as HTTP authorities, TLS server names and SPIFFE path parts.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS label (1-63 lowercase letters, digits or '-', starting and \
             ending with a letter or digit)"
        ))
    }
}

/// Every problem with a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    pub kind: &'static str,
    pub key: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} is invalid:", self.kind, self.key)?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}
