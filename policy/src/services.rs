//! The Services a policy may name, as the compiler sees them: each known service's subsets,
//! what to do about a name that is not known, and what a reference resolves to (a
//! [`Backend`]: a service and the label selector of one of its subsets).
//!
//! The one difference between compiling at write time and at run time lives here. The API
//! (and a proxy's static file, which lists every service it may call) refuses a reference to
//! an unknown Service: apply the Service first. A proxy compiling a pushed snapshot accepts
//! it, because a Service may be deleted while a Route still names it; the backend then has no
//! endpoints and its requests are answered 503, while the rest of the push applies.

use std::collections::BTreeMap;

use quiver_api::v1;
use quiver_api::validate::FieldError;

use crate::fields::err;
use crate::{Labels, Subset};

/// Where a request goes: a service and the labels its endpoints must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: String,
    /// Subset name; empty means every workload of the service.
    pub subset: String,
    /// The subset's label selector (empty for "every workload").
    pub selector: Labels,
}

impl Backend {
    /// `service` or `service/subset`, as written in access logs.
    pub fn label(&self) -> String {
        if self.subset.is_empty() {
            self.service.clone()
        } else {
            format!("{}/{}", self.service, self.subset)
        }
    }
}

/// The Services a document may refer to, by name, in the document's namespace.
pub type ServiceSpecs = BTreeMap<String, v1::ServiceSpec>;

/// What the compiler does with a reference to a Service it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// A field error: "unknown service ... (apply the Service first)".
    Refuse,
    /// A backend without endpoints.
    NoEndpoints,
}

/// Known services by name, with their subsets.
#[derive(Debug, Clone)]
pub struct Services<'a> {
    known: BTreeMap<&'a str, &'a [Subset]>,
    unknown: Unknown,
}

impl<'a> Services<'a> {
    /// An index over `(name, subsets)` pairs.
    pub fn new(known: impl IntoIterator<Item = (&'a str, &'a [Subset])>, unknown: Unknown) -> Self {
        Self {
            known: known.into_iter().collect(),
            unknown,
        }
    }

    /// An index over Service specs by name (the API's view of a namespace).
    pub fn from_specs(specs: &'a BTreeMap<String, v1::ServiceSpec>, unknown: Unknown) -> Self {
        Self::new(
            specs
                .iter()
                .map(|(name, s)| (name.as_str(), s.subsets.as_slice())),
            unknown,
        )
    }

    /// Whether `service` is known; if not and unknown names are refused, an error at
    /// `path.service`.
    pub fn check(&self, errors: &mut Vec<FieldError>, path: &str, service: &str) -> bool {
        if self.known.contains_key(service) {
            return true;
        }
        if self.unknown == Unknown::Refuse {
            errors.push(err(
                format!("{path}.service"),
                format!("unknown service {service:?} (apply the Service first)"),
            ));
        }
        false
    }

    /// The backend `service` / `subset` (empty: every workload) named at `path` (the
    /// backend's or mirror's own path: errors go to `path.service` and `path.subset`).
    pub fn resolve(
        &self,
        errors: &mut Vec<FieldError>,
        path: &str,
        service: &str,
        subset: &str,
    ) -> Option<Backend> {
        let selector = if self.check(errors, path, service) {
            self.selector(errors, &format!("{path}.subset"), service, subset)?
        } else if self.unknown == Unknown::NoEndpoints {
            // An unknown service has no endpoints in this snapshot, whatever the selector.
            Labels::new()
        } else {
            return None;
        };
        Some(Backend {
            service: service.to_string(),
            subset: subset.to_string(),
            selector,
        })
    }

    /// The label selector of subset `subset` of the known service `service` (empty subset:
    /// every workload); an unknown subset is reported at `path`.
    pub fn selector(
        &self,
        errors: &mut Vec<FieldError>,
        path: &str,
        service: &str,
        subset: &str,
    ) -> Option<Labels> {
        if subset.is_empty() {
            return Some(Labels::new());
        }
        let subsets = self.known.get(service).copied().unwrap_or_default();
        if let Some(s) = subsets.iter().find(|s| s.name == subset) {
            return Some(s.labels.clone());
        }
        let known: Vec<&str> = subsets.iter().map(|s| s.name.as_str()).collect();
        errors.push(err(
            path,
            format!(
                "unknown subset {subset:?} of service {service:?} (it has: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
        None
    }
}
