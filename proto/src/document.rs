//! Kubernetes-style YAML/JSON documents (`apiVersion`, `kind`, `metadata`, `spec`, `status`)
//! to and from resource messages.
//!
//! Parsing refuses unknown fields and names the field path of every error. Rendering leaves out
//! fields at their proto3 default (empty, zero, false) so that documents stay short, and
//! parsing them back gives the same message: `get -o yaml | apply -f -` round-trips.

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::resource::{API_VERSION, AnyResource, Kind, Resource};
use crate::v1;

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("document {index}: not valid YAML: {reason}")]
    Yaml { index: usize, reason: String },
    #[error("document {index}: must be a mapping with apiVersion, kind, metadata and spec")]
    NotMapping { index: usize },
    #[error("document {index}: apiVersion: must be \"{expected}\", got {got:?}")]
    ApiVersion {
        index: usize,
        expected: &'static str,
        got: String,
    },
    #[error("document {index}: kind: unknown kind {got:?} (expected one of {expected})")]
    Kind {
        index: usize,
        got: String,
        expected: String,
    },
    #[error("document {index} ({kind}): {path}: {reason}")]
    Field {
        index: usize,
        kind: Kind,
        path: String,
        reason: String,
    },
}

/// Every document in a (multi-document) YAML or JSON text, in order. Empty documents are
/// skipped. Documents are numbered from 1 in errors.
pub fn parse_documents(text: &str) -> Result<Vec<AnyResource>, DocumentError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = Value::deserialize(doc).map_err(|e| DocumentError::Yaml {
            index,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        out.push(from_value(index, value)?);
    }
    Ok(out)
}

/// One document from an already parsed YAML value.
pub fn from_value(index: usize, value: Value) -> Result<AnyResource, DocumentError> {
    let Value::Mapping(mut map) = value else {
        return Err(DocumentError::NotMapping { index });
    };
    let api_version = map.remove("apiVersion");
    let kind_value = map.remove("kind");
    let kind = kind_value
        .as_ref()
        .and_then(Value::as_str)
        .and_then(Kind::from_document)
        .filter(|k| *k != Kind::Workload)
        .ok_or_else(|| DocumentError::Kind {
            index,
            got: kind_value.map(describe).unwrap_or_else(|| "nothing".into()),
            expected: "MeshConfig, Service, AuthorizationPolicy, Route, Canary, HTTPRoute, \
                       GRPCRoute"
                .into(),
        })?;
    if !api_version
        .as_ref()
        .and_then(Value::as_str)
        .is_some_and(|v| kind.accepts_api_version(v))
    {
        return Err(DocumentError::ApiVersion {
            index,
            expected: kind.api_version(),
            got: api_version
                .map(describe)
                .unwrap_or_else(|| "nothing".into()),
        });
    }
    let body = Value::Mapping(map);
    if matches!(kind, Kind::HttpRoute | Kind::GrpcRoute)
        && let Some((path, reason)) = gateway_unsupported(&body)
    {
        return Err(DocumentError::Field {
            index,
            kind,
            path,
            reason: reason.into(),
        });
    }
    Ok(match kind {
        Kind::MeshConfig => decode::<v1::MeshConfig>(index, body)?.into_any(),
        Kind::Service => decode::<v1::Service>(index, body)?.into_any(),
        Kind::AuthorizationPolicy => decode::<v1::AuthorizationPolicy>(index, body)?.into_any(),
        Kind::Route => decode::<v1::Route>(index, body)?.into_any(),
        Kind::Canary => decode::<v1::Canary>(index, body)?.into_any(),
        Kind::Workload => decode::<v1::Workload>(index, body)?.into_any(),
        Kind::HttpRoute => decode::<v1::HttpRoute>(index, body)?.into_any(),
        Kind::GrpcRoute => decode::<v1::GrpcRoute>(index, body)?.into_any(),
    })
}

/// Gateway API fields Quiver does not carry out, each with why: refused by name rather than
/// as an unknown field, so that a user bringing an existing document learns what to change.
/// `*` stands for any index of a list.
const GATEWAY_UNSUPPORTED: &[(&[&str], &str)] = &[
    (
        &["status"],
        "status is written by the controller, not applied; leave it out",
    ),
    (
        &["spec", "rules", "*", "retry"],
        "not supported: Gateway API retries name status codes, Quiver retries on conditions \
         (5xx, gateway-error, reset, ...); use a Quiver Route's retries",
    ),
    (
        &["spec", "rules", "*", "sessionPersistence"],
        "not supported: Quiver balances every request (no session affinity)",
    ),
    (
        &["spec", "rules", "*", "backendRefs", "*", "filters"],
        "not supported: filters apply to the whole rule in Quiver; move them to the rule's filters",
    ),
    (
        &["spec", "rules", "*", "filters", "*", "extensionRef"],
        "not supported: Quiver has no extension filters",
    ),
    (
        &["spec", "rules", "*", "filters", "*", "cors"],
        "not supported: Quiver has no CORS filter; answer CORS in the app",
    ),
    (
        &["spec", "rules", "*", "filters", "*", "externalAuth"],
        "not supported: Quiver authorizes with AuthorizationPolicy (by peer identity, method \
         and path)",
    ),
];

/// The first field of a Gateway API document that [`GATEWAY_UNSUPPORTED`] names, as a path.
fn gateway_unsupported(body: &Value) -> Option<(String, &'static str)> {
    fn walk(v: &Value, pattern: &[&str], at: String) -> Option<String> {
        let Some((first, rest)) = pattern.split_first() else {
            return Some(at);
        };
        if *first == "*" {
            let Value::Sequence(items) = v else {
                return None;
            };
            return items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, rest, format!("{at}[{i}]")));
        }
        let next = v.as_mapping()?.get(*first)?;
        let at = if at.is_empty() {
            (*first).to_string()
        } else {
            format!("{at}.{first}")
        };
        walk(next, rest, at)
    }
    GATEWAY_UNSUPPORTED
        .iter()
        .find_map(|(pattern, reason)| Some((walk(body, pattern, String::new())?, *reason)))
}

fn decode<R: Resource>(index: usize, body: Value) -> Result<R, DocumentError> {
    serde_path_to_error::deserialize::<_, R>(body).map_err(|e| DocumentError::Field {
        index,
        kind: R::KIND,
        path: field_path(e.path()),
        reason: e.into_inner().to_string(),
    })
}

/// The field path of an error as the API writes paths (`spec.rules[0].timeout`). A key that
/// is not a plain name (empty, or with a '.', bracket, quote, space or control character) is
/// written quoted in brackets (`spec[""]`), so every error names where it is, whatever keys
/// the document has; an error about the whole document says `(document)`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                let plain = !key.is_empty()
                    && !key.chars().any(|c| {
                        matches!(c, '.' | '[' | ']' | '"') || c.is_whitespace() || c.is_control()
                    });
                if plain {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                } else {
                    out.push_str(&format!("[{key:?}]"));
                }
            }
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    if out.is_empty() {
        "(document)".into()
    } else {
        out
    }
}

fn describe(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => serde_yaml::to_string(&other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// The full document (apiVersion and kind first), with proto3 defaults left out.
pub fn to_document(resource: &AnyResource) -> Result<Value, serde_yaml::Error> {
    let kind = resource.kind();
    let mut doc = Mapping::new();
    doc.insert("apiVersion".into(), kind.api_version().into());
    doc.insert("kind".into(), kind.as_str().into());
    if let Value::Mapping(body) = prune(resource.to_yaml_value()?, explicit_keys(kind)) {
        doc.extend(body);
    }
    Ok(Value::Mapping(doc))
}

/// Render documents as multi-document YAML.
pub fn to_yaml(resources: &[AnyResource]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(&to_document(r)?)?);
    }
    Ok(out)
}

/// Render one document as pretty JSON (a `List`-shaped object when there are several).
pub fn to_json(resources: &[AnyResource]) -> Result<String, serde_yaml::Error> {
    let docs = resources
        .iter()
        .map(to_document)
        .collect::<Result<Vec<_>, _>>()?;
    let value = if docs.len() == 1 {
        docs.into_iter().next().unwrap_or(Value::Null)
    } else {
        let mut list = Mapping::new();
        list.insert("apiVersion".into(), API_VERSION.into());
        list.insert("kind".into(), "List".into());
        list.insert("items".into(), Value::Sequence(docs));
        Value::Mapping(list)
    };
    serde_json::to_string_pretty(&value).map_err(serde::ser::Error::custom)
}

/// The canonical form of a resource: what it becomes after rendering and parsing back. Fields
/// present but at their default (e.g. an empty `retries: {}`) are dropped, so that two objects
/// meaning the same thing encode to the same bytes and a re-apply is recognised as unchanged.
pub fn canonicalize<R: Resource + 'static>(resource: &R) -> Result<R, serde_yaml::Error> {
    serde_yaml::from_value(prune(
        serde_yaml::to_value(resource)?,
        explicit_keys(R::KIND),
    ))
}

/// Fields of `kind` whose zero value means something else than leaving them out (proto3
/// `optional`): pruning keeps them when they are set, even to zero or "". A MeshConfig's
/// `samplingPercent: 0` samples nothing where absent means 1%; a Gateway API backend's
/// `weight: 0` sends it nothing where absent means 1, and a parent's `group: ""` is the core
/// group where absent means Gateway API's own.
fn explicit_keys(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::MeshConfig => &["samplingPercent"],
        Kind::HttpRoute | Kind::GrpcRoute => &["group", "weight"],
        _ => &[],
    }
}

/// Any message (e.g. a `ProxySnapshot`'s `RouteSpec`) as a YAML value with proto3 defaults
/// dropped: the shape the proxy's own config types read (absent = default), so a pushed
/// spec converts with `serde_yaml::from_value`. Beware that a literal 0 (a zero weight) is
/// dropped too.
pub fn pruned_value<T: serde::Serialize>(message: &T) -> Result<Value, serde_yaml::Error> {
    Ok(prune(serde_yaml::to_value(message)?, &[]))
}

/// Drop nulls, empty strings, zeros, `false` and empty collections (proto3 defaults),
/// bottom-up; under the keys in `explicit` only nulls (unset `optional` fields).
fn prune(v: Value, explicit: &[&str]) -> Value {
    match v {
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .map(|(k, v)| (k, prune(v, explicit)))
                .filter(|(k, v)| {
                    if k.as_str().is_some_and(|k| explicit.contains(&k)) {
                        !v.is_null()
                    } else {
                        !is_default(v)
                    }
                })
                .collect(),
        ),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(|v| prune(v, explicit)).collect()),
        other => other,
    }
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Sequence(s) => s.is_empty(),
        Value::Mapping(m) => m.is_empty(),
        Value::Tagged(_) => false,
    }
}

#[cfg(test)]
mod tests;
