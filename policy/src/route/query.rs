//! Query parameter conditions of a route rule (`match.queryParams`): names compared exactly
//! and case-sensitively, values after percent-decoding, a repeated parameter judged by its
//! first value (as Gateway API specifies).

use std::borrow::Cow;

use quiver_api::v1;
use quiver_api::validate::FieldError;
use regex::Regex;

use crate::fields::{self, err};

#[derive(Debug)]
pub(super) enum QueryCond {
    Exact(String),
    Regex(Regex),
    Present,
}

/// The longest parameter name accepted (Gateway API's bound).
const MAX_NAME: usize = 256;

/// A query condition: a name and exactly one of `exact`, `regex`, `present`.
pub(super) fn compile(
    q: &v1::QueryParamMatch,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<(String, QueryCond)> {
    let before = errors.len();
    if q.name.is_empty() {
        errors.push(err(format!("{at}.name"), "required"));
    } else if q.name.len() > MAX_NAME {
        errors.push(err(
            format!("{at}.name"),
            format!("longer than {MAX_NAME} bytes"),
        ));
    } else if q
        .name
        .chars()
        .any(|c| c.is_control() || matches!(c, '&' | '=' | '#'))
    {
        errors.push(err(
            format!("{at}.name"),
            format!(
                "{:?} is not a query parameter name (no '&', '=', '#' or control characters)",
                q.name
            ),
        ));
    }
    let set = usize::from(!q.exact.is_empty())
        + usize::from(!q.regex.is_empty())
        + usize::from(q.present);
    if set != 1 {
        errors.push(err(at, "set exactly one of exact, regex, present"));
    }
    let cond = if !q.regex.is_empty() {
        fields::anchored_regex(errors, &format!("{at}.regex"), &q.regex).map(QueryCond::Regex)
    } else if !q.exact.is_empty() {
        Some(QueryCond::Exact(q.exact.clone()))
    } else {
        Some(QueryCond::Present)
    };
    if errors.len() != before {
        return None;
    }
    Some((q.name.clone(), cond?))
}

impl QueryCond {
    /// Whether the condition holds for the parameter's first value (`None`: absent).
    pub(super) fn holds(&self, value: Option<Cow<'_, str>>) -> bool {
        match (self, value) {
            (_, None) => false,
            (QueryCond::Present, Some(_)) => true,
            (QueryCond::Exact(want), Some(v)) => v == want.as_str(),
            (QueryCond::Regex(re), Some(v)) => re.is_match(&v),
        }
    }
}

/// The first value of parameter `name` in `query` (`a=1&b&c=%20`), percent-decoded; a
/// parameter without `=` has the empty value. Names are decoded before comparing too.
pub(super) fn first_value<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(n, _)| decode(n) == name)
        .map(|(_, v)| decode(v))
}

/// `%XX` escapes decoded (a `%` without two hex digits stays as it is; `+` is not a space:
/// that is a form encoding, not the URI's). Bytes that do not make UTF-8 become U+FFFD.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 0xFF.
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_decodes_and_takes_the_first() {
        let q = Some("a=1&tier=gold%20plus&tier=silver&flag&%74ab=x");
        assert_eq!(first_value(q, "tier").as_deref(), Some("gold plus"));
        assert_eq!(first_value(q, "flag").as_deref(), Some(""));
        assert_eq!(
            first_value(q, "tab").as_deref(),
            Some("x"),
            "names are decoded too"
        );
        assert_eq!(first_value(q, "Tier"), None, "names are case-sensitive");
        assert_eq!(first_value(None, "a"), None);
        assert_eq!(first_value(Some("a=%zz%4"), "a").as_deref(), Some("%zz%4"));
        assert_eq!(first_value(Some("a=x+y"), "a").as_deref(), Some("x+y"));
    }
}
