//! Path-bypass corpus through two real proxies (issue 17, item 2): a `deny /admin, /admin/*`
//! policy on the serving proxy, and requests written byte for byte (a raw HTTP/1.1 client, so
//! no client library tidies the path first) to the caller's outbound listener. Every way of
//! spelling `/admin` is refused (403 `denied` or 400 `bad-request`) and never reaches the app;
//! every other path reaches it normalized, and the app receives exactly the normalized path.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;
use std::time::Duration;

use quiver_tests::apps::{Behaviour, served, start_tagged_echo};
use quiver_tests::harness::{RunningProxy, identity_yaml};
use quiver_tests::pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Status, `quiver-error` and `x-echo-path` of a GET of `target`, sent as written.
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an answer within 10s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut error = String::new();
    let mut path = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "quiver-error" => error = v.trim().to_string(),
                "x-echo-path" => path = v.trim().to_string(),
                _ => {}
            }
        }
    }
    (status, error, path)
}

const DENY_ADMIN: &str = "authorization:
  - name: no-admin
    service: reviews
    deny:
      - paths: [\"/admin\", \"/admin/*\"]
";

/// Only `/public/*` may be called: everything else is denied by the allow list.
const ALLOW_PUBLIC: &str = "authorization:
  - name: public-only
    service: reviews
    allow:
      - paths: [\"/public/*\"]
";

/// A caller's proxy -> the serving proxy (with `policy`) -> an echo app tagged `tag`.
async fn mesh(
    pki: &Pki,
    tag: &str,
    policy: &str,
    caller_extra: &str,
) -> (RunningProxy, RunningProxy) {
    let app = start_tagged_echo(Behaviour {
        tag: tag.into(),
        ..Default::default()
    })
    .await;
    let server = RunningProxy::start(
        &format!(
            "{}listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\ninbound:\n  - {{service: reviews, port: 8080, protocol: http1, app: \"{app}\"}}\n{policy}",
            identity_yaml(&pki.issue("reviews"))
        ),
        &pki.dir,
    )
    .await
    .unwrap();
    let caller = RunningProxy::start(
        &format!(
            "{}listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}
outbound:
  - {{listen: \"127.0.0.1:0\", service: reviews, protocol: http1}}
services:
  - name: reviews
    endpoints: [{{address: \"{}\", identity: \"{}\"}}]
{caller_extra}",
            identity_yaml(&pki.issue("frontend")),
            server.bound.quic,
            pki.id("reviews"),
        ),
        &pki.dir,
    )
    .await
    .unwrap();
    (server, caller)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_denied_path_is_refused_and_the_app_gets_the_normal_form() {
    let pki = Pki::new();
    let (_server, caller) = mesh(&pki, "paths", DENY_ADMIN, "").await;
    let listener = caller.bound.outbound[0];

    // Ways to say /admin: none may reach the app.
    let denied = [
        "/admin",
        "/admin/",
        "/admin/x",
        "//admin/x",
        "///admin",
        "/admin//x",
        "/public/../admin/x",
        "/public/x/../../admin",
        "/./admin/x",
        "/admin/./x",
        "/admin/x/..",
        "/%61dmin/x",
        "/adm%69n",
        "/%61%64%6d%69%6e",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/%2e/admin",
        "/%2e%2e/admin",
        "/admin%2fx",
        "/admin%2Fx",
        "/public%2f..%2fadmin",
        "/public/..%2fadmin",
        "/admin%5cx",
        "/admin\\x",
        "/public\\..\\admin",
        "/admin;x/y",
        "/admin/..;/admin",
        "/admin;/x",
        "/admin%",
        "/admin%2",
    ];
    for target in denied {
        let (status, error, _) = raw_get(listener, target).await;
        assert!(
            (status == 403 && error == "denied") || (status == 400 && error == "bad-request"),
            "{target:?}: {status} {error:?}"
        );
    }
    assert_eq!(served("paths"), 0, "a spelling of /admin reached the app");

    // Everything else arrives, normalized: the app sees what the policy judged.
    let allowed = [
        ("/public/x", "/public/x"),
        ("/public//x", "/public/x"),
        ("/public/./x", "/public/x"),
        ("/x/../public/y", "/public/y"),
        ("/%70ublic", "/public"),
        ("/public%20x", "/public%20x"),
        ("/public/x?q=/admin", "/public/x?q=/admin"),
        ("/Admin", "/Admin"),
        ("/%41dmin", "/Admin"),
        ("/%c0%ae%c0%ae/admin", "/%C0%AE%C0%AE/admin"),
        ("/administrator", "/administrator"),
    ];
    for (target, want) in allowed {
        let (status, error, path) = raw_get(listener, target).await;
        assert_eq!(
            (status, error.as_str(), path.as_str()),
            (200, "", want),
            "{target:?}"
        );
    }
    assert_eq!(served("paths"), allowed.len() as u64);
    assert!(denied.len() + allowed.len() >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_escapes_an_allow_list_and_the_app_gets_the_normal_form() {
    // The other direction: `allow /public/*` and nothing else. A path that climbs out of
    // /public, or only looks like /public, must not be admitted by the prefix.
    let pki = Pki::new();
    let (_server, caller) = mesh(&pki, "paths-allow", ALLOW_PUBLIC, "").await;
    let listener = caller.bound.outbound[0];

    let escapes = [
        // Dot segments, plain and escaped.
        "/public/../admin",
        "/public/../admin/x",
        "/public/x/../../admin",
        "/public/./../admin",
        "/public//../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/%2e./admin",
        "/publi%63/../admin",
        "/public/..",
        "/public/../",
        // Escaped separators (refused by default) and backslashes (separators).
        "/public/..%2fadmin",
        "/public/..%2Fadmin",
        "/public%2f..%2fadmin",
        "/public/%2e%2e%2fadmin",
        "/public/..%5cadmin",
        "/public\\..\\admin",
        "/public\\../admin",
        "/public/..\\admin",
        // Path parameters.
        "/public/..;/admin",
        "/public;/x",
        "/public;x=1/../admin",
        // Overlong UTF-8 for '/' is not a separator: this is no /public/ prefix.
        "/public%c0%af..%c0%afadmin",
        // Case: paths are case-sensitive, the rule has no ignoreCase.
        "/PUBLIC/x",
        "/Public/x",
        "/%50ublic/x",
        // The prefix is "/public/": neither the bare name nor a longer one is under it.
        "/public",
        "/publicx",
        "/public.x/y",
        "/",
        "/admin",
        // Bad escapes.
        "/public/%",
        "/public/%zz",
    ];
    for target in escapes {
        let (status, error, _) = raw_get(listener, target).await;
        assert!(
            (status == 403 && error == "denied") || (status == 400 && error == "bad-request"),
            "{target:?} escaped the allow list: {status} {error:?}"
        );
    }
    assert_eq!(
        served("paths-allow"),
        0,
        "a path outside /public reached the app"
    );

    // Genuine /public paths, including ones that only normalize into it, arrive in the form
    // the policy judged.
    let inside = [
        ("/public/x", "/public/x"),
        ("/public/", "/public/"),
        ("/public/x/", "/public/x/"),
        ("/public/a/../b", "/public/b"),
        ("/public/x/..", "/public/"),
        ("//public/x", "/public/x"),
        ("/public//x", "/public/x"),
        ("/public/./x", "/public/x"),
        ("/public/%61", "/public/a"),
        ("/%70ublic/x", "/public/x"),
        ("/../public/x", "/public/x"),
        ("/%2e%2e/public/x", "/public/x"),
        ("/admin/../public/x", "/public/x"),
        ("/public/a%20b", "/public/a%20b"),
        // Overlong UTF-8 dots are not dots: kept escaped (upper-case hex), still under /public.
        ("/public/%c0%ae%c0%ae/admin", "/public/%C0%AE%C0%AE/admin"),
        // The query is not the path: neither matched nor rewritten.
        ("/public/x?next=/../admin", "/public/x?next=/../admin"),
    ];
    for (target, want) in inside {
        let (status, error, path) = raw_get(listener, target).await;
        assert_eq!(
            (status, error.as_str(), path.as_str()),
            (200, "", want),
            "{target:?}"
        );
    }
    assert_eq!(served("paths-allow"), inside.len() as u64);
    assert!(escapes.len() >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_proxy_normalizes_too() {
    // A caller that keeps escaped slashes and path parameters passes them on; the serving
    // proxy, on its defaults, refuses them itself.
    let pki = Pki::new();
    let lenient = "tuning: {request_paths: {escaped_slashes: keep, parameters: keep}}\n";
    let (_server, caller) = mesh(&pki, "paths-inbound", DENY_ADMIN, lenient).await;
    let listener = caller.bound.outbound[0];
    for target in ["/public%2Fx", "/admin%2Fx", "/public;v=1/x", "/admin;x/y"] {
        let (status, error, _) = raw_get(listener, target).await;
        assert_eq!((status, error.as_str()), (400, "bad-request"), "{target:?}");
    }
    // What both accept still arrives normalized by both.
    let (status, _, path) = raw_get(listener, "/public//a/./b").await;
    assert_eq!((status, path.as_str()), (200, "/public/a/b"));
    assert_eq!(served("paths-inbound"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_target_without_a_path_is_refused() {
    // Found by the fuzz target outbound_http1: `GET reviews:8080` (the authority form, which
    // is for CONNECT only) was matched by routes as the path "" while the app received "/".
    // Now the caller's proxy refuses it and the app is never reached.
    let pki = Pki::new();
    let (_server, caller) = mesh(&pki, "paths-authority", DENY_ADMIN, "").await;
    let listener = caller.bound.outbound[0];
    for target in ["reviews:8080", "reviews"] {
        let (status, error, _) = raw_get(listener, target).await;
        assert_eq!((status, error.as_str()), (400, "bad-request"), "{target:?}");
    }
    assert_eq!(
        served("paths-authority"),
        0,
        "a target without a path reached the app"
    );
    // The origin form still arrives.
    let (status, _, path) = raw_get(listener, "/").await;
    assert_eq!((status, path.as_str()), (200, "/"));
    assert_eq!(served("paths-authority"), 1);
}
