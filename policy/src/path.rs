//! Request path normalization: the one form of a path that routes and authorization match and
//! that the app receives, so a path cannot say one thing to the policy and another to the app.
//!
//! In order (the Envoy `normalize_path` + `merge_slashes` + escaped-slash action, plus the
//! rules for backslashes and path parameters that Envoy leaves to the app):
//! 1. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (`%61` is
//!    `a`, `%2E` is `.`); other escapes are kept, with upper-case hex; a `%` not followed by two
//!    hex digits is refused;
//! 2. an escaped slash or backslash (`%2F`, `%5C`) is refused, kept as it is, or decoded to a
//!    separator, as [`EscapedSlashes`] says (default: refused);
//! 3. a backslash is a separator (some servers read it so; the policy must too);
//! 4. a `;` (path parameters, which some servers strip before they route) is refused unless
//!    [`Parameters::Keep`];
//! 5. repeated slashes are merged and `.` / `..` segments removed (RFC 3986 section 5.2.4);
//!    `..` never climbs above the root.
//!
//! Case is kept: HTTP paths are case-sensitive. It must not read the query or the method.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What an escaped slash or backslash (`%2F`, `%5C`, either case) in a path does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400 `bad-request` (the default: such paths are rare and a classic bypass).
    #[default]
    Reject,
    /// Kept encoded: matched and forwarded as `%2F` / `%5C`, never as a separator.
    Keep,
    /// Decoded to `/` before the rest of the normalization.
    Decode,
}

/// What a `;` in a path does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parameters {
    /// 400 `bad-request` (the default: `/admin;x/y` reads as `/admin/y` to some servers).
    #[default]
    Reject,
    /// Kept as part of the segment (for apps that use path parameters).
    Keep,
}

/// The proxy-wide path rules (`tuning.request_paths`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathRules {
    pub escaped_slashes: EscapedSlashes,
    pub parameters: Parameters,
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// It does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C` with [`EscapedSlashes::Reject`].
    EscapedSlash,
    /// `;` with [`Parameters::Reject`].
    Parameters,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with '/'",
            PathError::BadEscape => "the path has a '%' not followed by two hex digits",
            PathError::EscapedSlash => {
                "the path has an escaped slash or backslash (%2F, %5C); refused by \
                 tuning.request_paths.escaped_slashes"
            }
            PathError::Parameters => {
                "the path has a ';' (path parameters); refused by tuning.request_paths.parameters"
            }
        })
    }
}

impl std::error::Error for PathError {}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The normalized form of `path` (without the query), borrowed when it is already normal.
pub fn normalize<'a>(path: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // The common case costs one scan and no allocation.
    let plain = bytes.iter().all(|&b| b != b'%' && b != b'\\' && b != b';')
        && !path.contains("//")
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if plain {
        return Ok(Cow::Borrowed(path));
    }

    // Steps 1-4: decode, and turn every separator into '/'.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi * 16 + lo;
                if unreserved(v) {
                    decoded.push(char::from(v));
                } else if v == b'/' || v == b'\\' {
                    match rules.escaped_slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Keep => {
                            decoded.push_str(if v == b'/' { "%2F" } else { "%5C" });
                        }
                        EscapedSlashes::Decode => decoded.push('/'),
                    }
                } else {
                    decoded.push('%');
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
                }
                i += 3;
            }
            b'\\' => {
                decoded.push('/');
                i += 1;
            }
            b';' if rules.parameters == Parameters::Reject => return Err(PathError::Parameters),
            _ => {
                // Copy the run up to the next byte that needs attention (keeps UTF-8 whole).
                let end = bytes[i..]
                    .iter()
                    .position(|&c| matches!(c, b'%' | b'\\' | b';'))
                    .map_or(bytes.len(), |n| i + n.max(1));
                decoded.push_str(&path[i..end]);
                i = end;
            }
        }
    }

    // Step 5: merge slashes, remove dot segments.
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in decoded[1..].split('/') {
        trailing = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    if out == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(out))
    }
}

#[cfg(test)]
mod tests;
