//! The field rules every compiler shares: durations, percentages, methods, anchored regexes.
//! One place for each rule, so a `timeout`, a `perTryTimeout` and a `svidTtl` are refused with
//! the same words. Each check appends a [`FieldError`] at the path it is given and returns
//! the parsed value when there is one.

use std::time::Duration;

use quiver_api::validate::FieldError;
use regex::Regex;

use crate::METHODS;

/// An error at `path`.
pub(crate) fn err(path: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        reason: reason.into(),
    }
}

/// The longest request-scale duration (timeouts, delays, latency thresholds): an hour. Longer
/// ones are mistakes, and unbounded ones overflow the clock arithmetic of every request.
pub const LONGEST_REQUEST_DURATION: Duration = Duration::from_secs(3600);

/// A request-scale duration field (`250ms`, `5s`, `1h30m`; see `quiver_api::duration`), at
/// most [`LONGEST_REQUEST_DURATION`]. Empty means unset: `None`, and an error only when
/// `required`.
pub(crate) fn duration(
    errors: &mut Vec<FieldError>,
    path: &str,
    s: &str,
    required: bool,
) -> Option<Duration> {
    duration_up_to(errors, path, s, required, LONGEST_REQUEST_DURATION)
}

/// [`duration`] with its own maximum.
pub(crate) fn duration_up_to(
    errors: &mut Vec<FieldError>,
    path: &str,
    s: &str,
    required: bool,
    max: Duration,
) -> Option<Duration> {
    if s.is_empty() {
        if required {
            errors.push(err(path, "required"));
        }
        return None;
    }
    if s.trim_start().starts_with('-') {
        errors.push(err(
            path,
            format!("{s:?} is negative; durations must be >= 0"),
        ));
        return None;
    }
    match quiver_api::duration::parse(s) {
        Ok(d) if d > max => {
            errors.push(err(
                path,
                format!(
                    "{s:?} is longer than the maximum, {}",
                    quiver_api::duration::format(max)
                ),
            ));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(err(path, format!("not a duration: {e}")));
            None
        }
    }
}

/// A percentage field, 0..100 (NaN is refused as not a number).
pub(crate) fn percent(errors: &mut Vec<FieldError>, path: &str, p: f64) {
    if p.is_nan() {
        errors.push(err(path, "is not a number"));
    } else if !(0.0..=100.0).contains(&p) {
        errors.push(err(path, format!("{p} is outside 0..100")));
    }
}

/// Each entry of `methods` (reported at `path[i]`) must be one of [`METHODS`]: exact and
/// case-sensitive, as HTTP defines methods.
pub(crate) fn methods(errors: &mut Vec<FieldError>, path: &str, methods: &[String]) {
    for (i, m) in methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            errors.push(err(
                format!("{path}[{i}]"),
                format!(
                    "{m:?} is not an HTTP method (one of {})",
                    METHODS.join(", ")
                ),
            ));
        }
    }
}

/// `^(?:re)$`: regexes in routes match the whole path or value, never a substring.
pub(crate) fn anchored_regex(errors: &mut Vec<FieldError>, path: &str, re: &str) -> Option<Regex> {
    match Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(err(path, format!("regex does not compile: {e}")));
            None
        }
    }
}

/// Names in a list must be unique (empty names are reported elsewhere): each repeat is
/// reported at `path[i].name`.
pub(crate) fn unique_names<'a>(
    errors: &mut Vec<FieldError>,
    path: &str,
    names: impl Iterator<Item = &'a str>,
) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, n) in names.enumerate() {
        if !n.is_empty() && !seen.insert(n) {
            errors.push(err(
                format!("{path}[{i}].name"),
                format!("duplicate name {n:?}"),
            ));
        }
    }
}
