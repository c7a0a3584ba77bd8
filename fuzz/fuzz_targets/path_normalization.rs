//! Request-path normalization (`quiver_policy::path`), under every combination of
//! `tuning.request_paths`. Any path: no panic; a normalized path starts with '/', has no
//! empty, '.' or '..' segment, no escaped unreserved character, no escape in lower-case hex,
//! is its own normal form (normalizing again gives it back unchanged and borrowed), is still
//! a valid HTTP path when the input was one, and gets the same authorization decision as its
//! re-normalization.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use quiver_api::v1;
use quiver_policy::authz::{Authorizer, NamedPolicy, Scope};
use quiver_policy::path::{EscapedSlashes, Parameters, PathRules, normalize};

/// Exact, prefix and case-folding rules, the shapes bypasses aim at.
static AUTHORIZER: LazyLock<Authorizer> = LazyLock::new(|| {
    let spec: v1::AuthorizationPolicySpec = serde_yaml::from_str(
        r#"
service: api
deny:
  - paths: ["/admin", "/admin/*"]
  - paths: ["/internal/*"]
    ignoreCase: true
allow:
  - paths: ["/public/*", "/"]
"#,
    )
    .expect("the fuzz policy parses");
    let policy = NamedPolicy {
        name: "fuzz".into(),
        spec,
    };
    Authorizer::compile(&[policy], Scope::default(), "authorization")
        .expect("the fuzz policy compiles")
});

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, path)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let rules = PathRules {
        escaped_slashes: match selector % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Decode,
        },
        parameters: if selector & 4 == 0 {
            Parameters::Reject
        } else {
            Parameters::Keep
        },
    };
    let Ok(normal) = normalize(path, &rules) else {
        return;
    };
    let normal: &str = &normal;
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    for segment in normal[1..].split('/').rev().skip(1) {
        // Every segment but the last (which is empty for a trailing slash) is a name.
        assert!(
            !matches!(segment, "" | "." | ".."),
            "{path:?} -> {normal:?}: segment {segment:?}"
        );
    }
    let last = normal.rsplit('/').next().unwrap_or_default();
    assert!(!matches!(last, "." | ".."), "{path:?} -> {normal:?}");
    assert!(!normal.contains('\\'), "{path:?} -> {normal:?}");
    if rules.parameters == Parameters::Reject {
        assert!(!normal.contains(';'), "{path:?} -> {normal:?}");
    }
    let bytes = normal.as_bytes();
    for (i, _) in normal.match_indices('%') {
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            panic!("{path:?} -> {normal:?}: a broken escape at {i}");
        };
        assert!(
            !bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase),
            "{path:?} -> {normal:?}: lower-case hex at {i}"
        );
        let v = hi * 16 + lo;
        assert!(
            !unreserved(v),
            "{path:?} -> {normal:?}: %{v:02X} left encoded"
        );
        if rules.escaped_slashes != EscapedSlashes::Keep {
            assert!(
                v != b'/' && v != b'\\',
                "{path:?} -> {normal:?}: escaped slash kept"
            );
        }
    }
    let again = normalize(normal, &rules)
        .unwrap_or_else(|e| panic!("{path:?} -> {normal:?}, which is refused: {e}"));
    assert_eq!(again, normal, "not idempotent for {path:?}");
    assert!(
        matches!(again, std::borrow::Cow::Borrowed(_)),
        "a normal path was copied: {normal:?}"
    );
    // Only a path the http crate reads whole (no '?' or '#' cutting it short) is comparable.
    if path
        .parse::<http::uri::PathAndQuery>()
        .is_ok_and(|pq| pq.as_str() == path && pq.path() == path)
    {
        assert!(
            normal.parse::<http::uri::PathAndQuery>().is_ok(),
            "{path:?} is a valid HTTP path but its normal form {normal:?} is not"
        );
    }
    for method in ["GET", "POST"] {
        assert_eq!(
            AUTHORIZER.evaluate("api", None, method, normal),
            AUTHORIZER.evaluate("api", None, method, &again),
            "{path:?} -> {normal:?}"
        );
    }
});
