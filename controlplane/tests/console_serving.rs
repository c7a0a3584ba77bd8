//! The console bundle served on the API port: content types, caching, the SPA fallback, the
//! "not built" answer, and that gRPC, gRPC-web and /metrics are never shadowed by it.
//! (The real bundle in a real browser: console_browser.rs.)
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use bytes::Bytes;
use common::{SqliteTestDb, TestServer};
use http_body_util::{BodyExt, Full};

const HASHED_JS: &str = "quiver_console-0123456789abcdef.js";
const HASHED_WASM: &str = "quiver_console_bg-fedcba9876543210.wasm";

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[], Bytes::new()).await
}

fn bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><title>Quiver console</title>",
    )
    .unwrap();
    std::fs::write(dir.path().join(HASHED_JS), "export default 1;").unwrap();
    std::fs::write(dir.path().join(HASHED_WASM), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("robots.txt"), "User-agent: *\n").unwrap();
    dir
}

#[tokio::test]
async fn serves_the_bundle_with_types_caching_and_spa_fallback() {
    let db = SqliteTestDb::create();
    let dist = bundle();
    let dir = dist.path().display().to_string();
    let server = TestServer::start_with(None, db.dir.path(), &["--console-dir", &dir]).await;
    let addr = server.addr;

    let index = get(addr, "/").await;
    assert_eq!(index.status, 200);
    assert_eq!(index.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(index.header("cache-control"), "no-cache");
    assert!(index.text().contains("Quiver console"));
    // No framing by other sites, and a policy without inline scripts or foreign sources.
    assert_eq!(index.header("x-frame-options"), "DENY");
    let csp = index.header("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    let etag = index.header("etag").to_string();
    assert!(etag.starts_with('"'), "{etag:?}");

    // Revalidation of index.html answers 304 with no body.
    let again = request(addr, "GET", "/", &[("if-none-match", &etag)], Bytes::new()).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    // Client-side routes get index.html.
    for path in ["/routes", "/routes/shop/reviews", "/canaries/new"] {
        let page = get(addr, path).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(page.body, index.body, "{path}");
    }

    let wasm = get(addr, &format!("/{HASHED_WASM}")).await;
    assert_eq!(wasm.status, 200);
    assert_eq!(wasm.header("content-type"), "application/wasm");
    assert_eq!(
        wasm.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(&wasm.body[..4], b"\0asm");
    let js = get(addr, &format!("/{HASHED_JS}")).await;
    assert_eq!(js.header("content-type"), "text/javascript; charset=utf-8");
    let robots = get(addr, "/robots.txt").await;
    assert_eq!(
        robots.header("cache-control"),
        "no-cache",
        "not content-hashed"
    );

    let head = request(addr, "HEAD", &format!("/{HASHED_JS}"), &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // A missing asset is a 404, not the SPA page; nothing outside the bundle is reachable.
    assert_eq!(
        get(addr, "/quiver_console-ffffffffffffffff.js")
            .await
            .status,
        404
    );
    assert_eq!(get(addr, "/../Cargo.toml").await.status, 404);
    assert_eq!(get(addr, "/.stamp").await.status, 404);
    let post = request(addr, "POST", "/routes", &[], Bytes::new()).await;
    assert_eq!(post.status, 405);

    // /metrics, gRPC-web and unknown gRPC methods are not the console's.
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    // The metrics handler answered (classic text format unless OpenMetrics is asked for),
    // not the console's index.html.
    assert!(
        metrics.header("content-type").contains("version=0.0.4"),
        "{}",
        metrics.header("content-type")
    );
    let status = request(
        addr,
        "POST",
        "/quiver.v1.MeshAdmin/Status",
        &[
            ("content-type", "application/grpc-web+proto"),
            ("x-grpc-web", "1"),
            ("authorization", &format!("Bearer {}", server.admin)),
        ],
        Bytes::from_static(&[0, 0, 0, 0, 0]),
    )
    .await;
    assert_eq!(status.status, 200);
    assert!(
        status
            .header("content-type")
            .starts_with("application/grpc-web")
    );
    assert!(
        status.text().contains("grpc-status:0"),
        "trailer frame: {:?}",
        status.text()
    );
    let unknown = request(
        addr,
        "POST",
        "/quiver.v1.Nope/Nothing",
        &[
            ("content-type", "application/grpc-web+proto"),
            ("x-grpc-web", "1"),
        ],
        Bytes::from_static(&[0, 0, 0, 0, 0]),
    )
    .await;
    assert_eq!(unknown.header("grpc-status"), "12", "UNIMPLEMENTED");
    assert!(!unknown.text().contains("<title>"));
    server.stop().await;
}

/// The committed bundle (console/dist) as the repository holds it.
fn committed_bundle() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../console/dist")
}

/// The content-hashed file names index.html (or boot.js) refers to: `/name-<16 hex>.ext`.
fn hashed_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for piece in text.split(['"', '\'']) {
        let Some(name) = piece.strip_prefix('/') else {
            continue;
        };
        let Some((stem, ext)) = name.rsplit_once('.') else {
            continue;
        };
        let hashed = stem.rsplit_once('-').is_some_and(|(_, hash)| {
            hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if hashed && !ext.is_empty() && !name.contains('/') {
            names.push(name.to_string());
        }
    }
    names
}

/// What a user gets from a binary built on a clean clone, with no console build step and no
/// flag: the committed bundle, from memory, byte for byte, with the right types.
#[tokio::test]
async fn the_embedded_bundle_is_served_without_a_flag() {
    let dist = committed_bundle();
    let on_disk = |name: &str| {
        std::fs::read(dist.join(name)).unwrap_or_else(|e| {
            panic!("console/dist/{name} (the committed bundle): {e}; run console/build.sh")
        })
    };
    let db = SqliteTestDb::create();
    // No --console-dir: the answer can only come from the copy compiled into the binary.
    let server = TestServer::start(None, db.dir.path()).await;
    let addr = server.addr;

    let index = get(addr, "/").await;
    assert_eq!(index.status, 200, "{}", index.text());
    assert_eq!(index.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(index.header("cache-control"), "no-cache");
    assert_eq!(index.header("x-frame-options"), "DENY");
    assert!(!index.header("content-security-policy").is_empty());
    assert_eq!(index.body.as_ref(), on_disk("index.html").as_slice());
    let etag = index.header("etag").to_string();
    let again = request(addr, "GET", "/", &[("if-none-match", &etag)], Bytes::new()).await;
    assert_eq!(again.status, 304, "revalidation with the embedded ETag");
    let route = get(addr, "/routes/shop/reviews").await;
    assert_eq!(route.body, index.body, "client-side routes get index.html");

    // index.html names the stylesheet, the JS glue and the boot script; boot.js names the wasm.
    let mut names = hashed_names(&index.text());
    let boot = names
        .iter()
        .find(|n| n.starts_with("boot-"))
        .cloned()
        .expect("index.html loads boot-<hash>.js");
    let boot_js = get(addr, &format!("/{boot}")).await;
    names.extend(hashed_names(&boot_js.text()));
    names.sort();
    names.dedup();
    let mut kinds = Vec::new();
    for name in &names {
        let file = get(addr, &format!("/{name}")).await;
        assert_eq!(file.status, 200, "{name}");
        assert_eq!(
            file.header("cache-control"),
            "public, max-age=31536000, immutable",
            "{name}"
        );
        assert_eq!(file.body.as_ref(), on_disk(name).as_slice(), "{name}");
        let want = match name.rsplit_once('.').map(|(_, e)| e) {
            Some("js") => "text/javascript; charset=utf-8",
            Some("wasm") => "application/wasm",
            Some("css") => "text/css; charset=utf-8",
            other => panic!("unexpected file type {other:?} in the bundle: {name}"),
        };
        assert_eq!(file.header("content-type"), want, "{name}");
        if want == "application/wasm" {
            assert_eq!(&file.body[..4], b"\0asm", "{name} is WebAssembly");
        }
        kinds.push(want);
    }
    for want in [
        "text/javascript; charset=utf-8",
        "application/wasm",
        "text/css; charset=utf-8",
    ] {
        assert!(kinds.contains(&want), "the bundle serves {want}: {names:?}");
    }
    // The stamp is not served; a missing asset is a 404, not the page.
    assert_eq!(get(addr, "/.stamp").await.status, 404);
    assert_eq!(
        get(addr, "/quiver_console-ffffffffffffffff.js")
            .await
            .status,
        404
    );
    server.stop().await;
}

/// --console-dir still overrides the embedded bundle, and says so when the directory is empty.
#[tokio::test]
async fn an_empty_console_dir_says_how_to_build_it() {
    let db = SqliteTestDb::create();
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().display().to_string();
    let server = TestServer::start_with(None, db.dir.path(), &["--console-dir", &dir]).await;
    let page = get(server.addr, "/routes").await;
    assert_eq!(page.status, 404);
    assert!(page.text().contains("has no index.html"), "{}", page.text());
    assert!(page.text().contains("console/build.sh"), "{}", page.text());
    server.stop().await;
}

/// `console/build.sh --check` in `root`: (success, what it printed).
fn stamp_check(root: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("bash")
        .arg(root.join("console/build.sh"))
        .arg("--check")
        .output()
        .expect("run bash console/build.sh --check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// CI's guard: the committed bundle was built from the sources as they are. When this fails,
/// someone changed the console (or quiver-api / quiver-policy, which it links) without
/// rebuilding: run console/build.sh and commit console/dist.
#[test]
fn the_committed_bundle_matches_its_sources() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (ok, text) = stamp_check(&repo);
    assert!(ok, "{text}");
    assert!(text.contains("matches its sources"), "{text}");
}

/// The guard itself: in a copy of the inputs and the bundle, the check passes, then fails
/// naming the file once a console source, or a source of a crate the console links, changes.
#[test]
fn the_stamp_check_fails_when_a_source_changes_without_a_rebuild() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let copy = tempfile::tempdir().unwrap();
    for dir in ["console", "proto", "policy"] {
        std::fs::create_dir(copy.path().join(dir)).unwrap();
    }
    for path in [
        "Cargo.toml",
        "console/src",
        "console/dist",
        "console/Cargo.toml",
        "console/Cargo.lock",
        "console/build.rs",
        "console/build.sh",
        "console/index.html",
        "console/boot.js",
        "console/style.css",
        "proto/Cargo.toml",
        "proto/build.rs",
        "proto/src",
        "proto/quiver",
        "policy/Cargo.toml",
        "policy/src",
    ] {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(repo.join(path))
            .arg(copy.path().join(path))
            .status()
            .unwrap();
        assert!(status.success(), "cp -a {path}");
    }
    let (ok, text) = stamp_check(copy.path());
    assert!(ok, "an exact copy matches: {text}");

    let lib = copy.path().join("console/src/lib.rs");
    let mut source = std::fs::read_to_string(&lib).unwrap();
    source.push_str("\n// an edit without a rebuild\n");
    std::fs::write(&lib, &source).unwrap();
    let (ok, text) = stamp_check(copy.path());
    assert!(!ok, "a changed console source must fail the check: {text}");
    assert!(
        text.contains("console/src/lib.rs"),
        "names the file: {text}"
    );
    assert!(
        text.contains("console/build.sh"),
        "says how to fix it: {text}"
    );

    // A new file in a crate the console links counts too.
    std::fs::write(copy.path().join("policy/src/extra.rs"), "pub fn f() {}\n").unwrap();
    let (ok, text) = stamp_check(copy.path());
    assert!(!ok, "{text}");
    assert!(text.contains("policy/src/extra.rs"), "{text}");
}
