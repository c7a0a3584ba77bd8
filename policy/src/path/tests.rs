use super::*;

fn norm(path: &str) -> Result<String, PathError> {
    normalize(path, &PathRules::default()).map(Cow::into_owned)
}

#[test]
fn the_bypass_corpus_normalizes_or_is_refused() {
    use PathError::{BadEscape, EscapedSlash, NotAbsolute, Parameters};
    #[rustfmt::skip]
    let cases: &[(&str, Result<&str, PathError>)] = &[
        // Already normal: returned as it is.
        ("/", Ok("/")),
        ("/admin", Ok("/admin")),
        ("/admin/", Ok("/admin/")),
        ("/admin/x", Ok("/admin/x")),
        ("/Admin/x", Ok("/Admin/x")),
        ("/a.b/c..d/.e", Ok("/a.b/c..d/.e")),
        // Dot segments.
        ("/public/../admin/x", Ok("/admin/x")),
        ("/./admin/x", Ok("/admin/x")),
        ("/admin/./x", Ok("/admin/x")),
        ("/../../admin", Ok("/admin")),
        ("/admin/x/..", Ok("/admin/")),
        ("/admin/.", Ok("/admin/")),
        ("/a/b/../../admin", Ok("/admin")),
        // Encoded dots.
        ("/public/%2e%2e/admin/x", Ok("/admin/x")),
        ("/public/%2E%2E/admin/x", Ok("/admin/x")),
        ("/public/.%2e/admin", Ok("/admin")),
        ("/%2e/admin", Ok("/admin")),
        // Encoded unreserved letters and digits.
        ("/%61dmin/x", Ok("/admin/x")),
        ("/%41dmin", Ok("/Admin")),
        ("/adm%69n/%78", Ok("/admin/x")),
        ("/%7euser/%2d%5f", Ok("/~user/-_")),
        // Other escapes stay encoded, hex upper-cased.
        ("/a%20b", Ok("/a%20b")),
        ("/a%c3%a9", Ok("/a%C3%A9")),
        ("/%c0%ae%c0%ae/admin", Ok("/%C0%AE%C0%AE/admin")),
        ("/a%3fb", Ok("/a%3Fb")),
        // Merged slashes.
        ("//admin/x", Ok("/admin/x")),
        ("/admin//x", Ok("/admin/x")),
        ("///admin///x//", Ok("/admin/x/")),
        // Backslashes are separators.
        ("/admin\\x", Ok("/admin/x")),
        ("/public\\..\\admin", Ok("/admin")),
        // Escaped slashes and backslashes: refused by default.
        ("/admin%2fx", Err(EscapedSlash)),
        ("/admin%2Fx", Err(EscapedSlash)),
        ("/public%2f..%2fadmin", Err(EscapedSlash)),
        ("/admin%5cx", Err(EscapedSlash)),
        // Path parameters: refused by default.
        ("/admin;x/y", Err(Parameters)),
        ("/admin;/x", Err(Parameters)),
        ("/a%3b/x", Ok("/a%3B/x")),
        // Broken escapes and relative paths.
        ("/admin%", Err(BadEscape)),
        ("/admin%2", Err(BadEscape)),
        ("/admin%zz", Err(BadEscape)),
        ("admin", Err(NotAbsolute)),
        ("", Err(NotAbsolute)),
        ("*", Err(NotAbsolute)),
        // Non-ASCII text is kept whole.
        ("/caf\u{e9}/./x", Ok("/caf\u{e9}/x")),
    ];
    assert!(cases.len() >= 40);
    for (path, want) in cases {
        assert_eq!(norm(path).as_deref().map_err(|e| *e), *want, "{path:?}");
    }
}

#[test]
fn escaped_slashes_and_parameters_follow_the_rules() {
    let keep = PathRules {
        escaped_slashes: EscapedSlashes::Keep,
        parameters: Parameters::Keep,
    };
    let decode = PathRules {
        escaped_slashes: EscapedSlashes::Decode,
        parameters: Parameters::Reject,
    };
    let n = |p: &str, r: &PathRules| normalize(p, r).map(Cow::into_owned);
    assert_eq!(n("/a%2fb/../c", &keep).as_deref(), Ok("/c"));
    assert_eq!(
        n("/public%2f..%2fadmin", &keep).as_deref(),
        Ok("/public%2F..%2Fadmin")
    );
    assert_eq!(n("/a%5Cb", &keep).as_deref(), Ok("/a%5Cb"));
    assert_eq!(n("/admin;x/y", &keep).as_deref(), Ok("/admin;x/y"));
    assert_eq!(n("/public%2f..%2fadmin", &decode).as_deref(), Ok("/admin"));
    assert_eq!(n("/a%5cb", &decode).as_deref(), Ok("/a/b"));
}

#[test]
fn a_normal_path_is_borrowed() {
    assert!(matches!(
        normalize("/api/v1/items?x", &PathRules::default()),
        Ok(Cow::Borrowed(_))
    ));
    assert!(matches!(
        normalize(
            "/a%2Fb",
            &PathRules {
                escaped_slashes: EscapedSlashes::Keep,
                ..PathRules::default()
            }
        ),
        Ok(Cow::Borrowed(_))
    ));
}

#[test]
fn normalizing_twice_changes_nothing() {
    for p in [
        "/public/../admin/x",
        "//a//b/",
        "/%61/./b/..",
        "/a\\b\\..\\c",
        "/x/%7e/%c3%a9",
    ] {
        let once = norm(p).unwrap();
        assert_eq!(norm(&once).unwrap(), once, "{p:?}");
    }
}
