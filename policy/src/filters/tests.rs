use super::*;

fn edits(yaml: &str) -> Result<HeaderEdits, Vec<(String, String)>> {
    let m: v1::HeaderModifier = serde_yaml::from_str(yaml).unwrap();
    let mut errors = Vec::new();
    HeaderEdits::compile(&m, "spec.rules[0].requestHeaders", &mut errors)
        .ok_or_else(|| errors.into_iter().map(|e| (e.path, e.reason)).collect())
}

#[test]
fn header_edits_set_add_and_remove() {
    let e = edits(
        "{set: [{name: X-Env, value: prod}], add: [{name: x-tag, value: b}], remove: [x-debug]}",
    )
    .unwrap();
    let mut h = HeaderMap::new();
    h.append("x-env", HeaderValue::from_static("dev"));
    h.append("x-env", HeaderValue::from_static("test"));
    h.append("x-tag", HeaderValue::from_static("a"));
    h.append("x-debug", HeaderValue::from_static("1"));
    h.append("x-debug", HeaderValue::from_static("2"));
    h.append("x-other", HeaderValue::from_static("kept"));
    e.apply(&mut h);
    let all = |n: &str| -> Vec<&str> { h.get_all(n).iter().map(|v| v.to_str().unwrap()).collect() };
    assert_eq!(all("x-env"), ["prod"], "set replaces every value");
    assert_eq!(all("x-tag"), ["a", "b"], "add appends");
    assert!(all("x-debug").is_empty(), "remove drops every value");
    assert_eq!(all("x-other"), ["kept"]);
}

#[test]
fn header_edits_refuse_what_the_proxy_owns_by_name() {
    let errs = edits(
        r#"{set: [{name: host, value: a}, {name: ":path", value: /x}, {name: "bad name", value: v},
                  {name: x-ok, value: "line\nbreak"}],
            add: [{name: transfer-encoding, value: chunked}, {name: quiver-target, value: x},
                  {name: X-Quiver-Peer-Identity, value: spiffe://evil}],
            remove: [connection, content-length]}"#,
    )
    .unwrap_err();
    let at = |p: &str| {
        errs.iter()
            .find(|(path, _)| path == p)
            .map(|(_, r)| r.as_str())
            .unwrap_or_else(|| panic!("no error at {p}: {errs:#?}"))
    };
    let base = "spec.rules[0].requestHeaders";
    assert!(at(&format!("{base}.set[0].name")).contains("rewrite.hostname"));
    assert!(at(&format!("{base}.set[1].name")).contains("pseudo-header"));
    assert!(at(&format!("{base}.set[2].name")).contains("not a valid header name"));
    assert!(at(&format!("{base}.set[3].value")).contains("not a valid header value"));
    assert!(at(&format!("{base}.add[0].name")).contains("hop-by-hop"));
    assert!(at(&format!("{base}.add[1].name")).contains("Quiver's own"));
    assert!(at(&format!("{base}.add[2].name")).contains("Quiver's own"));
    assert!(at(&format!("{base}.remove[0]")).contains("hop-by-hop"));
    assert!(at(&format!("{base}.remove[1]")).contains("framing"));
    assert_eq!(errs.len(), 9, "{errs:#?}");
}

#[test]
fn a_header_in_two_lists_or_twice_is_refused() {
    let errs = edits("{set: [{name: x-a, value: '1'}, {name: X-A, value: '2'}], remove: [x-a]}")
        .unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].0, "spec.rules[0].requestHeaders.set[1].name");
    assert!(errs[0].1.contains("named twice in set"), "{errs:#?}");
    assert_eq!(errs[1].0, "spec.rules[0].requestHeaders.remove[0]");
    assert!(errs[1].1.contains("already in set"), "{errs:#?}");
}

fn redirect(yaml: &str, prefix: Option<&str>) -> Redirect {
    let r: v1::Redirect = serde_yaml::from_str(yaml).unwrap();
    let mut errors = Vec::new();
    let out = Redirect::compile(&r, "r", prefix, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    out.unwrap()
}

fn from<'a>(authority: &'a str, path: &'a str, query: Option<&'a str>) -> RedirectFrom<'a> {
    RedirectFrom {
        scheme: "http",
        authority,
        path,
        query,
    }
}

#[test]
fn redirect_location_follows_gateway_api() {
    // Only a status: the request's own parts.
    let r = redirect("{statusCode: 307}", None);
    assert_eq!(r.status, 307);
    assert_eq!(
        r.location(&from("api:8080", "/a", Some("q=1"))),
        "http://api:8080/a?q=1"
    );
    // Status 302 when none is given.
    assert_eq!(redirect("{hostname: b}", None).status, 302);
    // A new scheme without a port: the scheme's own port, left out.
    let r = redirect("{scheme: https, statusCode: 301}", None);
    assert_eq!(r.status, 301);
    assert_eq!(r.location(&from("api:8080", "/a", None)), "https://api/a");
    // A port equal to the scheme's default is left out; another is written.
    let r = redirect("{hostname: www.example.com, port: 80}", None);
    assert_eq!(
        r.location(&from("api:8080", "/a", None)),
        "http://www.example.com/a"
    );
    let r = redirect("{scheme: https, port: 8443}", None);
    assert_eq!(r.location(&from("api", "/a", None)), "https://api:8443/a");
    // The request's port stays when the scheme does not change; 80 is left out.
    let r = redirect("{path: {replaceFullPath: /new}}", None);
    assert_eq!(
        r.location(&from("api:80", "/old/x", None)),
        "http://api/new"
    );
    let r = redirect(
        "{path: {replacePrefixMatch: /v2/}, statusCode: 308}",
        Some("/v1/"),
    );
    assert_eq!(
        r.location(&from("[::1]:9000", "/v1/items", Some("a=b"))),
        "http://[::1]:9000/v2/items?a=b"
    );
}

#[test]
fn redirect_fields_are_refused_by_name() {
    let r: v1::Redirect = serde_yaml::from_str(
        "{scheme: ftp, hostname: Bad_Host, port: 70000, statusCode: 200, path: {replacePrefixMatch: /x}}",
    )
    .unwrap();
    let mut errors = Vec::new();
    assert!(Redirect::compile(&r, "r", None, &mut errors).is_none());
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "r.scheme",
            "r.hostname",
            "r.port",
            "r.path.replacePrefixMatch",
            "r.statusCode"
        ],
        "{errors:?}"
    );
    assert!(errors[3].reason.contains("match.path.prefix"), "{errors:?}");
}

#[test]
fn an_empty_redirect_is_refused() {
    let mut errors = Vec::new();
    assert!(Redirect::compile(&v1::Redirect::default(), "r", None, &mut errors).is_none());
    assert_eq!(errors[0].path, "r");
    assert!(errors[0].reason.contains("same URL"), "{errors:?}");
}

#[test]
fn path_edits_replace_the_whole_path_or_the_matched_prefix() {
    let full = PathEdit::Full("/x".into());
    assert_eq!(full.apply("/a/b"), "/x");
    let p = |matched: &str, with: &str| PathEdit::Prefix {
        matched: matched.into(),
        with: with.into(),
    };
    assert_eq!(p("/api/", "/v2/").apply("/api/items"), "/v2/items");
    assert_eq!(p("/api", "/").apply("/api/items"), "/items");
    assert_eq!(p("/api", "/").apply("/api"), "/");
    assert_eq!(p("/api", "/v2").apply("/api/items"), "/v2/items");
    assert_eq!(p("/api/", "/").apply("/api/"), "/");
}

#[test]
fn rewrite_needs_something_and_checks_its_path() {
    let compile = |yaml: &str, prefix: Option<&str>| {
        let r: v1::Rewrite = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let out = Rewrite::compile(&r, "w", prefix, &mut errors);
        (out, errors)
    };
    let (r, e) = compile(
        "{hostname: reviews.internal, path: {replacePrefixMatch: /}}",
        Some("/api/"),
    );
    assert!(e.is_empty(), "{e:?}");
    let r = r.unwrap();
    assert_eq!(r.hostname.as_deref(), Some("reviews.internal"));
    assert_eq!(r.path("/api/items").as_deref(), Some("/items"));
    let (_, e) = compile("{}", None);
    assert_eq!(e[0].path, "w");
    let (_, e) = compile("{path: {replaceFullPath: 'a b'}}", None);
    assert_eq!(e[0].path, "w.path.replaceFullPath");
    let (_, e) = compile("{path: {replaceFullPath: '/a?b'}}", None);
    assert_eq!(e[0].path, "w.path.replaceFullPath");
    let (_, e) = compile(
        "{path: {replaceFullPath: /a, replacePrefixMatch: /b}}",
        Some("/"),
    );
    assert!(e[0].reason.contains("exactly one"), "{e:?}");
}
