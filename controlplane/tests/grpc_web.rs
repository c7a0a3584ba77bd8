//! The same calls over gRPC-web: a hand-made HTTP/1.1 POST with `application/grpc-web+proto`
//! framing, as a browser sends it, compared with native gRPC answers.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{REVIEWS_SERVICE, SqliteTestDb, TestServer, doc, route_yaml};
use http_body_util::{BodyExt, Full};
use prost::Message;
use quiver_api::v1;

/// What came back: HTTP status, data frames and the grpc-status/grpc-message trailers.
struct WebResponse {
    http_status: u16,
    messages: Vec<Bytes>,
    grpc_status: Option<String>,
    grpc_message: Option<String>,
    allow_origin: Option<String>,
}

async fn grpc_web_call(
    addr: std::net::SocketAddr,
    method: &str,
    token: Option<&str>,
    msg: &impl Message,
) -> WebResponse {
    grpc_web_call_from(addr, method, token, msg, "http://console.example").await
}

async fn grpc_web_call_from(
    addr: std::net::SocketAddr,
    method: &str,
    token: Option<&str>,
    msg: &impl Message,
    origin: &str,
) -> WebResponse {
    let payload = msg.encode_to_vec();
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(payload.len() as u32);
    body.put_slice(&payload);

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("/quiver.v1.MeshAdmin/{method}"))
        .header("host", addr.to_string())
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", origin);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = send
        .send_request(req.body(Full::new(body.freeze())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_11);
    let http_status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let allow_origin = header("access-control-allow-origin");
    // A trailers-only answer (an error) carries grpc-status in the headers.
    let mut grpc_status = header("grpc-status");
    let mut grpc_message = header("grpc-message");
    let mut buf = resp.into_body().collect().await.unwrap().to_bytes();
    let mut messages = Vec::new();
    while buf.remaining() >= 5 {
        let flag = buf.get_u8();
        let len = buf.get_u32() as usize;
        let frame = buf.split_to(len);
        if flag & 0x80 != 0 {
            for line in String::from_utf8_lossy(&frame).split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "grpc-status" => grpc_status = Some(v.trim().into()),
                        "grpc-message" => grpc_message = Some(v.trim().into()),
                        _ => {}
                    }
                }
            }
        } else {
            messages.push(frame);
        }
    }
    WebResponse {
        http_status,
        messages,
        grpc_status,
        grpc_message,
        allow_origin,
    }
}

#[tokio::test]
async fn grpc_web_and_native_grpc_give_the_same_answers() {
    let db = SqliteTestDb::create();
    let server = TestServer::start_with(
        None,
        db.dir.path(),
        &["--cors-origin", "http://console.example"],
    )
    .await;
    let admin = server.admin.clone();

    // Apply over gRPC-web, read back over native gRPC.
    let svc: v1::Service = doc(REVIEWS_SERVICE);
    let r = grpc_web_call(server.addr, "ApplyService", Some(&admin), &svc).await;
    assert_eq!((r.http_status, r.grpc_status.as_deref()), (200, Some("0")));
    let applied = v1::ApplyServiceResponse::decode(r.messages[0].clone()).unwrap();
    assert_eq!(applied.outcome, v1::ApplyOutcome::Created as i32);
    assert_eq!(
        r.allow_origin.as_deref(),
        Some("http://console.example"),
        "CORS lets the console read the answer"
    );

    let mut native = server.admin().await;
    native
        .apply_route(doc::<v1::Route>(&route_yaml("reviews", 70)))
        .await
        .unwrap();
    let get = v1::GetRequest {
        namespace: "shop".into(),
        name: "reviews".into(),
    };
    let by_grpc = native.get_route(get.clone()).await.unwrap().into_inner();
    let r = grpc_web_call(server.addr, "GetRoute", Some(&admin), &get).await;
    assert_eq!(r.grpc_status.as_deref(), Some("0"));
    let by_web = v1::Route::decode(r.messages[0].clone()).unwrap();
    assert_eq!(by_web, by_grpc);

    let list = v1::ListRequest::default();
    let by_grpc = native
        .list_services(list.clone())
        .await
        .unwrap()
        .into_inner();
    let r = grpc_web_call(server.addr, "ListServices", Some(&admin), &list).await;
    assert_eq!(
        v1::ServiceList::decode(r.messages[0].clone()).unwrap(),
        by_grpc
    );

    // Errors arrive as grpc-status too: no token, stale version, invalid document.
    let r = grpc_web_call(server.addr, "ListServices", None, &list).await;
    assert_eq!(r.grpc_status.as_deref(), Some("16"), "UNAUTHENTICATED");
    assert!(r.messages.is_empty());

    let mut stale = by_web.clone();
    stale.metadata.as_mut().unwrap().resource_version = 1;
    stale.spec.as_mut().unwrap().rules[0].timeout = "3s".into();
    let r = grpc_web_call(server.addr, "ApplyRoute", Some(&admin), &stale).await;
    assert_eq!(r.grpc_status.as_deref(), Some("10"), "ABORTED");
    let message = r.grpc_message.unwrap_or_default();
    assert!(
        message.contains("changed%20since%20you%20read%20it")
            || message.contains("changed since you read it"),
        "{message}"
    );

    let mut bad = by_web.clone();
    bad.metadata.as_mut().unwrap().resource_version = 0;
    bad.spec.as_mut().unwrap().rules[0].backends[0].weight = 10;
    let r = grpc_web_call(server.addr, "ApplyRoute", Some(&admin), &bad).await;
    assert_eq!(r.grpc_status.as_deref(), Some("3"), "INVALID_ARGUMENT");
    assert!(
        r.grpc_message
            .unwrap_or_default()
            .contains("spec.rules[0].backends")
    );
    server.stop().await;
}

#[tokio::test]
async fn cors_preflight_is_answered() {
    let db = SqliteTestDb::create();
    let server = TestServer::start_with(
        None,
        db.dir.path(),
        &["--cors-origin", "http://console.example"],
    )
    .await;
    // The allowed foreign origin, the API's own origin, and a stranger.
    let own = format!("http://{}", server.addr);
    for (origin, allowed) in [
        ("http://console.example", true),
        (own.as_str(), true),
        ("http://evil.example", false),
        ("http://console.example.evil.example", false),
    ] {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::options("/quiver.v1.MeshAdmin/ListRoutes")
            .header("host", server.addr.to_string())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,authorization",
            )
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert!(resp.status().is_success(), "{:?}", resp.status());
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase()
        };
        if allowed {
            assert_eq!(header("access-control-allow-origin"), origin, "{origin}");
            let headers = header("access-control-allow-headers");
            assert!(
                headers.contains("authorization") && headers.contains("x-grpc-web"),
                "{headers}"
            );
        } else {
            assert_eq!(
                header("access-control-allow-origin"),
                "",
                "{origin} was allowed"
            );
        }
    }
    // A gRPC-web call from a stranger's page is served (CORS is the browser's check), but
    // its answer carries no allow-origin, so the browser withholds it from the page.
    let r = grpc_web_call_from(
        server.addr,
        "ListServices",
        Some(&server.admin),
        &v1::ListRequest::default(),
        "http://evil.example",
    )
    .await;
    assert_eq!(r.allow_origin, None);
    server.stop().await;
}
