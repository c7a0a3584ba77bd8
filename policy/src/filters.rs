//! What a route rule changes about a request or its answer (Gateway API's filters): header
//! modifiers on the request sent upstream and on the response going back, a redirect the
//! proxy answers itself, and a URL rewrite (Host and path) before sending.
//!
//! Owns their compilation from `quiver.v1` (every refusal with its field path) and the pure
//! functions the data path calls to carry them out: [`HeaderEdits::apply`],
//! [`Redirect::location`], [`Rewrite::path`]. No I/O.

use std::collections::HashMap;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use quiver_api::v1;
use quiver_api::validate::FieldError;

use crate::fields::err;

/// Headers a rule sets, adds and removes, checked and parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Compile `m` at `at` (`spec.rules[0].requestHeaders`).
    pub(crate) fn compile(
        m: &v1::HeaderModifier,
        at: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<Self> {
        let before = errors.len();
        // Each name in one list only: with two, the order they apply in would matter.
        let mut lists: HashMap<HeaderName, &str> = HashMap::new();
        let mut one_list = |errors: &mut Vec<FieldError>, path: &str, list, name: &HeaderName| {
            if let Some(first) = lists.insert(name.clone(), list) {
                let reason = if first == list {
                    format!("{name:?} is named twice in {list}")
                } else {
                    format!("{name:?} is already in {first}; a header may be in one list only")
                };
                errors.push(err(path, reason));
            }
        };
        let mut edits = Self::default();
        for (list, out) in [("set", &mut edits.set), ("add", &mut edits.add)] {
            let given = if list == "set" { &m.set } else { &m.add };
            for (i, h) in given.iter().enumerate() {
                let path = format!("{at}.{list}[{i}]");
                let name = modifiable_name(errors, &format!("{path}.name"), &h.name);
                let value = HeaderValue::from_str(&h.value);
                if value.is_err() {
                    errors.push(err(
                        format!("{path}.value"),
                        "not a valid header value (visible ASCII, spaces and tabs only)",
                    ));
                }
                if let Some(name) = &name {
                    one_list(errors, &format!("{path}.name"), list, name);
                }
                if let (Some(name), Ok(value)) = (name, value) {
                    out.push((name, value));
                }
            }
        }
        for (i, n) in m.remove.iter().enumerate() {
            let path = format!("{at}.remove[{i}]");
            if let Some(name) = modifiable_name(errors, &path, n) {
                one_list(errors, &path, "remove", &name);
                edits.remove.push(name);
            }
        }
        (errors.len() == before).then_some(edits)
    }

    /// Carry the edits out on `headers`: `set` replaces every value of its header, `add`
    /// appends one, `remove` drops them all.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// Headers the proxy owns: connection framing and its own mesh headers.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
    "content-length",
];

/// A header name a rule may modify: a valid HTTP token, and none of pseudo-headers,
/// hop-by-hop headers, `content-length`, `host` and Quiver's own `quiver-*`/`x-quiver-*`.
fn modifiable_name(errors: &mut Vec<FieldError>, path: &str, name: &str) -> Option<HeaderName> {
    if name.starts_with(':') {
        errors.push(err(
            path,
            format!("{name:?} is a pseudo-header; it cannot be modified"),
        ));
        return None;
    }
    let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
        errors.push(err(path, format!("{name:?} is not a valid header name")));
        return None;
    };
    let lower = parsed.as_str();
    let reason = if HOP_BY_HOP.contains(&lower) {
        format!("{name:?} belongs to the connection (hop-by-hop or framing); it cannot be modified")
    } else if lower == "host" {
        format!("{name:?} cannot be modified here; use rewrite.hostname")
    } else if lower.starts_with("quiver-") || lower.starts_with("x-quiver-") {
        format!("{name:?} is one of Quiver's own headers; it cannot be modified")
    } else {
        return Some(parsed);
    };
    errors.push(err(path, reason));
    None
}

/// A path change: the whole path, or the part the rule's `path.prefix` matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEdit {
    Full(String),
    Prefix { matched: String, with: String },
}

impl PathEdit {
    /// Compile `p` at `at`; `prefix` is the rule's `match.path.prefix`, if that is its path
    /// condition (`replacePrefixMatch` needs one).
    fn compile(
        p: &v1::PathModifier,
        at: &str,
        prefix: Option<&str>,
        errors: &mut Vec<FieldError>,
    ) -> Option<Self> {
        let full = !p.replace_full_path.is_empty();
        let pre = !p.replace_prefix_match.is_empty();
        if full == pre {
            errors.push(err(
                at,
                "set exactly one of replaceFullPath, replacePrefixMatch",
            ));
            return None;
        }
        let (field, value) = if full {
            ("replaceFullPath", &p.replace_full_path)
        } else {
            ("replacePrefixMatch", &p.replace_prefix_match)
        };
        let path = format!("{at}.{field}");
        if !value.starts_with('/') {
            errors.push(err(&path, "must start with '/'"));
            return None;
        }
        if value.contains(['?', '#']) || value.parse::<http::uri::PathAndQuery>().is_err() {
            errors.push(err(
                &path,
                "not a valid path (no '?', '#', spaces or control characters)",
            ));
            return None;
        }
        if full {
            return Some(Self::Full(value.clone()));
        }
        let Some(matched) = prefix else {
            errors.push(err(
                &path,
                "needs the rule's match.path to be a prefix (match.path.prefix)",
            ));
            return None;
        };
        Some(Self::Prefix {
            matched: matched.to_string(),
            with: value.clone(),
        })
    }

    /// `path` (without the query) changed. With a prefix, the part after it is kept; one
    /// slash is dropped where the replacement's trailing `/` meets the rest's leading `/`,
    /// and an empty result is `/` (`/api` -> `/`: `/api/x` becomes `/x`).
    pub fn apply(&self, path: &str) -> String {
        match self {
            Self::Full(p) => p.clone(),
            Self::Prefix { matched, with } => {
                let rest = path.strip_prefix(matched.as_str()).unwrap_or(path);
                let mut out = with.clone();
                if out.ends_with('/') && rest.starts_with('/') {
                    out.pop();
                }
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                out
            }
        }
    }
}

/// A rule's redirect, answered by the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    scheme: Option<String>,
    hostname: Option<String>,
    port: Option<u16>,
    path: Option<PathEdit>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// What the proxy knows of the request a redirect answers.
#[derive(Debug, Clone, Copy)]
pub struct RedirectFrom<'a> {
    /// The scheme the caller used (`http` for an app talking to its proxy).
    pub scheme: &'a str,
    /// The request's authority (`host[:port]`), from its URI or `Host`.
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl Redirect {
    pub(crate) fn compile(
        r: &v1::Redirect,
        at: &str,
        prefix: Option<&str>,
        errors: &mut Vec<FieldError>,
    ) -> Option<Self> {
        let before = errors.len();
        // An empty redirect would send the caller back to the same URL; stored documents
        // also drop empty objects, so it could not survive a round trip through the API.
        if *r == v1::Redirect::default() {
            errors.push(err(
                at,
                "set at least one of scheme, hostname, port, path, statusCode \
                 (an empty redirect sends the caller back to the same URL)",
            ));
            return None;
        }
        let scheme = match r.scheme.as_str() {
            "" => None,
            "http" | "https" => Some(r.scheme.clone()),
            other => {
                errors.push(err(
                    format!("{at}.scheme"),
                    format!("{other:?} is not one of http, https"),
                ));
                None
            }
        };
        let hostname = hostname(errors, &format!("{at}.hostname"), &r.hostname);
        let port = match r.port {
            0 => None,
            p => u16::try_from(p).ok().or_else(|| {
                errors.push(err(
                    format!("{at}.port"),
                    format!("{p} is outside 1..65535"),
                ));
                None
            }),
        };
        let path = r
            .path
            .as_ref()
            .and_then(|p| PathEdit::compile(p, &format!("{at}.path"), prefix, errors));
        let status = match r.status_code {
            0 => 302,
            s @ (301 | 302 | 303 | 307 | 308) => s as u16,
            s => {
                errors.push(err(
                    format!("{at}.statusCode"),
                    format!("{s} is not one of 301, 302, 303, 307, 308"),
                ));
                302
            }
        };
        (errors.len() == before).then_some(Self {
            scheme,
            hostname,
            port,
            path,
            status,
        })
    }

    /// The `Location` for a request, built as Gateway API's RequestRedirect does: each part
    /// the redirect leaves empty is the request's; with a new scheme and no port the port
    /// is the scheme's own; a port that is the scheme's default is left out. The query is
    /// kept.
    pub fn location(&self, from: &RedirectFrom<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(from.scheme);
        let (req_host, req_port) = split_authority(from.authority);
        let host = self.hostname.as_deref().unwrap_or(req_host);
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => req_port,
        };
        let default = if scheme == "https" { 443 } else { 80 };
        let mut out = format!("{scheme}://{host}");
        if let Some(p) = port.filter(|p| *p != default) {
            out.push(':');
            out.push_str(&p.to_string());
        }
        match &self.path {
            Some(edit) => out.push_str(&edit.apply(from.path)),
            None => out.push_str(from.path),
        }
        if let Some(q) = from.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// `host[:port]` split; an IPv6 literal keeps its brackets.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()),
        _ => (authority, None),
    }
}

/// A rule's URL rewrite: the Host and the path the callee receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The new authority (Host), if changed.
    pub hostname: Option<String>,
    path: Option<PathEdit>,
}

impl Rewrite {
    pub(crate) fn compile(
        r: &v1::Rewrite,
        at: &str,
        prefix: Option<&str>,
        errors: &mut Vec<FieldError>,
    ) -> Option<Self> {
        let before = errors.len();
        let hostname = hostname(errors, &format!("{at}.hostname"), &r.hostname);
        let path = r
            .path
            .as_ref()
            .and_then(|p| PathEdit::compile(p, &format!("{at}.path"), prefix, errors));
        if hostname.is_none() && r.path.is_none() && errors.len() == before {
            errors.push(err(at, "set hostname, path or both"));
        }
        (errors.len() == before).then_some(Self { hostname, path })
    }

    /// The path the callee receives, if the rewrite changes it (`None`: unchanged).
    pub fn path(&self, path: &str) -> Option<String> {
        self.path.as_ref().map(|e| e.apply(path))
    }
}

/// A host name field: empty is unset; otherwise a DNS name of labels (lowercase letters,
/// digits, `-`), at most 253 bytes.
fn hostname(errors: &mut Vec<FieldError>, path: &str, h: &str) -> Option<String> {
    if h.is_empty() {
        return None;
    }
    let ok = h.len() <= 253
        && h.split('.')
            .all(|l| quiver_api::validate::check_dns_label(l).is_ok());
    if ok {
        Some(h.to_string())
    } else {
        errors.push(err(
            path,
            format!("{h:?} is not a DNS name (lowercase letters, digits, '-' and '.')"),
        ));
        None
    }
}

#[cfg(test)]
mod tests;
