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

#[tokio::test]
async fn without_a_bundle_root_says_how_to_build_it() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let page = get(server.addr, "/").await;
    assert_eq!(page.status, 404);
    assert!(page.text().contains("console/build.sh"), "{}", page.text());
    assert!(page.text().contains("--console-dir"), "{}", page.text());
    server.stop().await;

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
